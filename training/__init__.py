"""fedtrust.training: federated training over fedtrust's mTLS grid (Flower Message API)."""
