"""`cohort model profile` and `cohort model serve`: the federated model in use at a site."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from cli import policy as policy_cli
from cli.common import console, fail, friendly_errors, parse_json_option

if TYPE_CHECKING:
    import numpy as np

    from models.profiling import Profile
    from models.serving import Predictor

# torch, fastapi and uvicorn are imported inside the commands: `cohort --help` stays fast.

ModelDir = Annotated[Path, typer.Argument(help="An export folder (holds model.json).")]
ModelSource = Annotated[
    Path,
    typer.Argument(
        help="An export folder (holds model.json), or a model spec to profile as it is: a "
        "registry name, hf:/local/dir or package.module:factory (with --allow-model)."
    ),
]
ModelConfig = Annotated[
    str, typer.Option(help="JSON kwargs for a model spec (not for an export folder).")
]
Device = Annotated[str, typer.Option(help="cpu, cuda, or auto (CUDA when present).")]
Background = Annotated[
    Path | None,
    typer.Option(
        help="This site's own rows: CSV (columns by name) for tabular models, .npz of named "
        "inputs otherwise; timing rows and SHAP background. Default: background.csv or "
        "background.npz in MODEL_DIR, when the site put one there."
    ),
]
Example = Annotated[
    Path | None, typer.Option(help=".npz of named inputs, for models that are not tabular.")
]
MaxLatency = Annotated[float, typer.Option(help="Latency budget (p99, ms) for the batch choice.")]


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


def resolve_device(device: str) -> str:
    """``auto`` is CUDA when present, else the CPU (:func:`models.device.select_device`);
    the predictor then runs under bf16 autocast on CUDA (:func:`models.device.autocast_context`).

    Raises
    ------
    ValueError
        For a device that is not cpu/cuda/auto, or CUDA asked for on a machine without it.
    """
    from models.device import select_device

    if device != "auto" and device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ValueError(f"--device {device!r}: use cpu, cuda or auto")
    return str(select_device(None if device == "auto" else device))


def read_background(path: Path, features: tuple[str, ...], limit: int = 100) -> np.ndarray:
    """Up to ``limit`` of the site's rows, in the model's feature order (extra columns ignored)."""
    import numpy as np
    import pandas as pd

    from models.export import column_order

    if not path.is_file():
        raise ValueError(f"no CSV at {path}")
    frame = pd.read_csv(path)
    order = column_order([str(c) for c in frame.columns], features)
    rows = frame.iloc[:, order]
    for name in features:
        if not pd.api.types.is_numeric_dtype(rows[name]):
            raise ValueError(f"column {name!r} in {path} is not numeric")
    x = rows.to_numpy(dtype=np.float32)
    if not np.isfinite(x).all():
        raise ValueError(f"{path} holds a missing or infinite value")
    if len(x) == 0:
        raise ValueError(f"{path} holds no rows")
    if len(x) > limit:
        x = x[np.random.default_rng(0).choice(len(x), size=limit, replace=False)]
    return x


def read_named_background(path: Path, names: tuple[str, ...], limit: int = 64) -> dict[str, Any]:
    """Up to ``limit`` of the site's rows of each named input from an ``.npz`` (a site
    dataset file: named inputs and a label, which is ignored)."""
    import numpy as np

    if not path.is_file():
        raise ValueError(f"no .npz at {path}")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {k: archive[k] for k in archive.files if k in names}
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path} is not a readable .npz: {str(exc).splitlines()[0]}") from exc
    if not arrays:
        raise ValueError(f"{path} holds none of the model's inputs ({', '.join(names)})")
    counts = {len(a) for a in arrays.values()}
    if len(counts) != 1 or 0 in counts:
        raise ValueError(f"{path}: every input needs the same number of rows, at least one")
    count = counts.pop()
    if count > limit:
        index = np.sort(np.random.default_rng(0).choice(count, size=limit, replace=False))
        arrays = {k: a[index] for k, a in arrays.items()}
    return arrays


def background_file(model_dir: Path, given: Path | None, kind: str) -> Path | None:
    """``--background``, else the site's rows kept in the export folder, else None."""
    if given is not None or not model_dir.is_dir():
        return given
    default = model_dir / ("background.csv" if kind == "tabular" else "background.npz")
    return default if default.is_file() else None


