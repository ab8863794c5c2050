"""INT8 export with torch.ao.quantization: static for conv nets, static per layer otherwise."""

from __future__ import annotations

import copy
import io
import itertools
import json
import statistics
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from models.quantize_layers import quantizable_share, quantize_static_layers, quiet_torch
from models.training import evaluate, logits_of

MODEL_FILE = "model_int8.pt"
SKELETON_FILE = "skeleton.pt"
REPORT_FILE = "int8_report.json"
# Below this fp32/INT8 time ratio a speed-up is within timing noise: not called faster.
FASTER_AT_LEAST = 1.1


class QuantizedInputs(nn.Module):
    """Quantise the named float inputs, run the model, dequantise the logits.

    Eager-mode static quantisation needs explicit quantise/dequantise points; this
    wrapper adds them around a model called with keyword tensors.
    """

    def __init__(self, model: nn.Module, names: list[str]) -> None:
        super().__init__()
        from torch.ao.quantization import DeQuantStub, QuantStub

        self.model = model
        self.quant = nn.ModuleDict({name: QuantStub() for name in names})
        self.dequant = DeQuantStub()

    def forward(self, **inputs: torch.Tensor) -> torch.Tensor:
        for name, stub in self.quant.items():
            inputs[name] = stub(inputs[name])
        return self.dequant(logits_of(self.model(**inputs)))


def _float_copy(model: nn.Module) -> nn.Module:
    from models.params import (
        is_peft_model,  # never imports peft for a model without adapters
        unwrap,
    )

    model = copy.deepcopy(unwrap(model)).cpu().eval()
    if is_peft_model(model):
        # Adapters are folded into the base weights: one plain model to quantise.
        model = model.merge_and_unload()  # type: ignore[operator]
    return model.eval()


def _first_batch(dataset: Dataset[Any], batch_size: int) -> dict[str, torch.Tensor]:
    inputs, _ = next(iter(DataLoader(dataset, batch_size=batch_size)))
    return dict(inputs)


def quantize_static(model: nn.Module, calibration: Iterable[dict[str, torch.Tensor]]) -> nn.Module:
    """Fuse conv-BN-ReLU, observe activations on ``calibration`` batches, convert to INT8.

    Needs a model with ``fusion_groups()`` (``ImageCNN``); every float input (the
    image) is quantised on entry, so activation ranges come from real inputs.
    """
    from torch.ao import quantization as tq

    batches = iter(calibration)
    first = next(batches)
    float_inputs = [k for k, v in first.items() if v.is_floating_point()]
    with quiet_torch():
        fused = tq.fuse_modules(model, model.fusion_groups())  # type: ignore[operator]
        wrapped = QuantizedInputs(fused, float_inputs).eval()
        engine = torch.backends.quantized.engine
        wrapped.qconfig = tq.get_default_qconfig(engine)
        tq.prepare(wrapped, inplace=True)
        with torch.no_grad():
            for inputs in itertools.chain([first], batches):
                wrapped(**inputs)
        tq.convert(wrapped, inplace=True)
    return wrapped


def _calibration_batches(
    dataset: Dataset[Any], batch_size: int, batches: int
) -> Iterator[dict[str, torch.Tensor]]:
    loader = DataLoader(dataset, batch_size=batch_size)
    for inputs, _ in itertools.islice(loader, batches):
        yield dict(inputs)


def quantize_dynamic(model: nn.Module) -> nn.Module:
    """INT8 Linear/LSTM/GRU weights (activations quantised per batch) and INT8 embeddings.

    Embedding tables are quantised weight-only, per row: in a small text model they are
    a large share of the bytes, and a lookup needs no activation quantisation.
    """
    from torch.ao import quantization as tq

    spec: dict[type[nn.Module], Any] = {
        nn.Linear: tq.default_dynamic_qconfig,
        nn.LSTM: tq.default_dynamic_qconfig,
        nn.GRU: tq.default_dynamic_qconfig,
        nn.Embedding: tq.float_qparams_weight_only_qconfig,
    }
    with quiet_torch():
        return tq.quantize_dynamic(model, spec, dtype=torch.qint8)


def serialized_size(model: nn.Module) -> int:
    """Bytes of ``torch.save(model.state_dict())``: what a site would store or ship."""
    buffer = io.BytesIO()
    with quiet_torch():
        torch.save(model.state_dict(), buffer)
    return buffer.tell()


