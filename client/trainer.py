"""The built-in site trainer: a Flower ``NumPyClient`` over a registry model and local data."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from flwr.client import NumPyClient
from flwr.common.typing import Config

import models
from client.data import PREPROCESSING_STEPS, TabularData, log_scale, train_holdout_split
from client.data_schema import pinned_order, schema_of, tabular_model
from client.policy import TaskRefused
from client.rng import GLOBAL_RNG_LOCK
from models.export import TabularSchema
from protos.wire import NDArrays


def scalar_config(config: dict[str, Any]) -> Config:
    """Flower configs hold scalars only; nested settings stay with the trainer."""
    return {k: v for k, v in config.items() if isinstance(v, bool | int | float | str)}


class TabularTrainer(NumPyClient):
    """Trains a registry model on a site's tabular data, exactly as any Flower client would.

    ``fit`` and ``evaluate`` follow Flower's contract, so the agent drives this class and
    a user's own ``NumPyClient`` the same way.
    """

    # get_parameters never returns trained weights: the agent may ask for INIT any time.
    fresh_start_points = True

    def __init__(
        self,
        data: TabularData,
        *,
        model: str = "tabular_mlp",
        model_config: dict[str, Any] | None = None,
        holdout: float = 0.2,
        seed: int = 0,
        preprocess: str = "log",
        device: torch.device | None = None,
    ) -> None:
        self.preprocess = preprocess
        self._prepare(data.x[:1])  # an unknown preprocessing fails here, not at a task
        # The rows as loaded, in this site's column order; tasks arrange them (accept_task).
        self.source = data
        self.holdout = holdout
        self.seed = seed
        # What the run agrees on: columns, types, classes (never values).
        self.data_schema = schema_of(data)
        self.data_fingerprint = data.fingerprint()
        self.num_rows = len(data.y)
        self._order: list[int] = []
        self._arrange(list(range(len(data.feature_names))))
        try:
            self.model_name = tabular_model(model)
        except TaskRefused as exc:
            raise ValueError(exc.reason) from exc
        self.site_model_config = dict(model_config or {})
        self.model_config = {
            "in_features": data.x.shape[1],
            "num_classes": 2,
            **self.site_model_config,
        }
        # What a raw row must hold and what each output means: exported with the model,
        # so a site can score raw rows without knowing how this trainer prepared them.
        self.class_names = data.class_names_for(int(self.model_config["num_classes"]))
        self.device = device or models.select_device()
        self._started_run: str | None = None
        self._build_model()
        self.rounds_trained = 0

    def _arrange(self, order: list[int]) -> None:
        """Take the feature columns in ``order`` (the run's pinned order) and split the rows.

        The split depends on the labels only, so every order holds out the same rows.
        """
        arranged = self.source.columns(order)
        prepared = TabularData(self._prepare(arranged.x), arranged.y, arranged.feature_names)
        self.train_data, self.holdout_data = train_holdout_split(prepared, self.holdout, self.seed)
        self.feature_names = arranged.feature_names
        self._order = list(order)

    def accept_task(self, config: dict[str, Any]) -> None:
        """Get ready for a task of the run ``config`` describes, or refuse it (before training).

        Builds the model the run names (a tabular registry model, with the run's
        ``model_config`` over this site's own) and takes the columns in the run's pinned
        schema order (matched by name).

        Raises
        ------
        TaskRefused
            ``model`` for a model a table cannot train or that does not build with the
            run's settings; ``schema`` for data that differs from the run's schema.
        """
        name = tabular_model(str(config.get("model") or self.model_name))
        run_config = config.get("model_config") or {}
        if not isinstance(run_config, dict):
            raise TaskRefused("model", "the run's model_config is not a JSON object")
        order = pinned_order(config.get("schema"), self.data_schema)
        if order is None:
            order = list(range(len(self.source.feature_names)))
        if order != self._order:
            self._arrange(order)
        wanted = {
            "in_features": len(order),
            "num_classes": 2,
            **self.site_model_config,
            **run_config,
        }
        classes = int(wanted["num_classes"])
        low, high = int(self.source.y.min(initial=0)), int(self.source.y.max(initial=0))
        if low < 0 or high >= classes:
            raise TaskRefused(
                "schema",
                f"this site's labels run from {low} to {high}; the run's model has "
                f"{classes} classes (0 to {classes - 1})",
            )
        if name != self.model_name or wanted != self.model_config:
            previous = (self.model_name, self.model_config)
            self.model_name, self.model_config = name, wanted
            try:
                self._build_model()
            except (TypeError, ValueError) as exc:
                self.model_name, self.model_config = previous
                raise TaskRefused(
                    "model", f"model {name!r} does not build with the run's settings: {exc}"
                ) from exc
            self.class_names = self.source.class_names_for(int(wanted["num_classes"]))

    def _build_model(self) -> None:
        # Sites sharing a process (demo, tests) take turns with torch's global generator,
        # so that a site's initialisation depends on its seed alone.
        with GLOBAL_RNG_LOCK, torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.model = models.build_model(self.model_name, **self.model_config)
        self.model.to(self.device)

    def _prepare(self, x: np.ndarray) -> np.ndarray:
        if self.preprocess == "log":
            return log_scale(x)
        if self.preprocess == "none":
            return x.astype(np.float32)
        raise ValueError(f"unknown preprocessing {self.preprocess!r}: use 'log' or 'none'")

    @property
    def num_train(self) -> int:
        """Rows this site trains on: its share of the weight when updates are averaged."""
        return len(self.train_data.y)

    def export_schema(self) -> TabularSchema:
        """Features in order, class names and the preprocessing step, for an export."""
        return TabularSchema(
            tuple(self.feature_names),
            tuple(self.class_names),
            PREPROCESSING_STEPS[self.preprocess],
        )

    def get_parameters(self, config: dict[str, Any]) -> NDArrays:
        """A start point: always freshly initialised from the seed, never trained weights.

        The coordinator asks for this (INIT) in plaintext; returning the current model
        would hand it whatever this site last trained, in any run.
        """
        run_id = config.get("run_id")
        if run_id is not None:
            self._started_run = str(run_id)
        self._build_model()
        return models.get_weights(self.model)

    def fit(
        self, parameters: NDArrays, config: dict[str, Any]
    ) -> tuple[NDArrays, int, dict[str, Any]]:
        """Train from ``parameters`` on this site's rows (Flower's ``fit``)."""
        models.set_weights(self.model, parameters)
        self.rounds_trained += 1
        with GLOBAL_RNG_LOCK:  # dropout and data order draw from torch's global generator
            metrics = self._train(config)
        return models.get_weights(self.model), self.num_train, metrics

    def fit_private(
        self, parameters: NDArrays, config: dict[str, Any], privacy: Any
    ) -> tuple[NDArrays, int, dict[str, Any]]:
        """``fit`` with DP-SGD under the run's accountant (client/dp.py)."""
        from client.dp import train_private

        models.set_weights(self.model, parameters)
        self.rounds_trained += 1
        sigma = float(getattr(privacy.schedule, "stats_noise_multiplier", 0.0))
        if sigma and not privacy.accountant.history:
            self._standardise_privately(sigma, privacy)
        with GLOBAL_RNG_LOCK:
            metrics = train_private(
                self.model,
                models.TabularDataset(self.train_data.x, self.train_data.y),
                privacy.schedule,
                privacy.accountant,
                max_grad_norm=privacy.plan.max_grad_norm,
                epochs=int(config.get("local_epochs", 1)),
                lr=float(config.get("lr", 0.01)),
                seed=self.seed + 1000 * int(config.get("round", self.rounds_trained)),
                device=self.device,
            )
        return models.get_weights(self.model), self.num_train, metrics

    @property
    def private_standardiser(self) -> bool:
        """Whether a DP run should release this model's input statistics (client/dp_norm.py)."""
        return self._input_norm() is not None

    def _input_norm(self) -> torch.nn.BatchNorm1d | None:
        norm = getattr(getattr(self.model, "body", None), "0", None)
        if isinstance(norm, torch.nn.BatchNorm1d) and not norm.affine:
            return norm
        return None

    def _standardise_privately(self, sigma: float, privacy: Any) -> None:
        """The run's first DP round: release the normaliser's statistics, charge the accountant.

        Under DP-SGD the normaliser is frozen (client/dp.py), so without this it would
        standardise with its initial mean 0 and variance 1. The releases are noised
        (client/dp_norm.py) and counted by the run's one accountant before any use.
        """
        from client.dp_norm import private_standardiser, stats_history

        norm = self._input_norm()
        if norm is None or norm.running_mean is None or norm.running_var is None:
            return
        # Fresh OS entropy, never the run's seed: noise a coordinator could predict is none.
        rng = np.random.default_rng()
        mean, variance = private_standardiser(self.train_data.x, sigma, rng)
        privacy.accountant.history.append(stats_history(sigma))
        with torch.no_grad():
            norm.running_mean.copy_(torch.as_tensor(mean))
            norm.running_var.copy_(torch.as_tensor(variance))

    def _train(self, config: dict[str, Any]) -> dict[str, Any]:
        return models.train(
            self.model,
            models.TabularDataset(self.train_data.x, self.train_data.y),
            epochs=int(config.get("local_epochs", 1)),
            lr=float(config.get("lr", 0.01)),
            batch_size=int(config.get("batch_size", 32)),
            device=self.device,
            seed=self.seed + 1000 * int(config.get("round", self.rounds_trained)),
            proximal_mu=float(config.get("proximal_mu", 0.0)),
        )

    def evaluate(
        self, parameters: NDArrays, config: dict[str, Any]
    ) -> tuple[float, int, dict[str, Any]]:
        """Loss and metrics of ``parameters`` on the held-out rows (Flower's ``evaluate``)."""
        models.set_weights(self.model, parameters)
        with GLOBAL_RNG_LOCK:
            result = self._evaluate()
        loss = float(result.pop("loss"))
        result.pop("num_examples", None)
        return loss, len(self.holdout_data.y), {k: float(v) for k, v in result.items()}

    def _evaluate(self) -> dict[str, Any]:
        return models.evaluate(
            self.model,
            models.TabularDataset(self.holdout_data.x, self.holdout_data.y),
            device=self.device,
        )

    # The audit uses these: held-out rows never leave the site, only their summary does.
    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities of the current model for rows ``x``: what the SHAP audit explains."""
        inputs = {"x": torch.as_tensor(np.asarray(x, dtype=np.float32))}
        return models.predict_proba(self.model, inputs, device=self.device)
