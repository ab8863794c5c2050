"""SHAP for one request to a served model, against the site's own background rows.

One implementation for every model: :func:`explain.site_audit.permutation_values` (shap's
PermutationExplainer over an ``Independent`` masker, the interventional game), the same
code the site audit runs. What a *feature* is depends on the model:

- a **tabular** export: one training column, named as in the manifest; an absent column
  takes the value of a background row;
- a **named-input** model (the multimodal clinic model, text, image, ``hf:`` and
  ``module:factory`` models): one named input of the request, whole (``input_ids``,
  ``image``, ``tabular``, …); a mask travels with the input it masks
  (``attention_mask`` with ``input_ids``, ``x_mask`` with ``x_ids`` or ``x``), because a
  token sequence without its own mask is not a meaningful input. An absent feature takes
  that input (and its mask) from a background row.

Named inputs are explained through pool indices: a coalition is a vector holding, per
feature, ``0`` (the request's own value) or ``b`` (background row ``b``), and the model
is evaluated on the inputs gathered from those rows. That is exactly the interventional
game the tabular audit plays over columns, so efficiency holds the same way: the
attributions plus the base value add up to the request's probability.

The background rows never leave the site: they are read from the site's own files when
the service starts and are used only inside this process.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from explain.site_audit import permutation_values

Inputs = dict[str, np.ndarray]


def feature_groups(names: list[str]) -> dict[str, tuple[str, ...]]:
    """Group a request's inputs into features: each input, its mask beside it.

    ``attention_mask`` joins ``input_ids``; ``foo_mask`` joins ``foo_ids`` or ``foo``;
    a mask whose input is absent is a feature of its own.
    """
    present = set(names)
    groups: dict[str, list[str]] = {n: [n] for n in names if not n.endswith("mask")}
    for name in names:
        if not name.endswith("mask"):
            continue
        stem = name[: -len("mask")].rstrip("_")
        owners = ["input_ids"] if name == "attention_mask" else [f"{stem}_ids", stem]
        owner = next((o for o in owners if o in present and o in groups), None)
        if owner is None:
            groups[name] = [name]
        else:
            groups[owner].append(name)
    return {k: tuple(v) for k, v in groups.items()}


@dataclass
class RequestExplainer:
    """Explain one request (one row) of a served model; build with :func:`for_predictor`.

    Attributes
    ----------
    predict
        Named arrays in, probabilities ``[rows, classes]`` out (the served predictor).
    kind
        ``"tabular"`` (features are columns of ``x``) or ``"named"`` (features are inputs).
    class_names, feature_names
        Output names; tabular column names (unused for named models).
    background
        The site's rows: ``{"x": [B, F]}`` for tabular, one array per input otherwise.
    max_evals
        Model evaluations per explained row; 0 means ten antithetic permutations,
        ``10 * (2F + 1)``, as in the site audit.
    input_names
        The model's inputs in its own order: features are listed in this order.
    """

    predict: Callable[[Inputs], np.ndarray]
    kind: str
    class_names: tuple[str, ...]
    feature_names: tuple[str, ...]
    background: Inputs
    max_evals: int = 0
    input_names: tuple[str, ...] = ()

    @property
    def background_rows(self) -> int:
        return int(next(iter(self.background.values())).shape[0])

    def __call__(self, inputs: Mapping[str, np.ndarray]) -> dict[str, Any]:
        """Attributions of one request, per class and feature, with its probabilities.

        Raises
        ------
        ValueError
            If the request is not one row, or a named input is missing from the
            background or has another shape there (the message names the input).
        """
        rows = {int(v.shape[0]) for v in inputs.values()}
        if rows != {1}:
            raise ValueError("explain takes exactly one row")
        game: Callable[[np.ndarray], np.ndarray]
        if self.kind == "tabular":
            names = list(self.feature_names)
            row = np.asarray(inputs["x"], dtype=np.float32)
            background = np.asarray(self.background["x"], dtype=np.float32)

            def columns(x: np.ndarray) -> np.ndarray:
                return self.predict({"x": np.asarray(x, dtype=np.float32)})

            game = columns

        else:
            rank = {n: i for i, n in enumerate(self.input_names)}
            groups = feature_groups(sorted(inputs, key=lambda n: rank.get(n, len(rank))))
            names = list(groups)
            game, background, row = self._grouped_game(dict(inputs), groups)
        evals = self.max_evals or 10 * (2 * len(names) + 1)
        values, base = permutation_values(game, background, row, evals)
        probabilities = np.asarray(game(row), dtype=float)[0]
        classes = list(self.class_names)
        return {
            "classes": classes,
            "probabilities": probabilities.tolist(),
            "predicted": classes[int(probabilities.argmax())],
            "features": names,
            "base_values": dict(zip(classes, base[0].tolist(), strict=True)),
            "attributions": {
                c: dict(zip(names, values[0, :, k].tolist(), strict=True))
                for k, c in enumerate(classes)
            },
            "explainer": f"{_shap_version()} PermutationExplainer (max_evals={evals}, "
            f"background={self.background_rows} site rows, features="
            + ("columns" if self.kind == "tabular" else "named inputs")
            + ")",
        }

    def _grouped_game(
        self, request: Inputs, groups: dict[str, tuple[str, ...]]
    ) -> tuple[Callable[[np.ndarray], np.ndarray], np.ndarray, np.ndarray]:
        """The model as a function of per-feature pool indices (0: the request, b: row b)."""
        for name, value in request.items():
            reference = self.background.get(name)
            if reference is None:
                raise ValueError(
                    f"inputs.{name}: the site's background rows have no {name!r} to compare "
                    f"with (they hold {', '.join(sorted(self.background))})"
                )
            if reference.shape[1:] != value.shape[1:]:
                raise ValueError(
                    f"inputs.{name} has shape {list(value.shape[1:])} per row, the background "
                    f"{list(reference.shape[1:])}: send rows shaped like the site's"
                )
        pool = {
            k: np.concatenate([v, self.background[k].astype(v.dtype, copy=False)])
            for k, v in request.items()
        }
        order = list(groups.values())

        def game(z: np.ndarray) -> np.ndarray:
            index = np.asarray(np.rint(z), dtype=np.int64)
            batch = {k: pool[k][index[:, g]] for g, keys in enumerate(order) for k in keys}
            return self.predict(batch)

        count = self.background_rows
        background = np.repeat(np.arange(1, count + 1, dtype=float)[:, None], len(order), axis=1)
        return game, background, np.zeros((1, len(order)))


def for_predictor(predictor: Any, background: Inputs, *, max_evals: int = 0) -> RequestExplainer:
    """A :class:`RequestExplainer` over a :class:`models.predictor.Predictor` and site rows.

    Raises
    ------
    ValueError
        If the background holds no rows, or none of the model's inputs.
    """
    if predictor.kind == "tabular":
        background = {"x": np.asarray(background["x"], dtype=np.float32)}
    else:
        background = {k: v for k, v in background.items() if k in predictor.input_names}
        if not background:
            raise ValueError(
                f"the background rows hold none of the model's inputs "
                f"({', '.join(predictor.input_names)})"
            )
    if {int(v.shape[0]) for v in background.values()} in (set(), {0}):
        raise ValueError("the background holds no rows")
    if len({int(v.shape[0]) for v in background.values()}) != 1:
        raise ValueError("every background input must have the same number of rows")
    return RequestExplainer(
        predictor,
        predictor.kind,
        tuple(predictor.class_names),
        tuple(predictor.feature_names),
        background,
        max_evals,
        tuple(predictor.input_names),
    )


def _shap_version() -> str:
    import shap

    return f"shap {shap.__version__}"
