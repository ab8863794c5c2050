"""One plain line per site-agent event, as `cohort client run` prints them."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

from protos.transport import transport_mismatch


def _seconds(value: object) -> str:
    number = float(value) if isinstance(value, int | float) else 0.0
    return f"{number:.0f} s" if number >= 1 else f"{number:.1f} s"


def _metrics(metrics: object) -> str:
    if not isinstance(metrics, Mapping):
        return ""
    shown = [
        f"{name.removeprefix('eval_')} {value:.3f}"
        for name, value in metrics.items()
        if name in ("eval_accuracy", "eval_loss", "accuracy", "loss", "auc", "eval_auc")
        and isinstance(value, int | float)
    ]
    return ", ".join(shown)


def event_line(event: str, info: Mapping[str, Any]) -> str | None:
    """The line for one agent event; None for events a person need not see."""
    run = str(info.get("run_id", ""))[:8]
    if event == "joined":
        return f"joined the federation as node {info.get('node_id', '')}"
    if event == "reconnected":
        return f"reconnected to {info.get('coordinator', 'the coordinator')}"
    if event == "disconnected":
        detail = str(info.get("detail", ""))
        why = transport_mismatch(detail) or detail or str(info.get("code", ""))
        return f"disconnected ({why}); retrying in {_seconds(info.get('retry_in', 0))}"
    if event == "initialised":
        return f"run {run}: initial weights sent ({info.get('tensors', '?')} tensors)"
    if event == "trained":
        scores = _metrics(info.get("metrics"))
        line = f"run {run} round {info.get('round')}: update sent ({info.get('bytes')} bytes"
        return line + (f"; before training: {scores})" if scores else ")")
    if event == "audited":
        scores = _metrics(info.get("holdout"))
        line = f"run {run}: audit sent ({info.get('rows')} held-out rows explained"
        return line + (f"; final model on them: {scores})" if scores else ")")
    if event == "audit_skipped":
        return f"run {run}: no audit (this site's client offers no audit hook)"
    if event == "refused":
        return (
            f"refused the {info.get('kind', '')} task of run {run} round {info.get('round', '?')}"
            f" ({info.get('code')}): {info.get('reason')}"
        )
    if event == "rejected":
        return (
            f"the coordinator refused this site's result ({info.get('code')}): {info.get('detail')}"
        )
    if event == "task_failed":
        return f"a task failed here and was given up: {info.get('error')}"
    if event == "abandoned":
        return f"run {run}: the {info.get('kind')} task in progress was abandoned"
    if event == "shutting_down":
        return "shutting down"
    return None


def data_summary(client: object) -> str | None:
    """What a site loaded: rows, features and class balance (counts only, never values)."""
    train = getattr(client, "train_data", None)
    holdout = getattr(client, "holdout_data", None)
    names = getattr(client, "feature_names", None)
    if train is None or names is None:
        return None
    labels: list[Any] = []
    for part in (train, holdout):
        y = getattr(part, "y", None)
        if y is not None:
            labels.extend(y.tolist() if hasattr(y, "tolist") else list(y))
    classes = list(getattr(client, "class_names", []) or [])
    counts = Counter(labels)
    total = sum(counts.values()) or 1

    def name(label: Any) -> str:
        if isinstance(label, int) and 0 <= label < len(classes):
            return str(classes[label])
        return str(label)

    balance = ", ".join(
        f"{name(label)} {count / total:.0%}" for label, count in sorted(counts.items())
    )
    held = len(getattr(holdout, "y", [])) if holdout is not None else 0
    return (
        f"data: {len(labels)} rows ({held} held out), {len(names)} features; "
        f"classes: {balance or 'none'}"
    )
