"""Record-level differential privacy at a site: DP-SGD with Opacus, one accountant per run.

DP-SGD (Abadi et al., "Deep Learning with Differential Privacy", CCS 2016) clips each
example's gradient to ``max_grad_norm`` and adds Gaussian noise of standard deviation
``noise_multiplier * max_grad_norm`` to every summed batch gradient; batches are drawn by
Poisson sampling (Opacus's ``DPDataLoader``), which the subsampled-Gaussian accountants
assume (Mironov et al., "Rényi Differential Privacy of the Sampled Gaussian Mechanism",
2019; Gopi et al., "Numerical Composition of Differential Privacy" (PRV), NeurIPS 2021).

Each site derives its own noise from the run's plan and its own data size, once, at the
run's first round, and keeps that noise and ONE accountant for every round of the run
(Flower's Opacus example builds a new engine per round, so its ε covers one round). The
noise multiplier is pinned in the site's ledger: a coordinator cannot lower it mid-run.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from client.policy import TaskRefused
from protos import common_pb2

MECHANISM_RECORD = "DP-SGD (Opacus): per-example clipping, Poisson-subsampled Gaussian noise"


MAX_EPSILON = 100.0
"""The largest run ε a site calibrates for (the coordinator's own cap, checked again here)."""


@dataclass(frozen=True)
class PrivacyPlan:
    """The run's DP plan as the task carries it (coordinator/privacy.py validated it)."""

    mode: str
    epsilon: float
    delta: float
    noise_multiplier: float
    max_grad_norm: float
    accountant: str
    # Site mode only (0 otherwise): the sites the noise is calibrated for, and the most a
    # round may add up (crypto/dp_layout.py).
    quorum: int = 0
    max_sites: int = 0

    @classmethod
    def from_proto(cls, plan: common_pb2.PrivacyPlan) -> PrivacyPlan | None:
        """The task's plan, checked; None when the run has no differential privacy."""
        if not plan.mode:
            return None
        result = cls(
            mode=plan.mode,
            epsilon=float(plan.epsilon),
            delta=float(plan.delta),
            noise_multiplier=float(plan.noise_multiplier),
            max_grad_norm=float(plan.max_grad_norm or 1.0),
            accountant=plan.accountant or "rdp",
            quorum=int(plan.quorum) if plan.mode == "site" else 0,
            max_sites=int(plan.max_sites) if plan.mode == "site" else 0,
        )
        result.check()
        return result

    def check(self) -> None:
        """A site checks the plan itself: the coordinator's validation is not trusted."""
        ok = (
            self.mode in ("record", "site")
            and 0 < self.delta < 1
            and self.accountant in ("rdp", "prv")
            and math.isfinite(self.max_grad_norm)
            and self.max_grad_norm > 0
            and (self.epsilon > 0) != (self.noise_multiplier > 0)
            and all(math.isfinite(v) for v in (self.epsilon, self.noise_multiplier))
            # Negative σ, or an ε past any promise (Opacus's noise search never returns
            # for ε ≈ 1e20: the site's one task worker hung; review of 2026-12-03).
            and self.noise_multiplier >= 0
            and 0 <= self.epsilon <= MAX_EPSILON
            and (
                self.mode != "site"
                or (1 <= self.quorum <= self.max_sites <= 1024 and not self.noise_multiplier)
            )
        )
        if not ok:
            raise TaskRefused("policy", f"the run's privacy plan does not make sense: {self}")

    def as_dict(self) -> dict[str, Any]:
        """The plan as plain JSON values (what the ledger signs; site fields in site mode)."""
        data = asdict(self)
        if self.mode != "site":
            del data["quorum"], data["max_sites"]
        return data


@dataclass(frozen=True)
class RecordSchedule:
    """What one site will do under a record-level plan: fixed for the whole run."""

    sample_rate: float
    steps_per_round: int
    noise_multiplier: float
    rounds: int
    # The input standardiser's Gaussian releases (client/dp_norm.py), made once, at the
    # run's first round; 0.0 when the model has no normaliser or the plan fixes the noise.
    stats_noise_multiplier: float = 0.0

    def event(self, rounds: int | None = None) -> dict[str, Any]:
        """The ledger's description of ``rounds`` rounds (all of the run by default)."""
        count = self.rounds if rounds is None else rounds
        return {
            "kind": "poisson_gaussian",
            "sample_rate": self.sample_rate,
            "noise_multiplier": self.noise_multiplier,
            "steps": self.steps_per_round * count,
        }


def smallest_sigma(
    epsilon_of: Callable[[float], float],
    target: float,
    *,
    low: float = 0.0,
    high: float = 10.0,
    refusal: str = "no noise multiplier reaches epsilon {target:g}",
) -> float:
    """Bisect the smallest noise multiplier whose ε (``epsilon_of(sigma)``) is <= ``target``.

    Doubles ``high`` until it is private enough (refusing with ``refusal`` past 1e6), then
    bisects to 0.5%, rounded towards more noise. Opacus's ``get_noise_multiplier`` does the
    same for DP-SGD alone; this one also serves the standardiser's releases in the same
    accountant and the audit summary's Gaussian release (client/dp_audit.py).
    """
    while epsilon_of(high) > target:
        low, high = high, 2 * high
        if high > 1e6:
            raise TaskRefused("policy", refusal.format(target=target))
    while high - low > 0.005 * high:
        middle = (low + high) / 2
        if epsilon_of(middle) > target:
            low = middle
        else:
            high = middle
    return high


def record_schedule(
    plan: PrivacyPlan,
    n_train: int,
    batch_size: int,
    epochs: int,
    rounds: int,
    *,
    standardise: bool = False,
) -> RecordSchedule:
    """Sample rate, steps and noise from the run's plan and this site's own data size.

    The sample rate is one over the number of batches an epoch would have (Opacus's
    ``DPDataLoader.from_data_loader``); the noise is the smallest multiplier that meets
    the run's (ε, δ) after every round (``get_noise_multiplier``), or the plan's own.
    With ``standardise`` (a model with an input normaliser) and an ε plan, the
    standardiser's two Gaussian releases get ``STATS_SHARE`` of ε and DP-SGD's noise is
    calibrated so that both together, in one accountant, meet the plan's ε.
    """
    from opacus.accountants.utils import get_noise_multiplier

    from client.dp_norm import STATS_SHARE, stats_history

    if n_train < 1 or batch_size < 1 or epochs < 1 or rounds < 1:
        raise TaskRefused("error", "record-level DP needs training rows, a batch size and rounds")
    batches = math.ceil(n_train / batch_size)
    sample_rate = 1.0 / batches
    steps = epochs * batches
    sigma = plan.noise_multiplier
    if standardise and not sigma:

        def stats_only(s: float) -> float:
            return float(
                make_accountant(plan.accountant, [stats_history(s)]).get_epsilon(plan.delta)
            )

        def with_stats(s: float) -> float:
            history = [stats_history(stats_sigma), (s, sample_rate, steps * rounds)]
            return float(make_accountant(plan.accountant, history).get_epsilon(plan.delta))

        stats_sigma = smallest_sigma(stats_only, STATS_SHARE * plan.epsilon)
        sigma = smallest_sigma(with_stats, plan.epsilon)
        return RecordSchedule(sample_rate, steps, float(sigma), rounds, float(stats_sigma))
    if not sigma:
        sigma = float(
            get_noise_multiplier(
                target_epsilon=plan.epsilon,
                target_delta=plan.delta,
                sample_rate=sample_rate,
                steps=steps * rounds,
                accountant=plan.accountant,
                epsilon_tolerance=0.01,
            )
        )
    return RecordSchedule(sample_rate, steps, float(sigma), rounds)


def make_accountant(name: str, history: list[tuple[float, float, int]] | None = None) -> Any:
    """Opacus's RDP or PRV accountant, restored from the run's ledger entries after a restart."""
    from opacus.accountants import create_accountant

    accountant = create_accountant(mechanism=name)
    accountant.history = list(history or [])
    return accountant


def check_private_model(model: nn.Module) -> None:
    """Refuse a model Opacus cannot train privately, naming the layer.

    Frozen BatchNorm layers (no trainable parameters, e.g. the tabular model's input
    normaliser) are fine: they run in eval mode as a fixed function (see ``train_private``).
    Every trainable layer goes through Opacus's ``ModuleValidator`` one at a time, so the
    error names the offending layer, not just its type.
    """
    from opacus.validators import ModuleValidator

    for name, module in model.named_modules():
        own = [p for p in module.parameters(recurse=False) if p.requires_grad]
        if not own:
            continue
        validator = ModuleValidator.VALIDATORS.get(type(module))
        errors = validator(module) if validator is not None else []
        if errors:
            raise TaskRefused(
                "model",
                f"record-level DP cannot train layer {name or '(root)'!r} "
                f"({type(module).__name__}): {errors[0]}"[:900],
            )


def _frozen_norms(model: nn.Module) -> list[nn.Module]:
    return [
        m
        for m in model.modules()
        if isinstance(m, _BatchNorm) and not any(p.requires_grad for p in m.parameters())
    ]


def register_samplers() -> None:
    """Opacus's per-example gradient of the multimodal model's ``TanhGate`` in closed form.

    Without one, Opacus computes it with functorch's ``vmap(grad(...))``, re-running the
    gate per step: 13% of a multimodal DP round (four gates, 1.2 s of 9.1 s in a
    profile). For ``y = tanh(α)·x`` the example's gradient is ``(1 − tanh²α)·Σ g·x``
    over the example's values (Opacus's ``register_grad_sampler``; the same
    ``backprops`` and ``activations`` its built-in layers take). Idempotent.
    """
    from opacus.grad_sample import register_grad_sampler

    from models.fusion import TanhGate

    @register_grad_sampler(TanhGate)
    def gate_sample(
        layer: TanhGate, activations: list[torch.Tensor], backprops: torch.Tensor
    ) -> dict[nn.Parameter, torch.Tensor]:
        product = (backprops * activations[0].to(backprops.dtype)).flatten(1).sum(dim=1)
        slope = 1 - torch.tanh(layer.alpha.detach()) ** 2
        return {layer.alpha: (product[:, None] * slope).to(layer.alpha.dtype)}


def train_private(
    model: nn.Module,
    dataset: Any,
    schedule: RecordSchedule,
    accountant: Any,
    *,
    max_grad_norm: float,
    epochs: int,
    lr: float,
    seed: int,
    device: torch.device,
) -> dict[str, float]:
    """One round of DP-SGD on ``model`` (in place), charging ``accountant`` the round's steps.

    Batch statistics mix examples, which breaks per-example clipping, and a BatchNorm's
    running statistics would leave the site un-noised inside the update: so frozen
    BatchNorm layers run in eval mode and their statistics do not move.
    """
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer
    from opacus.utils.uniform_sampler import UniformWithReplacementSampler
    from torch.utils.data import DataLoader

    from models.training import logits_of, move_inputs

    check_private_model(model)
    register_samplers()
    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise TaskRefused("model", "the model has no trainable parameters")
    # DP-SGD's guarantee assumes nobody can predict which rows a batch samples or the noise
    # drawn (Abadi et al. 2016): both generators are seeded from the OS, never from the
    # run's seed, which others may know. (Opacus's secure_mode needs torchcsprng, which
    # is not installed; a PRNG seeded from os.urandom is the stated fallback.)
    generator = torch.Generator().manual_seed(_secret_seed())
    # Poisson sampling as Opacus's DPDataLoader does it, but an empty batch comes out as
    # None: DPDataLoader builds an empty one from the first row's types, which fails for
    # dict inputs (a TypeError after the round was charged; review of 2026-12-03).
    loader = DataLoader(
        dataset,
        batch_sampler=UniformWithReplacementSampler(
            num_samples=len(dataset), sample_rate=schedule.sample_rate, generator=generator
        ),
        collate_fn=_collate_or_none,
    )
    expected = max(1, round(schedule.sample_rate * len(dataset)))
    frozen = _frozen_norms(model)
    private = GradSampleModule(model)
    try:
        optimizer = DPOptimizer(
            torch.optim.AdamW(params, lr=lr),
            noise_multiplier=schedule.noise_multiplier,
            max_grad_norm=max_grad_norm,
            expected_batch_size=expected,
            generator=torch.Generator(device=device).manual_seed(_secret_seed()),
        )
        private.train()
        for module in frozen:
            module.eval()
        loss_sum, correct, seen, steps = 0.0, 0, 0, 0
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            # Opacus's hooks fire on modules whose inputs need no gradient (the first layer).
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            torch.manual_seed(seed)
            for _ in range(epochs):
                for batch in loader:
                    if batch is None:
                        continue  # nothing released; counted below all the same
                    inputs, labels = batch
                    inputs = move_inputs(inputs, device)
                    labels = labels.to(device)
                    logits = logits_of(private(**inputs))
                    loss = F.cross_entropy(logits.float(), labels)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    steps += 1
                    loss_sum += float(loss.detach()) * labels.shape[0]
                    correct += int((logits.argmax(dim=-1) == labels).sum())
                    seen += int(labels.shape[0])
    finally:
        private._close()
        # The round's steps as the ledger charged them, not the non-empty batches taken: a
        # count of those would move with the exact row count (review of 2026-12-03), and
        # the ε reported must be the one charged. Fewer releases than counted only errs
        # on the safe side; a round that failed midway was charged, so it counts too.
        accountant.history.append(
            (schedule.noise_multiplier, schedule.sample_rate, schedule.steps_per_round)
        )
    return {
        "train_loss": loss_sum / max(seen, 1),
        "train_accuracy": correct / max(seen, 1),
        "dp_steps": float(steps),
    }


def _collate_or_none(rows: list[Any]) -> Any:
    """The default collate of torch, or None for an empty Poisson batch."""
    from torch.utils.data import default_collate

    return default_collate(rows) if rows else None


def plan_key(plan: PrivacyPlan | Mapping[str, Any]) -> str:
    """Canonical JSON of a plan: two tasks of a run must carry the same one."""
    data = plan.as_dict() if isinstance(plan, PrivacyPlan) else dict(plan)
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


def _secret_seed() -> int:
    """A 63-bit seed from the operating system's entropy pool."""
    return int.from_bytes(os.urandom(8), "big") >> 1
