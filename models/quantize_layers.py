"""Static INT8 per layer, and how much of a model's time INT8 can replace at all."""

from __future__ import annotations

import statistics
import time
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn


@contextmanager
def quiet_torch() -> Iterator[None]:
    """Silence torch's deprecation warnings for APIs it still ships and we rely on.

    torch.ao.quantization warns on every call that it moves to torchao, and torch.jit
    that it yields to torch.export (models/export.py says why the export still uses it).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*quantiz.*deprecated.*", category=UserWarning)
        warnings.filterwarnings("ignore", message=".*reduce_range.*", category=UserWarning)
        warnings.filterwarnings("ignore", message=".*TypedStorage.*", category=UserWarning)
        yield


class StaticLayer(nn.Module):
    """One float layer run in INT8: quantise its input, run it, dequantise its output.

    Eager-mode static quantisation needs these boundaries; placing them around each
    Linear (or each pure conv-BN-ReLU stack) quantises the layers that hold the
    arithmetic while attention, normalisation and activations between them stay in
    float, with no change to the model's code. Unlike dynamic quantisation, the input
    scale is calibrated once instead of measured on every call.
    """

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        from torch.ao.quantization import DeQuantStub, QuantStub

        self.quant = QuantStub()
        self.layer = layer
        self.dequant = DeQuantStub()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dequant(self.layer(self.quant(x)))


_CONV_STACK = (nn.Conv1d, nn.Conv2d, nn.BatchNorm1d, nn.BatchNorm2d, nn.ReLU)


def _is_conv_stack(module: nn.Module) -> bool:
    children = list(module.children())
    return (
        isinstance(module, nn.Sequential)
        and bool(children)
        and all(isinstance(c, _CONV_STACK) for c in children)
        and isinstance(children[0], nn.Conv1d | nn.Conv2d)
    )


def _conv_groups(stack: nn.Module) -> list[list[str]]:
    """conv-BN-ReLU, conv-BN and conv-ReLU runs in a Sequential, by child name."""
    kinds = [type(c) for c in stack.children()]
    groups = []
    for i, kind in enumerate(kinds):
        if kind not in (nn.Conv1d, nn.Conv2d):
            continue
        group = [i]
        if i + 1 < len(kinds) and kinds[i + 1] in (nn.BatchNorm1d, nn.BatchNorm2d):
            group.append(i + 1)
        if group[-1] + 1 < len(kinds) and kinds[group[-1] + 1] is nn.ReLU:
            group.append(group[-1] + 1)
        if len(group) > 1:
            groups.append([str(j) for j in group])
    return groups


def _wrap_layers(module: nn.Module) -> None:
    from torch.ao import quantization as tq

    for name, child in list(module.named_children()):
        if isinstance(child, nn.Linear):
            setattr(module, name, StaticLayer(child))
        elif _is_conv_stack(child):
            setattr(module, name, StaticLayer(tq.fuse_modules(child, _conv_groups(child))))
        else:
            _wrap_layers(child)


def quantize_static_layers(
    model: nn.Module, calibration: Iterable[dict[str, torch.Tensor]]
) -> nn.Module:
    """Static INT8 for every Linear and pure conv-BN-ReLU stack; the rest stays float.

    Embedding tables are quantised weight-only, per row, and recurrent layers
    dynamically, as in :func:`quantize_dynamic`.
    Activation ranges are observed on ``calibration`` batches (histogram observers of
    the engine's default qconfig).
    """
    from torch.ao import quantization as tq

    with quiet_torch():
        _wrap_layers(model)
        qconfig = tq.get_default_qconfig(torch.backends.quantized.engine)
        model.qconfig = None  # type: ignore[assignment]
        for module in model.modules():
            if isinstance(module, StaticLayer):
                module.qconfig = qconfig
        tq.prepare(model.eval(), inplace=True)
        with torch.no_grad():
            for inputs in calibration:
                model(**inputs)
        tq.convert(model, inplace=True)
        rest: dict[type[nn.Module], Any] = {
            nn.Embedding: tq.float_qparams_weight_only_qconfig,
            nn.LSTM: tq.default_dynamic_qconfig,
            nn.GRU: tq.default_dynamic_qconfig,
        }
        return tq.quantize_dynamic(model, rest, dtype=torch.qint8)


QUANTIZED_KINDS: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.LSTM, nn.GRU)


@torch.no_grad()
def quantizable_share(
    model: nn.Module, inputs: dict[str, torch.Tensor], repeats: int = 10
) -> float:
    """Fraction of an fp32 forward pass spent inside layers INT8 kernels replace.

    Linear, convolution and recurrent layers are what torch.ao quantises; attention
    (``scaled_dot_product_attention``), normalisation, activations, embeddings lookups
    and a spectrogram stay in float. By Amdahl's law INT8 cannot be faster than
    ``1 / (1 - share)`` even with free matmuls, which is the measured reason a model
    misses a speed-up target. Timed with forward hooks, median over ``repeats`` passes.
    """
    model.eval()
    spent: list[float] = []
    started: dict[int, float] = {}

    def before(module: nn.Module, args: Any) -> None:
        started[id(module)] = time.perf_counter()

    def after(module: nn.Module, args: Any, out: Any) -> None:
        spent.append(time.perf_counter() - started.pop(id(module)))

    handles = []
    for module in model.modules():
        if isinstance(module, QUANTIZED_KINDS):
            handles += [
                module.register_forward_pre_hook(before),
                module.register_forward_hook(after),
            ]
    shares = []
    try:
        for i in range(repeats + 2):
            spent.clear()
            start = time.perf_counter()
            model(**inputs)
            total = time.perf_counter() - start
            if i >= 2:
                shares.append(sum(spent) / total)
    finally:
        for handle in handles:
            handle.remove()
    return statistics.median(shares)