def site_rows(predictor: Predictor, path: Path) -> dict[str, Any]:
    """The site's background rows as the model's inputs (``{"x": rows}`` for tabular)."""
    if predictor.kind == "tabular":
        return {"x": read_background(path, predictor.feature_names)}
    return read_named_background(path, predictor.input_names)


def inputs_maker(predictor: Predictor, background: Path | None, example: Path | None) -> Any:
    """Batches of the model's own kind of input for timing."""
    import numpy as np

    from models.profiling import example_inputs, synthetic_inputs

    if predictor.kind == "tabular":
        rows = read_background(background, predictor.feature_names) if background else None
        return synthetic_inputs(len(predictor.feature_names), rows)
    source = example or background
    if source is None:
        raise ValueError(
            f"this model takes named inputs ({', '.join(predictor.input_names)}): "
            "pass --example FILE.npz holding a few rows of each"
        )
    with np.load(source) as archive:
        return example_inputs({k: archive[k] for k in archive.files if k in predictor.input_names})


def is_spec(source: Path) -> bool:
    """True when ``source`` names a model spec rather than an export folder."""
    from client.policy import is_code_spec
    from models.registry import available_models

    name = str(source)
    return not source.is_dir() and (name in available_models() or is_code_spec(name))


def trusted_specs(source: Path, allow_model: list[str] | None) -> tuple[str, ...]:
    """The code specs this site lets run, after checking the model against its policy.

    An export's manifest names the model the run (the coordinator) chose; a spec is the
    operator's. Either way a spec that imports code (``hf:``, ``module:factory``) is built
    only when ``--allow-model`` names it, as at training time.

    Raises
    ------
    ValueError
        ``refused (policy): …`` naming the spec and the flag that allows it.
    """
    from client.policy import TaskRefused, check_model
    from models.export import read_manifest
    from models.registry import available_models

    policy = policy_cli.build_policy(allow_model, False, 3, None, False)
    if is_spec(source):
        name = str(source)
    else:
        name = str(read_manifest(source).get("model", {}).get("name", ""))
    try:
        check_model(policy, name, tuple(available_models()))
    except TaskRefused as refusal:
        raise ValueError(f"refused ({refusal.code}): {refusal.reason}") from None
    return tuple(policy.extra_model_specs)


def open_predictor(
    source: Path,
    *,
    int8: bool,
    device: str,
    allow_model: list[str] | None = None,
    model_config: str = "",
) -> Predictor:
    """An export folder, or a spec (registry name, ``hf:/dir``, ``module:factory``) as is."""
    from models.serving import load_predictor, spec_predictor

    specs = trusted_specs(source, allow_model)
    config = parse_json_option(model_config, "--model-config")
    if not is_spec(source):
        if config:
            raise ValueError("--model-config is for a model spec; an export names its own")
        return load_predictor(source, int8=int8, device=device, trusted_specs=specs)
    return spec_predictor(str(source), config, int8=int8, device=device, trusted_specs=specs)


def probe(predictor: Predictor, make: Any) -> None:
    """One call on a row of the inputs: a model that cannot take them is a one-line error."""
    try:
        predictor(make(1))
    except (RuntimeError, TypeError, IndexError) as exc:
        raise ValueError(
            f"the model cannot run on these inputs ({', '.join(sorted(make(1)))}): "
            f"{str(exc).splitlines()[0]}"
        ) from None


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


def batching_defaults(
    predictor: Predictor, background: Path | None, example: Path | None, max_latency_ms: float
) -> tuple[int, float, str]:
    """Max batch and max wait from a quick profile (or fixed defaults when none can run)."""
    from models.profiling import profile_predictor, serving_defaults

    try:
        make = inputs_maker(predictor, background, example)
    except ValueError:
        return 32, 2.0, "fixed defaults (no --example to profile a named-input model)"
    quick = profile_predictor(
        predictor,
        make,
        variant="int8" if predictor.int8 else "fp32",
        device=predictor.device,
        batch_sizes=(1, 4, 16, 32, 64, 128),
        max_latency_ms=max_latency_ms,
        warmup=3,
        repeats=15,
    )
    size, wait = serving_defaults(quick)
    return size, wait, f"quick profile (p99 ≤ {max_latency_ms:g} ms)"


