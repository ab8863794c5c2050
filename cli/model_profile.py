"""`cohort model profile`: latency, throughput and memory per batch size; the batch to serve."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from cli import policy as policy_cli
from cli.common import console, friendly_errors
from cli.model_source import (
    Background,
    Device,
    Example,
    MaxLatency,
    ModelConfig,
    ModelSource,
    background_file,
    inputs_maker,
    open_predictor,
    probe,
    resolve_device,
)

if TYPE_CHECKING:
    from models.profiling import Profile

# torch and matplotlib are imported inside the functions: `cohort --help` stays fast.


def parse_batch_sizes(text: str) -> list[int]:
    """``"1,8,64"`` as sorted distinct positive integers; ValueError naming a bad item."""
    sizes = set()
    for item in text.split(","):
        item = item.strip()
        if not item.isdigit() or int(item) < 1:
            raise ValueError(f"--batch-sizes: {item!r} is not a positive integer")
        sizes.add(int(item))
    if not sizes:
        raise ValueError("--batch-sizes names no batch size")
    return sorted(sizes)


def run_profiles(
    model_dir: Path,
    *,
    device: str,
    int8: bool,
    batch_sizes: list[int],
    max_latency_ms: float,
    warmup: int,
    repeats: int,
    background: Path | None = None,
    example: Path | None = None,
    allow_model: list[str] | None = None,
    model_config: str = "",
) -> list[Profile]:
    """fp32 (and INT8 with ``int8``) profiles of an export or a spec, in that order."""
    from models.profiling import profile_predictor

    profiles = []
    for variant in ("fp32", "int8") if int8 else ("fp32",):
        predictor = open_predictor(
            model_dir,
            int8=variant == "int8",
            device=device,
            allow_model=allow_model,
            model_config=model_config,
        )
        background = background_file(model_dir, background, predictor.kind)
        make = inputs_maker(predictor, background, example)
        probe(predictor, make)
        profiles.append(
            profile_predictor(
                predictor,
                make,
                variant=variant,
                device=predictor.device,
                batch_sizes=batch_sizes,
                max_latency_ms=max_latency_ms,
                warmup=warmup,
                repeats=repeats,
            )
        )
    return profiles


def profile_table(profiles: list[Profile], model_dir: Path) -> Table:
    """Batch sizes down, each variant's latency and throughput across, a throughput bar."""
    first = profiles[0]
    table = Table(title=f"{model_dir}: latency and throughput per batch size ({first.device})")
    table.add_column("batch", justify="right")
    for p in profiles:
        for what in ("p50 ms", "p95 ms", "p99 ms", "rows/s"):
            table.add_column(f"{p.variant} {what}", justify="right")
    table.add_column("peak MiB", justify="right")
    table.add_column(f"{first.variant} rows/s", justify="left")
    top = max(t.throughput_rows_s for t in first.timings)
    for i, t in enumerate(first.timings):
        cells = [str(t.batch_size)]
        for p in profiles:
            pt = p.timings[i]
            mark = "*" if pt.batch_size == p.chosen_batch_size else ""
            cells += [
                f"{pt.p50_ms:.3f}",
                f"{pt.p95_ms:.3f}",
                f"{pt.p99_ms:.3f}",
                f"{pt.throughput_rows_s:,.0f}{mark}",
            ]
        cells.append(f"{max(p.timings[i].peak_memory_mib for p in profiles):.0f}")
        cells.append("█" * max(1, round(20 * t.throughput_rows_s / top)))
        table.add_row(*cells)
    chosen = "; ".join(
        f"{p.variant}: batch {p.chosen_batch_size}"
        + ("" if p.within_budget else " (none fits the budget: lowest p99)")
        for p in profiles
    )
    table.caption = (
        f"* chosen within p99 ≤ {first.max_latency_ms:g} ms — {chosen}. "
        f"{first.threads} torch threads; {first.timings[0].repeats}+ timed runs per batch after "
        f"warm-up; memory: {first.memory_note}."
    )
    return table


def plot_profiles(profiles: list[Profile], path: Path) -> None:
    """PNG: throughput and p99 latency against batch size, one line per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for p in profiles:
        sizes = [t.batch_size for t in p.timings]
        left.plot(sizes, [t.throughput_rows_s for t in p.timings], marker="o", label=p.variant)
        right.plot(sizes, [t.p99_ms for t in p.timings], marker="o", label=p.variant)
    right.axhline(profiles[0].max_latency_ms, color="grey", linestyle="--", label="budget")
    for axis, label in ((left, "rows / s"), (right, "p99 latency (ms)")):
        axis.set_xscale("log", base=2)
        axis.set_xlabel("batch size")
        axis.set_ylabel(label)
        axis.legend()
    figure.suptitle(f"{profiles[0].device}, {profiles[0].threads} threads")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)


@friendly_errors
def profile(
    model_dir: ModelSource,
    device: Device = "auto",
    int8: Annotated[bool, typer.Option(help="Profile INT8 beside fp32 (CPU only).")] = False,
    max_latency_ms: MaxLatency = 50.0,
    batch_sizes: Annotated[str, typer.Option(help="Comma-separated.")] = "1,2,4,8,16,32,64,128,256",
    warmup: Annotated[int, typer.Option(min=0)] = 5,
    repeats: Annotated[int, typer.Option(min=3)] = 30,
    threads: Annotated[int, typer.Option(help="torch threads (0: torch's default).")] = 0,
    background: Background = None,
    example: Example = None,
    plot: Annotated[Path | None, typer.Option(help="Write a PNG plot here.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON, not a table.")] = False,
    allow_model: policy_cli.AllowModel = None,
    model_config: ModelConfig = "",
) -> None:
    """Latency (p50/p95/p99), throughput and memory per batch size; the batch to serve."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    profiles = run_profiles(
        model_dir,
        device=resolve_device(device),
        int8=int8,
        batch_sizes=parse_batch_sizes(batch_sizes),
        max_latency_ms=max_latency_ms,
        warmup=warmup,
        repeats=repeats,
        background=background,
        example=example,
        allow_model=allow_model,
        model_config=model_config,
    )
    if plot is not None:
        plot_profiles(profiles, plot)
    if as_json:
        print(
            json.dumps({"model_dir": str(model_dir), "profiles": [p.to_json() for p in profiles]})
        )
        return
    console.print(profile_table(profiles, model_dir))
    if plot is not None:
        console.print(f"wrote the plot to [bold]{plot}[/]")
