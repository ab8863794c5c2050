"""The message-API ClientApp, written as Flower's quickstart-pytorch template writes it."""

from __future__ import annotations

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from flower_clientapp.task import Net, load_data
from flower_clientapp.task import test as test_fn
from flower_clientapp.task import train as train_fn

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    model = Net()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    partition_id = context.node_config["partition-id"]
    num_partitions = context.node_config["num-partitions"]
    trainloader, _ = load_data(partition_id, num_partitions)
    train_loss = train_fn(
        model, trainloader, context.run_config["local-epochs"], msg.content["config"]["lr"]
    )
    # Flower apps keep per-run state in context.state; it must survive between rounds.
    rounds_seen = context.state.config_records.get("seen", {}).get("rounds", 0)
    context.state["seen"] = ConfigRecord({"rounds": rounds_seen + 1})
    metrics = {
        "train_loss": train_loss,
        "num-examples": len(trainloader.dataset),
        "rounds_seen": rounds_seen + 1,
    }
    content = RecordDict(
        {"arrays": ArrayRecord(model.state_dict()), "metrics": MetricRecord(metrics)}
    )
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    model = Net()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    _, testloader = load_data(
        context.node_config["partition-id"], context.node_config["num-partitions"]
    )
    eval_loss, eval_acc = test_fn(model, testloader)
    metrics = {
        "eval_loss": eval_loss,
        "eval_acc": eval_acc,
        "num-examples": len(testloader.dataset),
    }
    return Message(content=RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)


train_only = ClientApp()
train_only.train()(train)


def no_examples(msg: Message, context: Context) -> Message:
    content = RecordDict({"arrays": msg.content["arrays"], "metrics": MetricRecord({"loss": 1.0})})
    return Message(content=content, reply_to=msg)


forgets_num_examples = ClientApp()
forgets_num_examples.train()(no_examples)
