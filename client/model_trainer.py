"""The site trainer for any registry model: a Flower ``NumPyClient`` over a ``DictDataset``."""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from flwr.client import NumPyClient
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

import models
from client.model_audit import audit_model
from client.rng import GLOBAL_RNG_LOCK
from models.datasets import DictDataset
from protos.wire import NDArrays


@dataclass(frozen=True)
class ModelSpec:
    """What every site of a run must agree on to build bit-identical models.

    Attributes
    ----------
    model
        Registry name (``multimodal``, ``hf:/dir``, ``pkg.mod:factory``...).
    config
        Keyword arguments of the model's constructor.
    lora
        LoRA spec such as ``"r=8,alpha=16,targets=q,v"``; empty for full fine-tuning.
    seed
        Seed of the initialisation: with LoRA the base is frozen and never exchanged, so
        the only way every site holds the same base is to draw it from the same seed.
    """

    model: str
    config: dict[str, Any] = field(default_factory=dict)
    lora: str = ""
    seed: int = 0

    def key(self) -> str:
        """A canonical string: two specs with the same key build the same model."""
        return json.dumps(
            [self.model, self.config, self.lora, self.seed], sort_keys=True, default=str
        )


def spec_from_config(config: Mapping[str, Any], default: ModelSpec) -> ModelSpec:
    """Read a run's model spec from a Flower config, falling back on ``default``.

    Flower configs hold scalars only, so the model's kwargs travel as the JSON string
    ``model_config_json``; a ``model_config`` dict is accepted too (direct calls, or a
    run's config read back with its final model). An empty object means "not given"
    (the agent sends ``{}`` for runs without a ``model_config``), so the site's own
    defaults apply; ``lora`` and ``seed``, when present, are the run's and win.

    Raises
    ------
    ValueError
        If ``model_config_json`` is not a JSON object.
    """
    model_config = default.config
    text = str(config.get("model_config_json") or "")
    parsed = json.loads(text) if text else config.get("model_config") or {}
    if not isinstance(parsed, dict):
        raise ValueError(f"model_config_json must be a JSON object, got {parsed!r}")
    if parsed:
        model_config = dict(parsed)
    return ModelSpec(
        model=str(config.get("model") or default.model),
        config=model_config,
        lora=str(config["lora"]) if "lora" in config else default.lora,
        seed=int(config.get("seed", default.seed)),
    )


def inferred_config(name: str, data: DictDataset) -> dict[str, Any]:
    """Constructor arguments the data fixes (the same at every site): widths and vocabulary.

    The class count is never inferred: a site whose data lacks a class would build a
    narrower head than the others.
    """
    inputs = data.inputs
    tokenizer = getattr(data, "tokenizer", None)
    if name == "tabular_mlp" and "x" in inputs:
        return {"in_features": int(inputs["x"].shape[1])}
    if name == "image_cnn" and "image" in inputs:
        return {"in_channels": int(inputs["image"].shape[1])}
    if name in ("text_transformer", "multimodal") and tokenizer is not None:
        return {"vocab_size": int(tokenizer.vocab_size)}
    return {}


def build_site_model(
    spec: ModelSpec, data: DictDataset, trusted_specs: Collection[str] = ()
) -> nn.Module:
    """Build the spec's model (LoRA applied) from its seed, leaving the global RNG alone.

    ``trusted_specs``: the code-importing specs this site listed; any other such spec is
    refused by the registry, whatever the run's config says.
    """
    if not spec.model:
        raise ValueError(
            "no model named: pass model= to the trainer or run with a 'model' in the config"
        )
    # ``site:SPEC`` is how a run names a model the sites provide themselves (S3's CreateRun).
    name = spec.model.removeprefix("site:")
    config = {**inferred_config(name, data), **spec.config}
    if "trusted_specs" in config:
        raise ValueError("a model_config may not name trusted_specs: the site's policy does")
    with GLOBAL_RNG_LOCK, torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        model = models.build_model(name, trusted_specs=tuple(trusted_specs), **config)
        if spec.lora:
            model = models.apply_lora(model, models.parse_lora_spec(spec.lora))
    return model


def holdout_split(data: DictDataset, holdout: float, seed: int) -> tuple[DictDataset, DictDataset]:
    """Split a site's rows into train and held-out (stratified where every class allows)."""
    from sklearn.model_selection import train_test_split

    if not 0.0 < holdout < 1.0:
        raise ValueError(f"holdout must be between 0 and 1, got {holdout}")
    labels = data.labels.numpy()
    _, counts = np.unique(labels, return_counts=True)
    stratify = labels if len(counts) and counts.min() >= 2 else None
    train_idx, test_idx = train_test_split(
        np.arange(len(labels)), test_size=holdout, random_state=seed, stratify=stratify
    )
    return _keep_meta(data, data.subset(np.sort(train_idx))), _keep_meta(
        data, data.subset(np.sort(test_idx))
    )


