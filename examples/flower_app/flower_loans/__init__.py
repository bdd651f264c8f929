"""flower-loans: A Flower / PyTorch app."""
