"""Where `cohort model profile` and `serve` get a model and the site's rows, within its policy.

A model is an export folder or, for profiling, a spec (registry name, ``hf:/dir``,
``module:factory``); specs that import code run only when the site lists them with
``--allow-model`` (:func:`client.policy.check_model`), whether the operator typed them or
an export's manifest names them. The site's rows (``--background``, or ``background.csv``
/ ``background.npz`` in the export folder) are the timing inputs and the SHAP background.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cli import policy as policy_cli
from cli.common import parse_json_option

if TYPE_CHECKING:
    import numpy as np

    from models.predictor import Predictor

# torch is imported inside the functions: `cohort --help` stays fast.

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
    from models.predictor import load_predictor, spec_predictor

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
