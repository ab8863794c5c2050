"""A site's local data: tabular files or scikit-learn's bundled sets, train and held-out."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

SKLEARN_PREFIX = "sklearn:"
SKLEARN_SETS = ("breast_cancer", "digits", "wine", "iris")


class DataError(ValueError):
    """Local data that cannot be used as given; the message says what to fix."""


# The trainer's ``preprocess`` setting → the step an export names (models/export.py holds
# its formula and a torch copy inside the exported model). Both are fixed, public and
# data-independent, so nothing has to be fitted or shared for every site to agree.
PREPROCESSING_STEPS = {"log": "log_scale", "none": "identity"}


@dataclass(frozen=True)
class TabularData:
    """Features, integer labels and the feature names, as loaded at a site.

    ``class_names`` names label ids ``0, 1, …`` when the source does (scikit-learn's
    ``target_names``); otherwise a class is named by its label value as written.
    """

    x: np.ndarray
    y: np.ndarray
    feature_names: list[str]
    class_names: list[str] | None = None
    # Each feature column's type as the source held it ("integer", "float", "boolean"),
    # for the schema the run agrees on (protos.data_schema); None means all "float".
    column_types: list[str] | None = None

    def __post_init__(self) -> None:
        if self.x.ndim != 2 or len(self.x) != len(self.y):
            raise DataError(f"features {self.x.shape} and labels {self.y.shape} do not line up")

    def subset(self, index: np.ndarray) -> TabularData:
        """The rows at ``index``, with the same column names, classes and column types."""
        return TabularData(
            self.x[index], self.y[index], self.feature_names, self.class_names, self.column_types
        )

    def columns(self, order: list[int]) -> TabularData:
        """The same rows with the feature columns taken in ``order`` (indices into these)."""
        types = [self.column_types[i] for i in order] if self.column_types else None
        return TabularData(
            self.x[:, order],
            self.y,
            [self.feature_names[i] for i in order],
            self.class_names,
            types,
        )

    def class_names_for(self, num_classes: int) -> list[str]:
        """A name for each of a model's ``num_classes`` outputs (label id ``i`` → output ``i``)."""
        names = list(self.class_names or [])
        return names[:num_classes] + [str(i) for i in range(len(names), num_classes)]

    def fingerprint(self) -> str:
        """sha256 of the data as used, so an audit can name exactly what a site trained on."""
        import hashlib

        digest = hashlib.sha256()
        digest.update(np.ascontiguousarray(self.x, dtype=np.float32).tobytes())
        digest.update(np.ascontiguousarray(self.y, dtype=np.int64).tobytes())
        return digest.hexdigest()


def load_sklearn(name: str) -> TabularData:
    """One of scikit-learn's bundled tables by name: demo and simulation data, no download."""
    from sklearn import datasets

    loaders = {
        "breast_cancer": datasets.load_breast_cancer,
        "digits": datasets.load_digits,
        "wine": datasets.load_wine,
        "iris": datasets.load_iris,
    }
    if name not in loaders:
        raise DataError(f"unknown scikit-learn set {name!r}; choose one of {', '.join(loaders)}")
    bunch = loaders[name]()
    return TabularData(
        bunch.data.astype(np.float32),
        bunch.target.astype(np.int64),
        [str(f) for f in bunch.feature_names],
        [str(c) for c in bunch.target_names],
    )


def load_tabular(source: str, label_column: str = "label") -> TabularData:
    """Load ``sklearn:NAME``, a CSV, a Parquet file or a NumPy ``.npz``/``.npy`` file.

    Files hold one row per example and a label column (``label_column``); every other
    column must be numeric. An ``.npz`` holds arrays ``x`` and ``y``; an ``.npy`` is a 2-D
    array whose last column is the label.
    """
    if source.startswith(SKLEARN_PREFIX):
        return load_sklearn(source[len(SKLEARN_PREFIX) :])
    path = Path(source)
    if not path.exists():
        raise DataError(f"no data file at {path}")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as archive:
            if "x" not in archive or "y" not in archive:
                raise DataError(f"{path} must hold arrays 'x' and 'y'")
            x = np.asarray(archive["x"], dtype=np.float32)
            names = [f"x{i}" for i in range(x.shape[1])] if x.ndim == 2 else []
            return TabularData(x, np.asarray(archive["y"]).astype(np.int64), names)
    if suffix == ".npy":
        array = np.load(path, allow_pickle=False)
        if array.ndim != 2 or array.shape[1] < 2:
            raise DataError(f"{path} must be a 2-D array with the label in the last column")
        return TabularData(
            array[:, :-1].astype(np.float32),
            array[:, -1].astype(np.int64),
            [f"x{i}" for i in range(array.shape[1] - 1)],
        )
    if suffix in (".csv", ".tsv", ".txt"):
        frame = pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",")
    elif suffix in (".parquet", ".pq"):
        frame = pd.read_parquet(path)
    else:
        raise DataError(f"unsupported data file {path.name}: use CSV, Parquet, .npz or .npy")
    return frame_to_tabular(frame, label_column, str(path))