@torch.no_grad()
def cpu_latency(model: nn.Module, inputs: dict[str, torch.Tensor], repeats: int = 20) -> float:
    """Median seconds of one forward pass on CPU (after three warm-up passes)."""
    model.eval()
    timings = []
    for i in range(repeats + 3):
        start = time.perf_counter()
        model(**inputs)
        if i >= 3:
            timings.append(time.perf_counter() - start)
    return statistics.median(timings)


@torch.no_grad()
def paired_latency(
    models: dict[str, nn.Module], inputs: dict[str, torch.Tensor], repeats: int = 20
) -> dict[str, float]:
    """Median seconds of one forward pass of each model, timed in turns on the same batch.

    Interleaving puts every model under the same machine load (on a shared machine a
    burst from another process then slows all of them, not whichever ran last), which is
    what a ratio between them needs.
    """
    for model in models.values():
        model.eval()
        for _ in range(3):
            model(**inputs)
    timings: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(repeats):
        for name, model in models.items():
            start = time.perf_counter()
            model(**inputs)
            timings[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in timings.items()}


def export_int8(
    model: nn.Module,
    *,
    calibration: Dataset[Any],
    evaluation: Dataset[Any],
    out_dir: Path,
    batch_size: int = 64,
    repeats: int = 20,
    on_quantized: Callable[[nn.Module], None] | None = None,
) -> dict[str, Any]:
    """Quantise a trained model to INT8, save it and report size, latency and accuracy.

    Conv nets with ``fusion_groups()`` are quantised statically as a whole (weights and
    activations, calibrated on ``calibration``). Any other model is quantised two ways,
    statically per layer (:func:`quantize_static_layers`) and dynamically, and the
    faster on this machine's CPU that loses at most one point of accuracy is kept
    (``candidates_ms`` records both).
    LoRA adapters are merged first. Both models are timed on the same CPU batch of
    ``batch_size`` evaluation rows. ``on_quantized`` receives the INT8 module (to save
    it in another form too) without a reload from disk.

    Returns
    -------
    dict
        ``mode``, ``size_bytes_fp32``, ``size_bytes_int8``, ``size_ratio``,
        ``latency_ms_fp32``, ``latency_ms_int8``, ``speedup`` (fp32 time / INT8 time),
        ``faster`` and ``speed_verdict`` (whether INT8 is really faster, in words),
        ``quantizable_share`` and ``speedup_bound`` (the fp32 time spent in layers INT8
        replaces, and the Amdahl bound it sets; see :func:`quantizable_share`),
        ``accuracy_fp32``, ``accuracy_int8`` and ``accuracy_delta_points`` (INT8 minus
        fp32, in points: negative when INT8 loses accuracy), also written to
        ``out_dir/int8_report.json`` next to ``model_int8.pt``. Printed tables show
        these same numbers; they never recompute them.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fp32 = _float_copy(model)
    static = callable(getattr(fp32, "fusion_groups", None))
    cpu = torch.device("cpu")
    batch = _first_batch(evaluation, batch_size)
    example = {k: v[:1] for k, v in batch.items()}
    candidates: dict[str, nn.Module] = {}
    if static:
        calibrate = _calibration_batches(calibration, batch_size, 8)
        candidates["static"] = quantize_static(copy.deepcopy(fp32), calibrate)
    else:
        calibrate = _calibration_batches(calibration, batch_size, 8)
        candidates["static_layers"] = quantize_static_layers(copy.deepcopy(fp32), calibrate)
        candidates["dynamic"] = quantize_dynamic(copy.deepcopy(fp32))
    acc_fp32 = evaluate(fp32, evaluation, device=cpu)["accuracy"]
    accuracy = {m: evaluate(q, evaluation, device=cpu)["accuracy"] for m, q in candidates.items()}
    latency = paired_latency({"fp32": fp32, **candidates}, batch, repeats)
    lat_fp32 = latency.pop("fp32")
    # The fastest INT8 form that keeps accuracy within a point; else the most accurate.
    keeps = [m for m in candidates if accuracy[m] >= acc_fp32 - 0.01]
    mode = min(keeps, key=latency.__getitem__) if keeps else max(accuracy, key=accuracy.__getitem__)
    int8, acc_int8, lat_int8 = candidates[mode], accuracy[mode], latency[mode]
    size_fp32, size_int8 = serialized_size(fp32), serialized_size(int8)
    share = quantizable_share(fp32, batch)
    report: dict[str, Any] = {
        "mode": mode,
        "candidates_ms": {m: 1e3 * t for m, t in latency.items()},
        "threads": torch.get_num_threads(),
        "engine": torch.backends.quantized.engine,
        "size_bytes_fp32": size_fp32,
        "size_bytes_int8": size_int8,
        "size_ratio": size_fp32 / size_int8,
        "latency_ms_fp32": 1e3 * lat_fp32,
        "latency_ms_int8": 1e3 * lat_int8,
        "speedup": lat_fp32 / lat_int8,
        "faster": lat_fp32 / lat_int8 >= FASTER_AT_LEAST,
        "speed_verdict": speed_verdict(lat_fp32 / lat_int8),
        "quantizable_share": share,
        "speedup_bound": 1.0 / max(1.0 - share, 1e-9),
        "latency_batch": int(next(iter(batch.values())).shape[0]),
        "accuracy_fp32": acc_fp32,
        "accuracy_int8": acc_int8,
        "accuracy_delta_points": 100.0 * (acc_int8 - acc_fp32),
        "inputs": {
            k: {"shape": list(v.shape[1:]), "dtype": str(v.dtype)} for k, v in example.items()
        },
    }
    _save(fp32, int8, out_dir)
    if on_quantized is not None:
        on_quantized(int8)
    (out_dir / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
    return report


def speed_verdict(speedup: float) -> str:
    """Say plainly whether INT8 is worth it for speed (``speedup`` = fp32 time / INT8 time).

    Dynamic quantisation re-quantises activations on every call; for a small MLP that
    overhead outweighs the cheaper matmuls, so INT8 can be slower than fp32.
    """
    if speedup >= FASTER_AT_LEAST:
        return f"INT8 is {speedup:.2f}x faster than fp32"
    if speedup >= 1.0:
        return f"INT8 is not meaningfully faster than fp32 ({speedup:.2f}x, within noise)"
    return (
        f"INT8 is SLOWER than fp32 ({speedup:.2f}x): per-call quantisation overhead "
        "outweighs the cheaper arithmetic for a model this small; deploy fp32 for speed"
    )


def _save(fp32: nn.Module, int8: nn.Module, out_dir: Path) -> None:
    # A pickled quantised module does not survive torch.load in current torch (its
    # packed-parameter modules lose their children), so the export is the INT8 state
    # dict plus a weightless skeleton of the float model (parameters on the meta
    # device, a few KB); load_int8 re-quantises the skeleton and loads the state.
    with quiet_torch():
        torch.save(copy.deepcopy(fp32).to("meta"), out_dir / SKELETON_FILE)
        torch.save(int8.state_dict(), out_dir / MODEL_FILE)


def load_int8(out_dir: Path) -> nn.Module:
    """Load the INT8 model saved by :func:`export_int8` (CPU; call as ``model(**inputs)``).

    The skeleton file is a pickled module, so only load exports you made or trust; the
    INT8 weights themselves load with ``weights_only=True``.
    """
    out_dir = Path(out_dir)
    if not (out_dir / MODEL_FILE).is_file():
        raise FileNotFoundError(f"no INT8 model in {out_dir}; run export_int8 first")
    report = load_report(out_dir)
    skeleton: nn.Module = torch.load(
        out_dir / SKELETON_FILE, map_location="meta", weights_only=False
    )
    model = skeleton.to_empty(device="cpu")
    with torch.no_grad():
        # Finite placeholder values so the re-quantisation pass below runs cleanly;
        # every one of them is overwritten by the saved INT8 state.
        for name, tensor in itertools.chain(model.named_parameters(), model.named_buffers()):
            if tensor.is_floating_point():
                tensor.fill_(1.0 if name.endswith("running_var") else 0.0)
            else:
                tensor.zero_()
    if report["mode"] in ("static", "static_layers"):
        example = {
            name: torch.zeros(
                [1, *spec["shape"]], dtype=getattr(torch, spec["dtype"].split(".")[-1])
            )
            for name, spec in report["inputs"].items()
        }
        quantize = quantize_static if report["mode"] == "static" else quantize_static_layers
        int8 = quantize(model, [example])
    else:
        int8 = quantize_dynamic(model)
    with quiet_torch():
        state = torch.load(out_dir / MODEL_FILE, map_location="cpu", weights_only=True)
        int8.load_state_dict(state)
    return int8.eval()


def load_report(out_dir: Path) -> dict[str, Any]:
    """The JSON report written next to the INT8 model."""
    report: dict[str, Any] = json.loads((Path(out_dir) / REPORT_FILE).read_text())
    return report
