"""The numbers behind record-level DP: our ε agrees with Opacus's and dp-accounting's own.

Also: the calibrated noise meets the run's target, composition across runs is tighter than
summing, one accountant spans a run's rounds, and models Opacus cannot train privately are
refused naming the layer (while LoRA adapters through peft do train).
"""

from __future__ import annotations

import dp_accounting
import pytest
import torch
from dp_accounting import rdp
from opacus.accountants import PRVAccountant, RDPAccountant
from torch import nn

from client.dp import (
    PrivacyPlan,
    check_private_model,
    make_accountant,
    record_schedule,
    train_private,
)
from client.ledger import compose
from client.policy import TaskRefused
from models.datasets import DictDataset

DELTA = 1e-5
# (sample rate, noise multiplier, steps): Abadi et al.'s MNIST-like setting and two more.
SETTINGS = [(0.01, 1.1, 1000), (256 / 60000, 1.1, 60 * 235), (0.05, 2.0, 300)]


@pytest.mark.parametrize(("q", "sigma", "steps"), SETTINGS)
def test_ledger_epsilon_matches_opacus_and_dp_accounting(q, sigma, steps):
    ours = compose(
        [{"kind": "poisson_gaussian", "sample_rate": q, "noise_multiplier": sigma, "steps": steps}],
        DELTA,
    )
    opacus = RDPAccountant()
    opacus.history = [(sigma, q, steps)]
    theirs = rdp.RdpAccountant()
    theirs.compose(
        dp_accounting.SelfComposedDpEvent(
            dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps
        )
    )
    assert ours == pytest.approx(opacus.get_epsilon(DELTA), rel=0.02)
    assert ours == pytest.approx(theirs.get_epsilon(DELTA), rel=0.02)
    # PRV is tighter; RDP (what the ledger composes with) never claims less than it.
    prv = PRVAccountant()
    prv.history = [(sigma, q, steps)]
    assert ours >= prv.get_epsilon(DELTA) - 1e-6


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
@pytest.mark.parametrize("epsilon", [1.0, 3.0, 8.0])
def test_calibrated_noise_meets_the_runs_target(accountant, epsilon):
    plan = PrivacyPlan("record", epsilon, DELTA, 0.0, 1.0, accountant)
    schedule = record_schedule(plan, n_train=400, batch_size=32, epochs=5, rounds=5)
    assert schedule.sample_rate == pytest.approx(1 / 13)
    assert schedule.steps_per_round == 5 * 13
    check = make_accountant(
        accountant,
        [(schedule.noise_multiplier, schedule.sample_rate, schedule.steps_per_round * 5)],
    )
    spent = check.get_epsilon(delta=DELTA)
    assert spent <= epsilon * 1.0 + 0.02
    assert spent >= epsilon * 0.9  # not wastefully noisy either


def test_composing_runs_is_tighter_than_summing_them():
    event = {"kind": "poisson_gaussian", "sample_rate": 0.05, "noise_multiplier": 1.5, "steps": 200}
    one = compose([event], DELTA)
    two = compose([event, event], DELTA)
    assert one < two < 2 * one
    # ... and exactly the same as one run twice as long (RDP adds up per order).
    assert two == pytest.approx(compose([{**event, "steps": 400}], DELTA))


def test_one_accountant_spans_the_runs_rounds():
    """Three rounds under one accountant cost what 3x the steps cost, not one round's ε."""
    torch.manual_seed(0)
    x = torch.randn(120, 4)
    data = DictDataset({"x": x}, (x[:, 0] > 0).long())
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))

    class Wrapped(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = model

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

    wrapped = Wrapped()
    plan = PrivacyPlan("record", 3.0, DELTA, 0.0, 1.0, "rdp")
    schedule = record_schedule(plan, n_train=120, batch_size=20, epochs=1, rounds=3)
    accountant = make_accountant("rdp")
    before = [p.detach().clone() for p in wrapped.parameters()]
    per_round = []
    for round_number in range(3):
        metrics = train_private(
            wrapped,
            data,
            schedule,
            accountant,
            max_grad_norm=1.0,
            epochs=1,
            lr=0.01,
            seed=round_number,
            device=torch.device("cpu"),
        )
        assert metrics["dp_steps"] >= 1
        per_round.append(accountant.get_epsilon(DELTA))
    assert per_round[0] < per_round[1] < per_round[2] <= 3.0 + 0.02
    assert any(not torch.equal(a, b) for a, b in zip(before, wrapped.parameters(), strict=True))
    # No Opacus hooks or per-sample gradients are left on the model between rounds.
    assert not any(hasattr(p, "grad_sample") for p in wrapped.parameters())


def test_a_layer_opacus_cannot_train_is_refused_by_name():
    class WithNorm(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.body(x)

    with pytest.raises(TaskRefused) as caught:
        check_private_model(WithNorm())
    assert caught.value.code == "model"
    assert "'body.1'" in caught.value.reason and "BatchNorm1d" in caught.value.reason


def test_the_tabular_models_frozen_input_normaliser_is_accepted_and_does_not_move():
    from models import build_model

    model = build_model("tabular_mlp", in_features=4)
    check_private_model(model)
    norm = model.body[0]
    torch.manual_seed(0)
    x = torch.randn(64, 4) * 5 + 3
    data = DictDataset({"x": x}, (x[:, 0] > 3).long())
    schedule = record_schedule(PrivacyPlan("record", 8.0, DELTA, 0.0, 1.0, "rdp"), 64, 16, 1, 1)
    train_private(
        model,
        data,
        schedule,
        make_accountant("rdp"),
        max_grad_norm=1.0,
        epochs=1,
        lr=0.01,
        seed=0,
        device=torch.device("cpu"),
    )
    # Running statistics are data: under DP they must not travel un-noised in the update.
    assert torch.equal(norm.running_mean, torch.zeros(4))
    assert torch.equal(norm.running_var, torch.ones(4))


def test_lora_adapters_train_privately_through_peft():
    from models import build_model, get_weights
    from models.clinic import clinic_tokenizer
    from models.lora import apply_lora, parse_lora_spec

    tokenizer = clinic_tokenizer()
    torch.manual_seed(0)
    base = build_model(
        "text_transformer", vocab_size=tokenizer.vocab_size, dim=16, heads=2, layers=1
    )
    model = apply_lora(base, parse_lora_spec("r=2,targets=q,v"))
    ids = torch.randint(1, tokenizer.vocab_size, (40, 12))
    data = DictDataset(
        {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, torch.randint(0, 2, (40,))
    )
    before = [w.copy() for w in get_weights(model)]
    schedule = record_schedule(PrivacyPlan("record", 8.0, DELTA, 0.0, 1.0, "rdp"), 40, 10, 1, 1)
    train_private(
        model,
        data,
        schedule,
        make_accountant("rdp"),
        max_grad_norm=1.0,
        epochs=1,
        lr=0.01,
        seed=0,
        device=torch.device("cpu"),
    )
    after = get_weights(model)
    assert any((a != b).any() for a, b in zip(before, after, strict=True))
