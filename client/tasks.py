"""The agent's task handlers: INIT, TRAIN and AUDIT as a site answers each, and final models.

The agent (client/agent.py) admits a task through the site's gate and calls one of these
with itself; they encode and decode through the run's scheme (client/schemes/) and call
the coordinator through the agent's link (client/link.py). KEYGEN is client/run_keys.py.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from client.link import Update
from client.policy import TaskRefused
from client.schemes import SchemeSite, site_scheme
from client.site import AgentError
from client.trainer import scalar_config
from protos import federation_pb2, wire
from protos.wire import NDArrays

if TYPE_CHECKING:
    from flwr.client import NumPyClient

    from client.link import Link


class TaskSite(SchemeSite, Protocol):
    """What the handlers read of the agent (client/agent.py), beyond a scheme's needs."""

    trained_any: bool
    """Whether the client has trained since the agent started (then INIT is refused)."""

    @property
    def client(self) -> NumPyClient:
        """The site's Flower client (what trains)."""

    @property
    def link(self) -> Link:
        """The agent's calls to the coordinator."""

    def submit(self, task: federation_pb2.Task, update: Update) -> None:
        """Send an update for ``task``."""

    def global_model(self, task: federation_pb2.Task) -> NDArrays:
        """The task's global weights, as its run's scheme gets them."""


def task_config(task: federation_pb2.Task) -> dict[str, Any]:
    """The task's run configuration, with its round and run, as the client reads it."""
    config: dict[str, Any] = json.loads(task.config_json or "{}")
    config["round"] = task.round
    config["run_id"] = task.run_id
    # Flower configs hold scalars: nested model settings travel as JSON text.
    config["model_config_json"] = json.dumps(config.get("model_config", {}))
    config.setdefault("lora", "")
    return config


def init(agent: TaskSite, task: federation_pb2.Task) -> None:
    """Send the client's initial weights (plaintext float32), only from a fresh start."""
    # Cohort's trainers always return fresh weights; any other client may return what it
    # last trained, so after training it is not asked.
    if agent.trained_any and not getattr(agent.client, "fresh_start_points", False):
        raise TaskRefused(
            "policy",
            "this site's client has trained since the agent started and may return "
            "trained weights: it sends initial weights only from a fresh start",
        )
    weights = agent.client.get_parameters(scalar_config(task_config(task)))
    payload = wire.encode_tensors([np.asarray(w, np.float32) for w in weights])
    agent.submit(task, Update(payload, wire.TENSORS_FLOAT32, num_examples=1, weight=1))
    agent.listener("initialised", {"run_id": task.run_id, "tensors": len(weights)})


def train(agent: TaskSite, task: federation_pb2.Task) -> None:
    """One round: the global model, local training, and the update in the run's scheme.

    In a DP run the header carries only the privacy accounting (:func:`withheld`).
    """
    config = task_config(task)
    # Budget first: a refused round touches none of this site's data.
    privacy = agent.privacy.before_round(task, config, agent.client)
    if privacy is not None:
        submit_ledger(agent, task.run_id, privacy.entry)
    scheme = site_scheme(task, config)
    started = time.perf_counter()
    weights = scheme.global_model(agent, task, config)
    fetched = time.perf_counter()
    flower_config = scalar_config(config)
    # A DP run's exact held-out score would leave un-noised: not computed at all.
    metrics = evaluation(agent, weights, flower_config) if privacy is None else {}
    scheme.prepare(agent, task, weights)
    fit_started = time.perf_counter()
    # From here the local weights hold this site's data: no INIT of this run is answered.
    agent.pins.mark_trained(task.run_id)
    agent.trained_any = True
    if privacy is not None and privacy.plan.mode == "record":  # DP-SGD (client/dp.py)
        fit_private = agent.client.fit_private  # type: ignore[attr-defined]
        new_weights, num_examples, fit_metrics = fit_private(weights, flower_config, privacy)
    else:  # site-level DP adds its noise when the scheme encodes (client/dp_site_scheme.py)
        new_weights, num_examples, fit_metrics = agent.client.fit(weights, flower_config)
    metrics.update(fit_metrics)
    trained = time.perf_counter()
    deltas: NDArrays = [
        np.asarray(n, np.float64) - np.asarray(w, np.float64)
        for n, w in zip(new_weights, weights, strict=True)
    ]
    # Under DP every site weighs 1: a weight from the example count would release it.
    weight_basis = int(num_examples) if privacy is None else 1
    update = scheme.encode(agent, task, config, deltas, weight_basis)
    encoded = time.perf_counter()
    metrics.update(update.metrics)
    # Where a round's time goes at this site: getting the global model (fetching, and
    # in secure runs decrypting the aggregate), local training, encoding/encrypting.
    metrics.update(
        {
            "model_seconds": fetched - started,
            "train_seconds": trained - fit_started,
            "encode_seconds": encoded - trained,
        }
    )
    if privacy is None:
        sent = replace(update, metrics=metrics)
    else:
        sent = withheld(update, agent.privacy.after_round(privacy))
        metrics.update(sent.metrics)
    agent.submit(task, sent)
    agent.listener(  # this site's own console: its exact figures stay here
        "trained",
        {
            "run_id": task.run_id,
            "round": task.round,
            "bytes": len(update.payload),
            "metrics": metrics,
        },
    )