def frame_to_tabular(frame: pd.DataFrame, label_column: str, where: str) -> TabularData:
    """Split ``frame`` into numeric features and integer labels; ``where`` names it in errors.

    Refuses (``DataError``) a missing label column, non-numeric features and missing values:
    a site imputes and encodes before training, so every site trains on the same columns.
    """
    if label_column not in frame.columns:
        raise DataError(
            f"{where} has no label column {label_column!r} "
            f"(columns: {', '.join(map(str, frame.columns[:10]))})"
        )
    features = frame.drop(columns=[label_column])
    non_numeric = [
        str(c) for c in features.columns if not pd.api.types.is_numeric_dtype(features[c])
    ]
    if non_numeric:
        raise DataError(f"{where}: non-numeric feature columns {', '.join(non_numeric[:5])}")
    if features.isna().any().any():
        raise DataError(f"{where} has missing values; impute them before training")
    labels = frame[label_column]
    if not pd.api.types.is_integer_dtype(labels):
        raise DataError(f"{where}: label column {label_column!r} must hold integer class ids")
    return TabularData(
        features.to_numpy(np.float32),
        labels.to_numpy(np.int64),
        [str(c) for c in features.columns],
        column_types=[column_type(features[c].dtype) for c in features.columns],
    )


def column_type(dtype: object) -> str:
    """A column's type as a data schema names it: integer, float or boolean."""
    if pd.api.types.is_bool_dtype(dtype):
        return "boolean"
    if pd.api.types.is_integer_dtype(dtype):
        return "integer"
    return "float"


def save_csv(data: TabularData, path: Path, label_column: str = "label") -> Path:
    """Write ``data`` as a CSV (features plus ``label_column``) that ``load_csv`` reads back."""
    frame = pd.DataFrame(data.x, columns=data.feature_names)
    frame[label_column] = data.y
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)
    return path


def train_holdout_split(
    data: TabularData, holdout: float = 0.2, seed: int = 0
) -> tuple[TabularData, TabularData]:
    """Stratified where each class has at least two rows; plain random otherwise."""
    from sklearn.model_selection import train_test_split

    index = np.arange(len(data.y))
    _, counts = np.unique(data.y, return_counts=True)
    stratify = data.y if counts.min() >= 2 else None
    train_idx, test_idx = train_test_split(
        index, test_size=holdout, random_state=seed, stratify=stratify
    )
    return data.subset(np.sort(train_idx)), data.subset(np.sort(test_idx))


def dirichlet_split(
    labels: np.ndarray, num_sites: int, alpha: float, seed: int, min_rows: int = 10
) -> list[np.ndarray]:
    """Split row indices across sites with label proportions drawn from Dirichlet(alpha).

    Small ``alpha`` gives each site a skewed class mix (non-IID), as hospitals with
    different referral patterns have. Draws are repeated until every site has
    ``min_rows`` rows, so no site ends up empty.
    """
    if num_sites < 1:
        raise ValueError("num_sites must be at least 1")
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    for _ in range(1000):
        parts: list[list[int]] = [[] for _ in range(num_sites)]
        for cls in classes:
            rows = rng.permutation(np.flatnonzero(labels == cls))
            shares = rng.dirichlet(np.full(num_sites, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(rows)).astype(int)
            for site, piece in enumerate(np.split(rows, cuts)):
                parts[site].extend(piece.tolist())
        if min(len(p) for p in parts) >= min_rows:
            return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]
    raise ValueError(f"cannot give {num_sites} sites {min_rows} rows each from {len(labels)}")


def log_scale(x: np.ndarray) -> np.ndarray:
    """``sign(x)·log1p(|x|)``: a public, data-independent squash every site applies alike.

    Standardising with each site's own mean and variance would give every hospital a
    different input space under non-IID splits; a fixed transform needs no statistics
    to be shared and keeps raw magnitudes (areas in the thousands) trainable.
    """
    return (np.sign(x) * np.log1p(np.abs(x))).astype(np.float32)
