"""Pick the compute device and the mixed-precision context that goes with it."""

from __future__ import annotations

import contextlib

import torch


def select_device(prefer: str | None = None) -> torch.device:
    """Return the device to train on: the preferred one, else CUDA when present, else CPU.

    Institutions run the client on whatever hardware they own, so the default is
    "use the GPU if there is one" and an operator can still force ``"cpu"``.

    Parameters
    ----------
    prefer
        ``"cpu"``, ``"cuda"``, ``"cuda:1"``... or ``None`` for automatic choice.

    Raises
    ------
    ValueError
        If a CUDA device is requested on a machine without CUDA.
    """
    if prefer is not None:
        device = torch.device(prefer)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {prefer!r} requested but CUDA is not available; use 'cpu'")
        return device
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def autocast_context(device: torch.device) -> contextlib.AbstractContextManager[None]:
    """Return bf16 autocast on CUDA and a no-op elsewhere.

    bf16 keeps fp32's exponent range, so no loss scaling is needed; on CPU autocast
    gives little speed and changes numerics, so CPU training stays in fp32.
    """
    if device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def move_inputs(inputs: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """Move every tensor of a model's keyword inputs to ``device`` (non-blocking on CUDA)."""
    non_blocking = device.type == "cuda"
    return {k: v.to(device, non_blocking=non_blocking) for k, v in inputs.items()}
