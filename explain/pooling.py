"""Pool raw per-element attributions into the few named features a site may release.

Every function takes SHAP values shaped ``[rows, *element_shape, classes]`` and returns
``([rows, features, classes], feature_names)``. Attributions are summed, not averaged,
inside a group: SHAP values are additive, so the sum over a region is that region's
contribution to the prediction, and the groups together still add up to the whole.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

DEFAULT_MODALITY: dict[str, str] = {
    "x": "tabular",
    "tabular": "tabular",
    "image": "image",
    "pixel_values": "image",
    "pixels": "image",
    "input_ids": "text",
    "text": "text",
    "tokens": "text",
    "audio": "audio",
    "waveform": "audio",
    "mel": "audio",
    "spectrogram": "audio",
}


def pool_regions(values: np.ndarray, grid: tuple[int, int]) -> tuple[np.ndarray, list[str]]:
    """Sum image attributions over a ``rows x cols`` grid of regions.

    ``values`` is ``[N, ..., H, W, C]``: any channel dimensions before the two spatial ones
    are summed too. Uneven sizes are split as ``numpy.array_split`` does (an 8x8 digit on a
    3x3 grid gets 3, 3 and 2 pixel bands). A fixed grid, not a learned segmentation, so
    that every site reports the same features and summaries can be merged.

    Raises
    ------
    ValueError
        When the grid is not positive or larger than the image.
    """
    if values.ndim < 4:
        raise ValueError(f"image attributions need [N, ..., H, W, C], got shape {values.shape}")
    n_rows, n_cols = grid
    height, width = values.shape[-3], values.shape[-2]
    if not (1 <= n_rows <= height and 1 <= n_cols <= width):
        raise ValueError(f"grid {grid} does not fit an image of {height}x{width} pixels")
    # Collapse channels: [N, H, W, C].
    spatial = values.reshape(values.shape[0], -1, height, width, values.shape[-1]).sum(axis=1)
    row_bands = np.array_split(np.arange(height), n_rows)
    col_bands = np.array_split(np.arange(width), n_cols)
    pooled, names = [], []
    for r, rows in enumerate(row_bands):
        for c, cols in enumerate(col_bands):
            block = spatial[:, rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1, :]
            pooled.append(block.sum(axis=(1, 2)))
            names.append(f"region_{r}_{c}")
    return np.stack(pooled, axis=1), names


def pool_positions(values: np.ndarray, buckets: int) -> tuple[np.ndarray, list[str]]:
    """Sum token attributions over contiguous buckets of sequence positions.

    ``values`` is ``[N, T, ..., C]`` (for example ``[N, T, embedding_dim, C]``). Positions,
    not vocabulary tokens, are the released features: they are the same at every site, so
    summaries merge, and they do not disclose which words occur in a site's documents.
    Names read ``tokens_<first>_<last>`` (inclusive positions).

    Raises
    ------
    ValueError
        When ``buckets`` is not between 1 and the sequence length.
    """
    if values.ndim < 3:
        raise ValueError(f"token attributions need [N, T, ..., C], got shape {values.shape}")
    length = values.shape[1]
    if not 1 <= buckets <= length:
        raise ValueError(f"buckets must be in [1, {length}], got {buckets}")
    per_token = values.reshape(values.shape[0], length, -1, values.shape[-1]).sum(axis=2)
    pooled, names = [], []
    for span in np.array_split(np.arange(length), buckets):
        pooled.append(per_token[:, span[0] : span[-1] + 1, :].sum(axis=1))
        names.append(f"tokens_{span[0]}_{span[-1]}")
    return np.stack(pooled, axis=1), names


def pool_modalities(
    values: Mapping[str, np.ndarray], modality_of: Mapping[str, str] | None = None
) -> tuple[np.ndarray, list[str]]:
    """Sum each input's attributions into one value per modality.

    ``values`` maps an input name (``"image"``, ``"input_ids"``, ``"x"``) to its
    attributions ``[N, ..., C]``. ``modality_of`` renames inputs to modalities; unnamed
    inputs fall back to :data:`DEFAULT_MODALITY` and then to their own name. Inputs that
    map to the same modality are added together. Modalities are listed in first-seen order.
    """
    mapping = {**DEFAULT_MODALITY, **(modality_of or {})}
    totals: dict[str, np.ndarray] = {}
    for key, array in values.items():
        per_row = array.reshape(array.shape[0], -1, array.shape[-1]).sum(axis=1)
        name = mapping.get(key, key)
        totals[name] = totals[name] + per_row if name in totals else per_row
    if not totals:
        raise ValueError("no attributions to pool")
    return np.stack(list(totals.values()), axis=1), list(totals)


def feature_statistics(
    values: np.ndarray, class_names: Sequence[str]
) -> tuple[list[float], dict[str, list[float]]]:
    """Reduce ``[N, F, C]`` attributions to ``mean_abs`` ``[F]`` and ``mean_signed`` per class.

    ``mean_abs`` averages ``|phi|`` over rows and classes, so a feature that pushes one
    class up and another down counts once per class and is not cancelled out.
    """
    if values.ndim != 3 or values.shape[2] != len(class_names):
        raise ValueError(
            f"attributions must be [N, F, {len(class_names)}], got shape {values.shape}"
        )
    mean_abs = np.abs(values).mean(axis=(0, 2))
    signed = values.mean(axis=0)
    return mean_abs.tolist(), {name: signed[:, i].tolist() for i, name in enumerate(class_names)}
