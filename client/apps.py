"""Load the site's client: the built-in trainer, or any Flower client a user names.

Three kinds of Flower code run unchanged behind ``--app module:attribute``:

- a ``NumPyClient`` (or a factory returning one, or a ``Client`` made by ``to_client()``);
- a message-API ``ClientApp`` with ``@app.train()`` / ``@app.evaluate()`` handlers, as
  ``flwr new`` writes them: arrays travel in the ``"arrays"`` ArrayRecord, the round's
  settings in the ``"config"`` ConfigRecord, and the reply's MetricRecord carries
  ``"num-examples"``;
- a legacy ``ClientApp(client_fn=...)``, driven with Flower's own legacy records.

Both kinds of ``ClientApp`` are wrapped in :class:`ClientAppAdapter`, a ``NumPyClient``,
so the agent treats every site the same.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import math
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from flwr.app import (
    DEFAULT_TTL,
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    Metadata,
    RecordDict,
)
from flwr.client import NumPyClient
from flwr.clientapp import ClientApp
from flwr.common import (
    EvaluateIns,
    FitIns,
    GetParametersIns,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.common.constant import SUPERLINK_NODE_ID, MessageTypeLegacy
from flwr.compat.common import recorddict_compat as legacy

NDArrays = list[np.ndarray]


class AppError(ValueError):
    """A ``--app`` reference that does not lead to a Flower client; the message says why."""


def _import(reference: str, option: str) -> Any:
    module_name, sep, attribute = reference.partition(":")
    if not sep or not module_name or not attribute:
        raise AppError(f"{option} must look like package.module:attribute, not {reference!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise AppError(f"cannot import {module_name!r}: {exc}") from exc
    found = getattr(module, attribute, None)
    if found is None:
        raise AppError(f"{module_name} has no attribute {attribute!r}")
    return found


def _call_with(factory: Callable[..., Any], context: Mapping[str, Any]) -> Any:
    """Call ``factory`` with the keyword arguments it declares out of ``context``."""
    parameters = inspect.signature(factory).parameters
    accepts_any = any(p.kind == p.VAR_KEYWORD for p in parameters.values())
    return factory(**{k: v for k, v in context.items() if accepts_any or k in parameters})


def load_app(
    reference: str,
    *,
    initial_model: str = "",
    node_config: Mapping[str, Any] | None = None,
    **context: Any,
) -> NumPyClient:
    """Import ``package.module:attribute`` and make a ``NumPyClient`` of it.

    A factory is called with the keyword arguments it declares out of ``context``
    (``data``, ``site_name``, ``seed``…), or with none: existing Flower code runs
    unchanged. A ``ClientApp`` is adapted (:class:`ClientAppAdapter`); a message-API
    one has no handler that yields initial weights, so ``initial_model`` names a callable
    that does, as a ServerApp would (``task:Net``: an ``nn.Module``, a state dict, an
    ``ArrayRecord`` or a list of arrays). ``node_config`` becomes the app's
    ``context.node_config`` (Flower's ``partition-id`` and so on).

    Raises
    ------
    AppError
        If the reference does not lead to a Flower client.
    """
    found = _import(reference, "--app")
    if isinstance(found, ClientApp):
        return ClientAppAdapter(
            found,
            site_name=str(context.get("site_name") or "site"),
            node_config=node_config,
            initial_model=_initial_model(initial_model, context) if initial_model else None,
        )
    if isinstance(found, NumPyClient):
        return found
    if not callable(found):
        raise AppError(f"{reference} is neither a Flower client, a ClientApp nor a factory")
    client = _call_with(found, context)
    inner = getattr(client, "numpy_client", None)
    if isinstance(inner, NumPyClient):
        client = inner
    if not isinstance(client, NumPyClient):
        raise AppError(f"{reference} returned {type(client).__name__}, not a flwr NumPyClient")
    return client


def _initial_model(reference: str, context: Mapping[str, Any]) -> ArrayRecord:
    found = _import(reference, "--initial-model")
    made = _call_with(found, context) if callable(found) else found
    if isinstance(made, ArrayRecord):
        return made
    state_dict = getattr(made, "state_dict", None)
    if callable(state_dict):  # an nn.Module
        made = state_dict()
    if isinstance(made, Mapping):
        return ArrayRecord(
            OrderedDict((str(k), Array(_to_numpy(v))) for k, v in made.items()), keep_input=True
        )
    if isinstance(made, list | tuple) and all(isinstance(a, np.ndarray) for a in made):
        return ArrayRecord(list(made), keep_input=True)
    raise AppError(
        f"--initial-model {reference} gave {type(made).__name__}; expected an nn.Module, "
        "a state dict, an ArrayRecord or a list of numpy arrays"
    )


def _to_numpy(value: Any) -> np.ndarray:
    detach = getattr(value, "detach", None)
    return np.asarray(detach().cpu().numpy() if callable(detach) else value)


def _stable_id(text: str) -> int:
    """A positive 63-bit integer for ``text``: Flower's contexts use integer ids."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") >> 1


def _flower_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """Cohort's round settings under their own names and Flower's hyphenated ones.

    Flower apps read ``context.run_config["local-epochs"]`` and
    ``msg.content["config"]["lr"]``; Cohort names them ``local_epochs`` and ``lr``.
    """
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, bool | int | float | str | bytes):
            out[key] = value
            out.setdefault(key.replace("_", "-"), value)
    if "rounds" in out:
        out.setdefault("num-server-rounds", out["rounds"])
    if "round" in out:
        out.setdefault("server-round", out["round"])
    return out


