"""The parameters a site exchanges, as numpy arrays in a fixed order, and the frozen-base hash."""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

NDArrays = list[np.ndarray]


def unwrap(model: nn.Module) -> nn.Module:
    """Strip a DistributedDataParallel wrapper so names do not depend on how a site trains."""
    from torch.nn.parallel import DistributedDataParallel

    return model.module if isinstance(model, DistributedDataParallel) else model


def is_peft_model(model: nn.Module) -> bool:
    """True when ``model`` carries peft adapters (then only the adapters are exchanged).

    A ``PeftModel`` exists only once peft is imported; until then no model can be one,
    and importing peft (it pulls in transformers: seconds of CPU) just to learn that would
    cost every plain model's first round.
    """
    peft = sys.modules.get("peft")
    if peft is None:
        return False
    return isinstance(unwrap(model), peft.PeftModel)


def exchanged_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Return the exchanged tensors by name, in state-dict order.

    For a peft model this is the adapter state (plus any ``modules_to_save`` head):
    the base is frozen and identical at every site, so sending it would waste
    bandwidth and Paillier encryptions. Otherwise it is every floating-point entry of
    the state dict, buffers included (BatchNorm running statistics must be averaged
    too); integer buffers such as ``num_batches_tracked`` are counters, not weights.
    """
    model = unwrap(model)
    if is_peft_model(model):
        from peft import get_peft_model_state_dict

        frozen = _frozen_adapter_keys(model)
        return {k: v for k, v in get_peft_model_state_dict(model).items() if k not in frozen}
    return {k: v for k, v in model.state_dict().items() if torch.is_floating_point(v)}


def _frozen_adapter_keys(model: nn.Module) -> set[str]:
    """Adapter-state keys of adapter tensors that do not train (FFA-LoRA's ``A``).

    They stay at their seeded draw, identical at every site (the base hash covers them),
    so exchanging them would send zeros. peft's state-dict keys drop the adapter name
    from the parameter names (``…lora_A.default.weight`` → ``…lora_A.weight``).
    """
    adapters = list(getattr(model, "peft_config", {}) or ["default"])
    keys = set()
    for name, param in model.named_parameters():
        if param.requires_grad or ".lora_" not in name:
            continue
        for adapter in adapters:
            name = name.replace(f".{adapter}.", ".").removesuffix(f".{adapter}")
        keys.add(name)
    return keys


def weight_names(model: nn.Module) -> list[str]:
    """Names of the exchanged tensors, in the order of :func:`get_weights`."""
    return list(exchanged_state(model))


def get_weights(model: nn.Module) -> NDArrays:
    """Copy the exchanged tensors to numpy (bf16/fp16 widened to float32)."""
    out: NDArrays = []
    for tensor in exchanged_state(model).values():
        t = tensor.detach().cpu()
        if t.dtype in (torch.bfloat16, torch.float16):
            t = t.float()
        out.append(t.numpy().copy())
    return out


def check_shapes(state: Mapping[str, torch.Tensor], weights: Sequence[np.ndarray]) -> None:
    """Refuse weights whose count or any shape differs from ``state``'s, naming the first.

    Raises
    ------
    ValueError
        On the first mismatch: a silent partial load would train (or serve) garbage.
    """
    if len(weights) != len(state):
        raise ValueError(f"expected {len(state)} weight arrays, got {len(weights)}")
    for (name, tensor), array in zip(state.items(), weights, strict=True):
        if tuple(np.shape(array)) != tuple(tensor.shape):
            raise ValueError(
                f"weight {name!r} has shape {tuple(tensor.shape)} but the array given has "
                f"shape {tuple(np.shape(array))}"
            )


def set_weights(model: nn.Module, weights: NDArrays) -> None:
    """Load exchanged tensors produced by :func:`get_weights` into ``model``.

    Raises
    ------
    ValueError
        If the number of arrays or the shape of any array differs from the model's,
        naming the first mismatch: a silent partial load would train on garbage.
    """
    model = unwrap(model)
    state = exchanged_state(model)
    check_shapes(state, weights)
    if is_peft_model(model):
        from peft import set_peft_model_state_dict

        new_state = {
            name: torch.as_tensor(np.asarray(array)).to(dtype=tensor.dtype)
            for (name, tensor), array in zip(state.items(), weights, strict=True)
        }
        result = set_peft_model_state_dict(model, new_state)
        unexpected = getattr(result, "unexpected_keys", [])
        if unexpected:
            raise ValueError(f"adapter weights not found in the model: {unexpected[:3]}")
        return
    with torch.no_grad():
        for tensor, array in zip(state.values(), weights, strict=True):
            tensor.copy_(torch.as_tensor(np.asarray(array)))


def frozen_parameters(model: nn.Module) -> dict[str, torch.Tensor]:
    """Parameters that are not exchanged: the frozen base of a peft model, else none."""
    model = unwrap(model)
    if not is_peft_model(model):
        return {}
    return {n: p for n, p in model.named_parameters() if not p.requires_grad}


def base_model_hash(model: nn.Module) -> str:
    """sha256 over the architecture and the frozen (non-exchanged) parameters.

    With LoRA only adapters travel, so every site must start from bit-identical base
    weights or the averaged adapters mean nothing. Sites compare this digest before
    joining a run. The digest covers each state-dict entry's name, shape and dtype (the
    architecture) and the values of the frozen parameters; mutable buffers such as
    BatchNorm statistics are left out because local training changes them.
    """
    model = unwrap(model)
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}\n".encode())
    for name, param in frozen_parameters(model).items():
        digest.update(name.encode())
        digest.update(
            param.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        )
    return digest.hexdigest()
