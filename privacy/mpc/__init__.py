"""Secure multi-party computation on CrypTen: fedtrust's communicator and party sessions."""
