"""A plain Flower client, written the way Flower's own tutorials write one (no Cohort imports)."""

from __future__ import annotations

import numpy as np
from flwr.client import NumPyClient
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import SGDClassifier
from sklearn.model_selection import train_test_split


class SklearnClient(NumPyClient):
    def __init__(self, partition: int) -> None:
        x, y = load_breast_cancer(return_X_y=True)
        x = (x - x.mean(0)) / x.std(0)
        rows = np.arange(len(y)) % 2 == partition
        self.x, self.xt, self.y, self.yt = train_test_split(x[rows], y[rows], random_state=0)
        self.model = SGDClassifier(loss="log_loss", random_state=partition)
        self.model.partial_fit(self.x[:2], self.y[:2], classes=[0, 1])

    def get_parameters(self, config):
        return [self.model.coef_.astype(np.float32), self.model.intercept_.astype(np.float32)]

    def set_parameters(self, parameters):
        self.model.coef_ = np.asarray(parameters[0], np.float64)
        self.model.intercept_ = np.asarray(parameters[1], np.float64)

    def fit(self, parameters, config):
        self.set_parameters(parameters)
        for _ in range(int(config.get("local_epochs", 1))):
            self.model.partial_fit(self.x, self.y)
        return self.get_parameters(config), len(self.y), {}

    def evaluate(self, parameters, config):
        self.set_parameters(parameters)
        accuracy = float(self.model.score(self.xt, self.yt))
        return 1.0 - accuracy, len(self.yt), {"accuracy": accuracy}


def client_fn(partition: int = 0) -> NumPyClient:
    return SklearnClient(partition)