def _keep_meta(source: DictDataset, target: DictDataset) -> DictDataset:
    # subset() returns a plain DictDataset; the audit still wants names and the tokenizer.
    for attribute in ("feature_names", "tokenizer"):
        if hasattr(source, attribute):
            setattr(target, attribute, getattr(source, attribute))
    return target


def dataset_fingerprint(data: DictDataset) -> str:
    """sha256 of every input (by name, dtype and shape) and the labels, as trained on."""
    digest = hashlib.sha256()
    for name in sorted(data.inputs):
        tensor = data.inputs[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.numpy().tobytes())
    digest.update(data.labels.numpy().astype(np.int64).tobytes())
    return digest.hexdigest()


def _stay_in_eval(module: nn.Module, mode: bool = True) -> nn.Module:
    module.training = False
    return module


@contextmanager
def frozen_norm_statistics(model: nn.Module) -> Iterator[None]:
    """Keep frozen BatchNorm layers in eval mode while training.

    Under LoRA the base is frozen and only adapters travel, but a BatchNorm layer in
    train mode still normalises with batch statistics and overwrites its running
    statistics, which are never exchanged: every site would end with a different base,
    and a model evaluated with other statistics than it trained with loses about 15
    points on the clinic task. A frozen base must be a fixed function, so its
    normalisation stays in eval mode. Trainable BatchNorm layers are left alone.
    """
    frozen = [
        m
        for m in model.modules()
        if isinstance(m, _BatchNorm) and not any(p.requires_grad for p in m.parameters())
    ]
    for module in frozen:
        # An instance attribute shadows nn.Module.train, which the parent calls per child.
        module.train = functools.partial(_stay_in_eval, module)  # type: ignore[method-assign,assignment]
        module.training = False
    try:
        yield
    finally:
        for module in frozen:
            del module.train


