"""A ClientApp built from a client_fn, as Flower apps before the message API were."""

from __future__ import annotations

from flower_app import SklearnClient
from flwr.app import Context
from flwr.client import Client
from flwr.clientapp import ClientApp


def client_fn(context: Context) -> Client:
    return SklearnClient(int(context.node_config["partition-id"])).to_client()


app = ClientApp(client_fn=client_fn)