@friendly_errors
def serve(
    model_dir: ModelDir,
    port: Annotated[int, typer.Option(help="TCP port (0: any free one).")] = 8080,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    device: Device = "auto",
    int8: Annotated[bool, typer.Option(help="Serve the INT8 model (CPU).")] = False,
    max_batch_size: Annotated[int | None, typer.Option(help="Default: from a profile.")] = None,
    max_wait_ms: Annotated[float | None, typer.Option(help="Default: from a profile.")] = None,
    max_latency_ms: MaxLatency = 50.0,
    max_queue: Annotated[int, typer.Option(min=1, help="Waiting requests before 503.")] = 1024,
    timeout_s: Annotated[float, typer.Option(help="A request's deadline (504 past it).")] = 10.0,
    max_body_bytes: Annotated[int, typer.Option(min=1, help="Larger bodies get 413.")] = 1 << 20,
    max_rows: Annotated[int, typer.Option(min=1, help="Rows per request.")] = 1024,
    token: Annotated[
        str, typer.Option(envvar="COHORT_SERVE_TOKEN", help="Require Authorization: Bearer TOKEN.")
    ] = "",
    tls_cert: Annotated[Path | None, typer.Option(help="PEM certificate: serve HTTPS.")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="PEM private key of --tls-cert.")] = None,
    background: Background = None,
    example: Example = None,
    report: Annotated[str, typer.Option(help="Where the run's audit report is (for /model).")] = "",
    allow_model: policy_cli.AllowModel = None,
) -> None:
    """Serve the model over HTTP with dynamic batching, metrics, provenance and SHAP."""
    import uvicorn

    from models.serving_http import ServeConfig, create_app

    if (tls_cert is None) != (tls_key is None):
        fail("--tls-cert and --tls-key go together")
    for path in (tls_cert, tls_key):
        if path is not None and not path.is_file():
            fail(f"no file at {path}")
    if host not in ("127.0.0.1", "localhost", "::1") and not (token and tls_cert):
        # Scores of patients or applicants leave the site only to callers it authenticated.
        fail(
            f"--host {host} serves beyond this machine: pass --token and --tls-cert/--tls-key, "
            "or keep the default 127.0.0.1 behind your own proxy"
        )
    if not model_dir.is_dir():
        fail(f"{model_dir} is not an export folder: serve an export (`cohort model export`)")
    predictor = open_predictor(
        model_dir, int8=int8, device=resolve_device(device), allow_model=allow_model
    )
    background = background_file(model_dir, background, predictor.kind)
    explainer = None
    if background is not None:
        from explain.served import for_predictor

        explainer = for_predictor(predictor, site_rows(predictor, background))
    source = "given"
    if max_batch_size is None or max_wait_ms is None:
        size, wait, source = batching_defaults(predictor, background, example, max_latency_ms)
        max_batch_size = max_batch_size or size
        max_wait_ms = wait if max_wait_ms is None else max_wait_ms
    config = ServeConfig(
        max_batch_size=max_batch_size,
        max_wait_ms=max_wait_ms,
        max_queue=max_queue,
        timeout_s=timeout_s,
        max_body_bytes=max_body_bytes,
        max_rows=max_rows,
        token=token,
        report=report,
        explainer=explainer,
    )
    scheme = "https" if tls_cert else "http"
    console.print(
        f"serving {model_dir} ({predictor.kind}, {predictor.device}"
        f"{', INT8' if int8 else ''}) at {scheme}://{host}:{port} — batches of up to "
        f"{max_batch_size} rows, {max_wait_ms:.2f} ms max wait ({source})"
    )
    uvicorn.run(
        create_app(predictor, config),
        host=host,
        port=port,
        ssl_certfile=str(tls_cert) if tls_cert else None,
        ssl_keyfile=str(tls_key) if tls_key else None,
        log_level="warning",
    )


def register(app: typer.Typer) -> None:
    """Add `profile` and `serve` to the `cohort model` app."""
    app.command("profile")(profile)
    app.command("serve")(serve)
