"""LoRA: spec parsing, only adapters (and the head) exchanged, state round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models import build_model, get_weights, set_weights, train, weight_names
from models.clinic import clinic_tokenizer, make_clinic_multimodal
from models.lora import LoraSpec, apply_lora, parse_lora_spec, trainable_fraction


def _text_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(
        "text_transformer", vocab_size=clinic_tokenizer().vocab_size, dim=32, heads=2, layers=2
    )


def test_spec_with_comma_separated_targets_parses() -> None:
    spec = parse_lora_spec("r=8,alpha=16,targets=q,v,dropout=0.05")

    assert spec == LoraSpec(r=8, alpha=16, dropout=0.05, targets=("q", "v"))


def test_freeze_a_is_off_unless_the_spec_asks() -> None:
    assert parse_lora_spec("r=4").freeze_a is False
    assert parse_lora_spec("r=4,targets=q,v,freeze_a=true").freeze_a is True


@pytest.mark.parametrize(
    "bad",
    ["r=0", "rank=4", "q,v", "r=four", "freeze_a=maybe"],
    ids=["zero", "key", "bare", "nan", "flag"],
)
def test_bad_spec_is_a_value_error(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_lora_spec(bad)


def test_only_adapters_and_head_are_exchanged() -> None:
    model = apply_lora(_text_model(), parse_lora_spec("r=4,targets=q,v"))

    names = weight_names(model)

    assert names
    assert all("lora_" in n or "classifier" in n for n in names)
    assert any("q_proj.lora_A" in n for n in names) and any("v_proj.lora_B" in n for n in names)
    assert not any("k_proj" in n or "token_embedding" in n for n in names)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert sum(w.size for w in get_weights(model)) == trainable


def test_adapter_state_round_trips_between_sites() -> None:
    spec = parse_lora_spec("r=4")
    site_a, site_b = apply_lora(_text_model(), spec), apply_lora(_text_model(), spec)
    data = make_clinic_multimodal(64, seed=0).select(["input_ids", "attention_mask"])
    train(site_a, data, epochs=1, lr=1e-2, device=torch.device("cpu"))

    set_weights(site_b, get_weights(site_a))

    for a, b in zip(get_weights(site_a), get_weights(site_b), strict=True):
        np.testing.assert_array_equal(a, b)
    inputs = {k: v[:8] for k, v in data.inputs.items()}
    site_a.eval(), site_b.eval()
    torch.testing.assert_close(site_a(**inputs), site_b(**inputs))


def test_flamingo_gates_stay_trainable_under_lora() -> None:
    torch.manual_seed(0)
    model = build_model(
        "multimodal", vocab_size=clinic_tokenizer().vocab_size, dim=32, heads=2, layers=1
    )

    peft_model = apply_lora(model, parse_lora_spec("r=2"))

    assert any("attn_gate" in n for n in weight_names(peft_model))


def test_trainable_fraction_is_small_for_a_transformer() -> None:
    model = apply_lora(_text_model(), parse_lora_spec("r=1,targets=v"))

    assert 0.0 < trainable_fraction(model) < 0.02


def test_unknown_target_is_rejected_with_candidates() -> None:
    with pytest.raises(ValueError, match="matches no"):
        apply_lora(_text_model(), parse_lora_spec("r=2,targets=attention_pump"))


def _delta_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Each adapted layer's update ``scale * B @ A``, by module name (peft computes it)."""
    from peft.tuners.lora import LoraLayer

    return {
        name: module.get_delta_weight("default").detach().clone()
        for name, module in model.named_modules()
        if isinstance(module, LoraLayer)
    }


def _two_sites_and_their_average(spec: str) -> tuple[list[torch.nn.Module], torch.nn.Module]:
    parsed = parse_lora_spec(spec)
    sites = [apply_lora(_text_model(), parsed) for _ in range(2)]
    for seed, site in enumerate(sites):
        data = make_clinic_multimodal(64, seed=seed).select(["input_ids", "attention_mask"])
        train(site, data, epochs=2, lr=2e-2, device=torch.device("cpu"), seed=seed)
    average = apply_lora(_text_model(), parsed)
    stacked = zip(*(get_weights(site) for site in sites), strict=True)
    set_weights(average, [np.mean(arrays, axis=0) for arrays in stacked])
    return sites, average


def test_ffa_lora_trains_b_and_keeps_a_at_its_seeded_draw() -> None:
    model = apply_lora(_text_model(), parse_lora_spec("r=4,targets=q,v,freeze_a=true"))
    start = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}
    data = make_clinic_multimodal(64, seed=0).select(["input_ids", "attention_mask"])

    train(model, data, epochs=1, lr=1e-2, device=torch.device("cpu"))
    model.set_adapter("default")  # peft re-enables adapter grads here unless told otherwise

    after = dict(model.named_parameters())
    a_names = [n for n in start if "lora_A" in n]
    b_names = [n for n in start if "lora_B" in n]
    assert a_names and b_names
    assert all(torch.equal(start[n], after[n]) for n in a_names)
    assert all(not after[n].requires_grad for n in a_names)
    assert all(not torch.equal(start[n], after[n]) for n in b_names)


def test_ffa_lora_fedavg_is_the_average_of_the_sites_updates() -> None:
    sites, average = _two_sites_and_their_average("r=4,targets=q,v,freeze_a=true")

    expected = [_delta_weights(site) for site in sites]
    for name, delta in _delta_weights(average).items():
        torch.testing.assert_close(delta, (expected[0][name] + expected[1][name]) / 2)


def test_plain_lora_fedavg_is_not_the_average_of_the_sites_updates() -> None:
    sites, average = _two_sites_and_their_average("r=4,targets=q,v")

    expected = [_delta_weights(site) for site in sites]
    gaps = [
        float((delta - (expected[0][name] + expected[1][name]) / 2).abs().max())
        for name, delta in _delta_weights(average).items()
    ]
    assert max(gaps) > 1e-3