def evaluation(agent: TaskSite, weights: NDArrays, flower_config: dict[str, Any]) -> dict[str, Any]:
    """The global model scored by the client's ``evaluate`` (empty when it has none)."""
    try:
        loss, n_eval, eval_metrics = agent.client.evaluate(weights, flower_config)
    except NotImplementedError:
        return {}
    return {
        "eval_loss": float(loss),
        "eval_examples": int(n_eval),
        **{f"eval_{k}": v for k, v in eval_metrics.items()},
    }


def withheld(update: Update, accounting: dict[str, float]) -> Update:
    """A DP run's update as its header may describe it: the privacy accounting, no more.

    An exact statistic of the data is a release with no noise, so none of ε covers it
    (Dwork & Roth, "The Algorithmic Foundations of Differential Privacy", 2014, sec. 3.3:
    a count's sensitivity is 1). The example count is sent as 0 (the coordinator takes 0
    only in DP runs; the scheme encoded the update at weight 1); no training, evaluation,
    clipping or timing metric goes (training time grows with the rows trained). Only
    ``accounting``: the run's ε, δ and σ, which the site's signed ledger entries carry.
    """
    return replace(update, num_examples=0, metrics=dict(accounting))


def submit_ledger(agent: TaskSite, run_id: str, entry: Any) -> None:
    """Send the coordinator a copy of a signed ledger entry (the report verifies it)."""
    from client.ledger import canonical

    agent.link.submit_ledger(run_id, canonical(entry.statement), entry.signature)
    agent.listener("privacy", {"run_id": run_id, "statement": entry.statement})


def audit(agent: TaskSite, task: federation_pb2.Task) -> None:
    """SHAP audit of the final model on held-out rows, with the model's score on them.

    Only the summary leaves: aggregate attributions and the held-out metrics (none in a
    DP run: see :func:`withheld`). A site
    that cannot audit says so (a refusal the run shows), so the run need not wait for
    its audit deadline.
    """
    from client.audit import run_site_audit

    weights = agent.global_model(task)
    # A DP run's summary is noised and charged first (client/dp_audit.py); else None.
    privacy = agent.privacy.before_audit(task, agent.client)
    audit: Any = run_site_audit
    if privacy is not None:
        from client.dp_audit import private_site_audit

        submit_ledger(agent, task.run_id, privacy.entry)
        audit = partial(private_site_audit, multiplier=privacy.noise_multiplier)
    try:
        summary = audit(
            agent.client,
            weights,
            site=agent.config.site_name,
            rows=agent.config.audit_rows,
            seed=agent.config.seed,
        )
    except (ValueError, RuntimeError, TypeError) as exc:
        raise TaskRefused("error", f"the audit failed at this site: {exc}") from exc
    if summary is None:
        agent.listener("audit_skipped", {"run_id": task.run_id})
        raise TaskRefused("error", "this site's client offers no audit hook")
    # A DP run's summary is noised; the exact held-out score beside it would not be.
    holdout = holdout_metrics(agent, weights, task) if privacy is None else {}
    if holdout:
        summary = replace(summary, holdout_metrics=holdout)
    agent.link.submit_audit(task, summary.to_json())
    agent.listener(
        "audited", {"run_id": task.run_id, "rows": summary.row_count, "holdout": holdout}
    )


def holdout_metrics(
    agent: TaskSite, weights: list[np.ndarray], task: federation_pb2.Task
) -> dict[str, float]:
    """The final model scored by the client's own ``evaluate`` on its held-out rows."""
    try:
        loss, examples, metrics = agent.client.evaluate(weights, scalar_config(task_config(task)))
    except NotImplementedError:
        return {}
    numbers = {
        str(k): float(v)
        for k, v in metrics.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and np.isfinite(v)
    }
    if np.isfinite(loss):
        numbers["loss"] = float(loss)
    numbers["examples"] = float(examples)
    return dict(list(numbers.items())[:32])


def final_model_task(agent: TaskSite, run_id: str) -> federation_pb2.Task:
    """Where a run's final model comes from, checked against this site's run pins.

    What a site exports or serves must be the run it took part in: the same scheme,
    model, sites, key and initial model as it pinned while training.

    Raises
    ------
    AgentError
        If this site never joined from this state folder.
    TaskRefused
        If the reply disagrees with the site's policy or the run's pins.
    """
    if not agent.identity.node_token:
        # Joining here would make a new node that the scheduler could pick for a round.
        raise AgentError(
            f"site {agent.config.site_name} has not joined the federation from "
            f"{agent.config.state_dir}: use the agent's --state-dir"
        )
    from client.sovereign import admit

    task = agent.link.final_model(run_id)
    admit(agent, task)
    return task
