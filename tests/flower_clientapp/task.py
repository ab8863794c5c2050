"""Model, data and training loop, as in Flower's quickstart-pytorch template."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.datasets import load_breast_cancer
from sklearn.model_selection import train_test_split
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(30)  # buffers too: an int64 step counter among them
        self.fc1 = nn.Linear(30, 16)
        self.fc2 = nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(self.norm(x))))


def load_data(partition_id: int, num_partitions: int) -> tuple[DataLoader, DataLoader]:
    x, y = load_breast_cancer(return_X_y=True)
    x = (x - x.mean(0)) / x.std(0)
    rows = np.arange(len(y)) % num_partitions == partition_id
    x_train, x_test, y_train, y_test = train_test_split(
        x[rows].astype(np.float32), y[rows], random_state=0
    )

    def loader(x: np.ndarray, y: np.ndarray, shuffle: bool) -> DataLoader:
        data = TensorDataset(torch.from_numpy(x), torch.from_numpy(y).long())
        return DataLoader(data, batch_size=32, shuffle=shuffle)

    return loader(x_train, y_train, True), loader(x_test, y_test, False)


def train(net: Net, trainloader: DataLoader, epochs: int, lr: float) -> float:
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    net.train()
    total = 0.0
    for _ in range(epochs):
        for x, y in trainloader:
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(net(x), y)
            loss.backward()
            optimizer.step()
            total += loss.item()
    return total / (epochs * len(trainloader))


def test(net: Net, testloader: DataLoader) -> tuple[float, float]:
    net.eval()
    loss, correct = 0.0, 0
    with torch.no_grad():
        for x, y in testloader:
            out = net(x)
            loss += float(nn.functional.cross_entropy(out, y, reduction="sum"))
            correct += int((out.argmax(1) == y).sum())
    count = len(testloader.dataset)  # type: ignore[arg-type]
    return loss / count, correct / count