class ClientAppAdapter(NumPyClient):
    """A Flower ``ClientApp`` seen as a ``NumPyClient``: the agent's one interface.

    Each run gets its own Flower ``Context``, kept across its rounds, so state the app
    keeps in ``context.state`` lives as long as it would under Flower. Arrays keep the
    names and dtypes of the initial model, so ``to_torch_state_dict()`` in the app
    gives back the keys ``load_state_dict`` expects.
    """

    def __init__(
        self,
        app: ClientApp,
        *,
        site_name: str,
        node_config: Mapping[str, Any] | None = None,
        initial_model: ArrayRecord | None = None,
    ) -> None:
        self.app = app
        self.site_name = site_name
        self.node_id = _stable_id(site_name)
        self.node_config = dict(node_config or {})
        self.initial_model = initial_model
        # Flower keeps the client_fn of a legacy ClientApp behind its private _call.
        self.legacy = getattr(app, "_call", None) is not None
        if not self.legacy and initial_model is None:
            raise AppError(
                "a message-API ClientApp has no handler that gives initial weights: name "
                "the model its ServerApp starts from with --initial-model package.module:factory"
            )
        self._contexts: dict[str, Context] = {}
        self._names: list[str] = list(initial_model.keys()) if initial_model else []
        self._dtypes: list[np.dtype[Any]] = (
            [a.dtype for a in initial_model.to_numpy_ndarrays()] if initial_model else []
        )

    def context(self, config: Mapping[str, Any]) -> Context:
        """The Flower ``Context`` of ``config``'s run, kept while the site works on that run.

        Its ``state`` carries over between rounds, as a ClientApp's does under Flower.
        """
        run_id = str(config.get("run_id", ""))
        context = self._contexts.get(run_id)
        if context is None:
            context = Context(
                run_id=_stable_id(run_id),
                node_id=self.node_id,
                node_config=self.node_config,
                state=RecordDict(),
                run_config=_flower_config(config),
            )
            self._contexts = {run_id: context}  # a site works on one run's rounds at a time
        return context

    def _send(self, content: RecordDict, message_type: str, config: Mapping[str, Any]) -> Message:
        context = self.context(config)
        # Outside a SuperNode no task identity is set, so the metadata is made here, as the
        # SuperLink would make it for an instruction from the ServerApp.
        metadata = Metadata(
            run_id=context.run_id,
            message_id=uuid.uuid4().hex,
            src_node_id=SUPERLINK_NODE_ID,
            dst_node_id=self.node_id,
            reply_to_message_id="",
            group_id=str(config.get("round", "")),
            created_at=time.time(),
            ttl=DEFAULT_TTL,
            message_type=message_type,
        )
        # Flower builds messages from the wire the same way; its stubs leave `metadata` out.
        message = Message(content=content, metadata=metadata)  # type: ignore[call-overload]
        reply = self.app(message, context)
        if reply.has_error():
            raise RuntimeError(f"the ClientApp's {message_type} handler failed: {reply.error}")
        return reply

    # -- NumPyClient ----------------------------------------------------------------------

    def get_parameters(self, config: dict[str, Any]) -> NDArrays:
        """The initial weights: the legacy ClientApp's, or the model's the adapter was given."""
        if self.legacy:
            content = legacy.getparametersins_to_recorddict(GetParametersIns(config=config))
            reply = self._send(content, MessageTypeLegacy.GET_PARAMETERS, config)
            res = legacy.recorddict_to_getparametersres(reply.content, keep_input=True)
            return parameters_to_ndarrays(res.parameters)
        assert self.initial_model is not None  # checked when the adapter was made
        return self.initial_model.to_numpy_ndarrays()

    def fit(
        self, parameters: NDArrays, config: dict[str, Any]
    ) -> tuple[NDArrays, int, dict[str, Any]]:
        """Train through the ClientApp's ``train`` handler (``NumPyClient.fit``)."""
        if self.legacy:
            fit_ins = FitIns(ndarrays_to_parameters(parameters), config)
            content = legacy.fitins_to_recorddict(fit_ins, keep_input=True)
            reply = self._send(content, "train", config)
            res = legacy.recorddict_to_fitres(reply.content, keep_input=True)
            return parameters_to_ndarrays(res.parameters), res.num_examples, dict(res.metrics)
        reply = self._send(self._instruction(parameters, config), "train", config)
        metrics = self._metrics(reply, "train")
        return self._arrays(reply), self._num_examples(metrics, "train"), metrics

    def evaluate(
        self, parameters: NDArrays, config: dict[str, Any]
    ) -> tuple[float, int, dict[str, Any]]:
        """Evaluate through the ClientApp's ``evaluate`` handler (``NumPyClient.evaluate``)."""
        if self.legacy:
            ins = EvaluateIns(ndarrays_to_parameters(parameters), config)
            reply = self._send(
                legacy.evaluateins_to_recorddict(ins, keep_input=True), "evaluate", config
            )
            res = legacy.recorddict_to_evaluateres(reply.content)
            return float(res.loss), res.num_examples, dict(res.metrics)
        try:
            reply = self._send(self._instruction(parameters, config), "evaluate", config)
        except ValueError as exc:
            if "No evaluate function registered" in str(exc):
                raise NotImplementedError("the ClientApp has no evaluate handler") from exc
            raise
        metrics = self._metrics(reply, "evaluate")
        examples = self._num_examples(metrics, "evaluate")
        loss = next(
            (float(metrics.pop(k)) for k in ("eval_loss", "eval-loss", "loss") if k in metrics),
            math.nan,
        )
        return (
            loss,
            examples,
            {k.removeprefix("eval_").removeprefix("eval-"): v for k, v in metrics.items()},
        )

    # -- records --------------------------------------------------------------------------

    def _instruction(self, parameters: NDArrays, config: Mapping[str, Any]) -> RecordDict:
        """What a Flower strategy sends with a train or evaluate message."""
        return RecordDict(
            {"arrays": self._record(parameters), "config": ConfigRecord(_flower_config(config))}
        )

    def _record(self, parameters: NDArrays) -> ArrayRecord:
        if not self._names:  # a legacy app's arrays, or none named yet
            self._names = [str(i) for i in range(len(parameters))]
            self._dtypes = [np.asarray(p).dtype for p in parameters]
        if len(parameters) != len(self._names):
            raise ValueError(
                f"{len(parameters)} arrays for a model of {len(self._names)} named arrays"
            )
        return ArrayRecord(
            OrderedDict(
                (name, Array(np.ascontiguousarray(np.asarray(p).astype(dtype, copy=False))))
                for name, p, dtype in zip(self._names, parameters, self._dtypes, strict=True)
            )
        )

    def _arrays(self, reply: Message) -> NDArrays:
        records = reply.content.array_records
        record = records.get("arrays") or (
            next(iter(records.values())) if len(records) == 1 else None
        )
        if record is None:
            raise RuntimeError(
                "the ClientApp's train reply holds no ArrayRecord "
                f"(records: {', '.join(records) or 'none'})"
            )
        if list(record.keys()) != self._names:
            raise RuntimeError(
                "the ClientApp's train reply names arrays "
                f"{list(record.keys())[:4]}…, not the model's {self._names[:4]}…"
            )
        return record.to_numpy_ndarrays()

    @staticmethod
    def _metrics(reply: Message, handler: str) -> dict[str, Any]:
        records = reply.content.metric_records
        if not records:
            raise RuntimeError(f"the ClientApp's {handler} reply holds no MetricRecord")
        metrics: dict[str, Any] = {}
        for record in records.values():
            metrics.update(record)
        return metrics

    @staticmethod
    def _num_examples(metrics: dict[str, Any], handler: str) -> int:
        for key in ("num-examples", "num_examples"):
            if key in metrics:
                return int(metrics.pop(key))
        raise RuntimeError(
            f"the ClientApp's {handler} reply has no 'num-examples' metric to weight it by"
        )
