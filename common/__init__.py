"""fedtrust: federated privacy-preserving computation under exchange contracts."""
__version__ = "0.1.0"
