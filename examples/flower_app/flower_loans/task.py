"""flower-loans: A Flower / PyTorch app."""

import csv
import random

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

REGIONS = ["north", "south", "east", "west", "central"]
INCOME_MAX = 500_000.0
AGE_MIN, AGE_MAX = 18.0, 100.0


class Net(nn.Sequential):
    """A small MLP: income, age and the one-hot region (7 inputs) -> 32 -> 16 -> one logit (defaulted)."""

    def __init__(self):
        super().__init__(
            nn.Linear(7, 32), nn.ReLU(),
            nn.Linear(32, 16), nn.ReLU(),
            nn.Linear(16, 1),
        )


def _number(text, default=0.0):
    try:
        return float(text)
    except (TypeError, ValueError):
        return default


def _features(row):
    income = min(max(_number(row["income"]) / INCOME_MAX, 0.0), 1.0)
    age = min(max((_number(row["age"], AGE_MIN) - AGE_MIN) / (AGE_MAX - AGE_MIN), 0.0), 1.0)
    region = [1.0 if row["region"] == r else 0.0 for r in REGIONS]
    return [income, age, *region]


def load_data(partition_id: int, num_partitions: int, batch_size: int, path: str):
    """Load partition `partition_id` of the loans CSV at `path` (80% train, 20% test)."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r.get("defaulted") in ("0", "1")]
    rows = rows[partition_id::num_partitions]
    random.Random(42 + partition_id).shuffle(rows)
    x = torch.tensor([_features(r) for r in rows], dtype=torch.float32)
    y = torch.tensor([[float(r["defaulted"])] for r in rows], dtype=torch.float32)
    split = int(0.8 * len(rows))
    trainloader = DataLoader(TensorDataset(x[:split], y[:split]), batch_size=batch_size, shuffle=True)
    testloader = DataLoader(TensorDataset(x[split:], y[split:]), batch_size=batch_size)
    return trainloader, testloader


def train(net, trainloader, epochs, lr, device):
    """Train the model on the training set."""
    net.to(device)
    criterion = nn.BCEWithLogitsLoss().to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    net.train()
    running_loss = 0.0
    for _ in range(epochs):
        for features, labels in trainloader:
            optimizer.zero_grad()
            loss = criterion(net(features.to(device)), labels.to(device))
            loss.backward()
            optimizer.step()
            running_loss += loss.item()
    return running_loss / max(1, epochs * len(trainloader))


def test(net, testloader, device):
    """Validate the model on the test set."""
    net.to(device)
    criterion = nn.BCEWithLogitsLoss()
    correct, loss = 0, 0.0
    net.eval()
    with torch.no_grad():
        for features, labels in testloader:
            logits = net(features.to(device))
            loss += criterion(logits, labels.to(device)).item() * len(labels)
            correct += ((logits > 0).float() == labels.to(device)).sum().item()
    n = max(1, len(testloader.dataset))
    return loss / n, correct / n
