"""`cohort model serve` and `cohort model predict`: the federated model in use at a site."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cli import policy as policy_cli
from cli.common import console, fail, friendly_errors
from cli.model_source import (
    Background,
    Device,
    Example,
    MaxLatency,
    ModelDir,
    background_file,
    inputs_maker,
    open_predictor,
    resolve_device,
    site_rows,
)

if TYPE_CHECKING:
    from models.predictor import Predictor

# torch, fastapi and uvicorn are imported inside the commands: `cohort --help` stays fast.


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


@friendly_errors
def predict(
    model_dir: Annotated[Path, typer.Argument(help="An export folder (holds model.json).")],
    data: Annotated[Path, typer.Argument(help="CSV of raw rows; columns matched by name.")],
    out: Annotated[
        Path | None, typer.Option(help="Write the probabilities here (CSV) instead of stdout.")
    ] = None,
    int8: Annotated[bool, typer.Option(help="Score with model_int8.ts.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON, not CSV.")] = False,
) -> None:
    """Score raw CSV rows with an exported model: one probability column per class.

    Columns are matched by name (order is irrelevant, extra columns such as the label
    are ignored); the export applies the sites' preprocessing itself.
    """
    rows = score_csv(model_dir, data, int8=int8)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        rows.to_csv(out, index=False)
    if as_json:
        print(json.dumps({"classes": list(rows.columns[:-1]), "rows": rows.to_dict("records")}))
    elif out is None:
        print(rows.to_csv(index=False), end="")
    else:
        console.print(f"wrote {len(rows)} rows of probabilities to [bold]{out}[/]")


def score_csv(model_dir: Path, data: Path, *, int8: bool = False) -> Any:
    """Probabilities (one column per class name) and the predicted class for each CSV row.

    Raises
    ------
    ValueError
        A missing or non-numeric column, an empty or missing value, a missing file: one
        line naming it (``friendly_errors`` turns it into exit code 2).
    """
    import pandas as pd

    from models.export import load_model

    exported = load_model(model_dir, int8=int8)
    if not data.is_file():
        raise ValueError(f"no CSV at {data}")
    try:
        frame = pd.read_csv(data)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ValueError(f"{data} is not a readable CSV: {str(exc).splitlines()[0]}") from exc
    columns = [str(c) for c in frame.columns]
    needed = exported.feature_names
    from models.export import column_order

    order = column_order(columns, needed)
    features = frame.iloc[:, order]
    for name in needed:
        if not pd.api.types.is_numeric_dtype(features[name]):
            raise ValueError(f"column {name!r} in {data} is not numeric")
    probabilities = exported.predict_proba(features.to_numpy(dtype="float32"))
    classes = exported.class_names
    result = pd.DataFrame(probabilities, columns=classes)
    result["predicted"] = [classes[i] for i in probabilities.argmax(axis=1)]
    return result