class ModelTrainer(NumPyClient):
    """Trains any registry model, optionally with LoRA, on a site's ``DictDataset``.

    The model is built lazily from the first Flower config, because the run (not the
    site) decides what to train: ``model``, ``model_config_json``, ``lora`` and the
    init ``seed`` come with every task. The constructor's ``model``, ``model_config``
    and ``lora`` are the defaults when the config does not say, so the trainer also
    works on its own. A config naming another model rebuilds it (a new run).

    Parameters
    ----------
    data
        The site's rows; 20 % (``holdout``) are held out for evaluation and the audit.
    model, model_config, lora, model_seed
        Default :class:`ModelSpec`.
    site_name
        Recorded in the audit summary.
    seed
        The site's own seed: held-out split and data order. The model's init seed is
        the run's (``model_seed`` / config ``seed``), identical at every site.
    device
        Defaults to CUDA when present.
    audit_nsamples
        GradientExplainer samples per row and class for torch audits.
    trusted_specs
        ``hf:``/``module:factory`` specs the site named (``--allow-model``); the registry
        refuses every other code-importing spec.
    """

    # get_parameters never returns trained weights: the agent may ask for INIT any time.
    fresh_start_points = True

    def __init__(
        self,
        data: DictDataset,
        *,
        model: str = "",
        model_config: dict[str, Any] | None = None,
        lora: str = "",
        model_seed: int = 0,
        site_name: str = "site",
        holdout: float = 0.2,
        seed: int = 0,
        device: torch.device | None = None,
        audit_nsamples: int = 32,
        trusted_specs: Collection[str] = (),
    ) -> None:
        # Code-importing model specs this site listed (its policy); nothing else imports.
        self.trusted_specs = tuple(trusted_specs)
        self.default_spec = ModelSpec(model, dict(model_config or {}), lora, model_seed)
        self.site_name = site_name
        self.seed = seed
        self.train_data, self.holdout_data = holdout_split(data, holdout, seed)
        self.data_fingerprint = dataset_fingerprint(data)
        self.num_rows = len(data)
        self.device = device or models.select_device()
        self.audit_nsamples = audit_nsamples
        self.spec: ModelSpec | None = None
        self._model: nn.Module | None = None
        self._started_run: str | None = None
        self.base_model_hash = ""
        self.trainable_fraction = 1.0
        self.rounds_trained = 0

    @property
    def model(self) -> nn.Module:
        """The built model (the default spec's, built now if no config came yet)."""
        return self.ensure_model({})

    @property
    def num_train(self) -> int:
        """Rows this site trains on: its share of the weight when updates are averaged."""
        return len(self.train_data)

    def ensure_model(self, config: Mapping[str, Any]) -> nn.Module:
        """Build the model the config asks for, unless it is already the one built."""
        spec = spec_from_config(config, self.spec or self.default_spec)
        if self._model is None or self.spec is None or spec.key() != self.spec.key():
            model = build_site_model(spec, self.train_data, self.trusted_specs).to(self.device)
            self._model, self.spec = model, spec
            self.base_model_hash = models.base_model_hash(model)
            self.trainable_fraction = models.trainable_fraction(model)
            self.rounds_trained = 0
        return self._model

    def accept_task(self, config: Mapping[str, Any]) -> None:
        """Build the run's model now, or refuse the task (code ``model``) before training.

        A model that does not build here (a constructor argument it does not take, a
        spec that does not load) is a refusal the operator reads, not a failed task.
        Built once per model spec; later tasks reuse it.
        """
        from client.policy import TaskRefused

        settings = dict(config)
        settings.setdefault("lora", "")  # as the agent's Flower config has it
        try:
            self.ensure_model(settings)
        except (TypeError, ValueError, KeyError, ImportError, OSError, RuntimeError) as exc:
            self._model, self.spec = None, None  # a model that does not fit is not kept
            name = str(config.get("model", ""))[:200]
            raise TaskRefused(
                "model", f"model {name!r} does not build on this site's data: {exc}"[:900]
            ) from exc

    def get_parameters(self, config: dict[str, Any]) -> NDArrays:
        """A start point: always rebuilt fresh from the spec's seed, never trained weights.

        The coordinator asks for this (INIT) in plaintext; returning the current model
        would hand it whatever this site last trained, in any run.
        """
        run_id = config.get("run_id")
        if run_id is not None:
            self._started_run = str(run_id)
        self._model = None
        return models.get_weights(self.ensure_model(config))

    def fit(
        self, parameters: NDArrays, config: dict[str, Any]
    ) -> tuple[NDArrays, int, dict[str, Any]]:
        """Train the run's model from ``parameters`` on this site's rows (Flower's ``fit``)."""
        model = self.ensure_model(config)
        models.set_weights(model, parameters)
        self.rounds_trained += 1
        with GLOBAL_RNG_LOCK, frozen_norm_statistics(model):
            metrics = models.train(
                model,
                self.train_data,
                epochs=int(config.get("local_epochs", 1)),
                lr=float(config.get("lr", 0.005)),
                batch_size=int(config.get("batch_size", 32)),
                device=self.device,
                seed=self.seed + 1000 * int(config.get("round", self.rounds_trained)),
                proximal_mu=float(config.get("proximal_mu", 0.0)),
            )
        metrics["trainable_fraction"] = self.trainable_fraction
        return models.get_weights(model), self.num_train, metrics

    def fit_private(
        self, parameters: NDArrays, config: dict[str, Any], privacy: Any
    ) -> tuple[NDArrays, int, dict[str, Any]]:
        """``fit`` with DP-SGD under the run's accountant (client/dp.py); LoRA trains adapters."""
        from client.dp import train_private

        model = self.ensure_model(config)
        models.set_weights(model, parameters)
        self.rounds_trained += 1
        with GLOBAL_RNG_LOCK:
            metrics = train_private(
                model,
                self.train_data,
                privacy.schedule,
                privacy.accountant,
                max_grad_norm=privacy.plan.max_grad_norm,
                epochs=int(config.get("local_epochs", 1)),
                lr=float(config.get("lr", 0.005)),
                seed=self.seed + 1000 * int(config.get("round", self.rounds_trained)),
                device=self.device,
            )
        metrics["trainable_fraction"] = self.trainable_fraction
        return models.get_weights(model), self.num_train, metrics

    def evaluate(
        self, parameters: NDArrays, config: dict[str, Any]
    ) -> tuple[float, int, dict[str, Any]]:
        """Loss and metrics of ``parameters`` on the held-out rows (Flower's ``evaluate``)."""
        model = self.ensure_model(config)
        models.set_weights(model, parameters)
        with GLOBAL_RNG_LOCK:  # every DataLoader draws its base seed from torch's generator
            result = models.evaluate(model, self.holdout_data, device=self.device)
        loss = float(result.pop("loss"))
        result.pop("num_examples", None)
        return loss, len(self.holdout_data), {k: float(v) for k, v in result.items()}

    def predict_proba(self, inputs: Mapping[str, torch.Tensor]) -> np.ndarray:
        """Class probabilities for a dict of input tensors (rows stay at the site)."""
        return models.predict_proba(self.model, dict(inputs), device=self.device)

    def audit(self, weights: NDArrays, config: Mapping[str, Any]) -> Any:
        """SHAP audit of ``weights`` on the held-out rows; returns an ``AttributionSummary``.

        ``config`` holds ``rows`` (at most this many held-out rows) and ``seed``. Tabular
        models are explained per column, images per region, text per token position and
        several modalities per modality; the training rows are the background
        (client/model_audit.py).
        """
        model = self.model
        models.set_weights(model, weights)
        model.eval()
        return audit_model(
            model,
            self.holdout_data,
            self.train_data,
            config,
            site=self.site_name,
            device=self.device,
            nsamples=self.audit_nsamples,
        )
