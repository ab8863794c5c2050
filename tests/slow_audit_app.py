"""A Flower client whose audit never ends: the agent must still stop on SIGTERM."""

from __future__ import annotations

import time

from flower_app import SklearnClient


class SlowAuditClient(SklearnClient):
    def audit(self, parameters, config):
        time.sleep(3600)  # not interruptible: the agent has to abandon it, not wait


def client_fn(partition: int = 0) -> SlowAuditClient:
    return SlowAuditClient(partition)
