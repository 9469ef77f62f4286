"""Input checks shared by the metrics.

Every bad input raises a ``ValueError`` whose message starts with the metric's YAML name and says
what was expected and what was given, e.g. ``topk: preds and labels must have the same length N;
got 32 preds and 31 labels``. Checks run before a metric changes its state, so a rejected batch
leaves the running totals as they were.
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

import numpy as np

__all__ = ["describe", "numeric", "class_ids", "label_ids", "predicted_ids", "same_length", "no_data"]


def describe(value: Any) -> str:
    """A short description of what was given: shape and dtype for arrays, length for lists, else the type."""
    if isinstance(value, np.ndarray):
        return f"an array of shape {value.shape} and dtype {value.dtype}"
    if isinstance(value, (list, tuple)):
        return f"a {type(value).__name__} of length {len(value)}"
    if isinstance(value, (bool, int, float, str)):
        return f"the {type(value).__name__} {value!r}"
    return f"a {type(value).__name__}"


def numeric(metric: str, what: str, value: Any, *, allow_inf: bool = False) -> np.ndarray:
    """``value`` as a numeric (bool, int or float) numpy array with no NaN (and no inf unless allowed)."""
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError) as exc:  # ragged nested lists, numpy >= 1.24
        raise ValueError(f"{metric}: {what} must be a numeric array; got {describe(value)} that numpy cannot "
                         f"turn into one ({exc})") from None
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"{metric}: {what} must be a numeric array (bool, int or float); got {describe(value)}"
                         + (f" converted to dtype {arr.dtype}" if not isinstance(value, np.ndarray) else ""))
    if arr.dtype.kind == "f":
        if np.isnan(arr).any():
            raise ValueError(f"{metric}: {what} contain NaN ({int(np.isnan(arr).sum())} of {arr.size} values); "
                             f"expected finite numbers")
        if not allow_inf and np.isinf(arr).any():
            raise ValueError(f"{metric}: {what} contain infinite values ({int(np.isinf(arr).sum())} of {arr.size}); "
                             f"expected finite numbers")
    return arr


def class_ids(metric: str, what: str, arr: np.ndarray, n_classes: Optional[int] = None) -> np.ndarray:
    """A 1-D numeric array as int64 class ids: integer-valued, >= 0 and, with ``n_classes``, < n_classes."""
    if arr.dtype.kind == "f":
        if np.isinf(arr).any() or (arr != np.round(arr)).any():
            raise ValueError(f"{metric}: {what} must be integer class ids; got non-integer values such as "
                             f"{arr[(~np.isfinite(arr)) | (arr != np.round(arr))][0]!r}")
    ids = arr.astype(np.int64)
    if ids.size and ids.min() < 0:
        raise ValueError(f"{metric}: {what} must be class ids >= 0; got {int(ids.min())}")
    if n_classes is not None and ids.size and ids.max() >= n_classes:
        raise ValueError(f"{metric}: {what} must be class ids in [0, {n_classes}) for scores of {n_classes} classes; "
                         f"got {int(ids.max())}")
    return ids


def label_ids(metric: str, labels: Any, n_classes: Optional[int] = None) -> np.ndarray:
    """Labels given as class ids (N,) or (N, 1), or one-hot (N, C), as int64 class ids of shape (N,)."""
    arr = numeric(metric, "labels", labels)
    if arr.ndim == 1 or (arr.ndim == 2 and arr.shape[1] == 1 and n_classes != 1):
        return class_ids(metric, "labels", arr.reshape(-1), n_classes)
    if arr.ndim == 2:
        if n_classes is not None and arr.shape[1] != n_classes:
            raise ValueError(f"{metric}: one-hot labels must have one column per class ({n_classes}, as the preds "
                             f"have); got labels of shape {arr.shape}")
        if arr.size and (((arr != 0) & (arr != 1)).any() or (arr.sum(axis=1) != 1).any()):
            raise ValueError(f"{metric}: labels of shape (N, C) must be one-hot (a single 1 per row, 0 elsewhere); "
                             f"got {describe(arr)} that is not")
        return arr.argmax(axis=1).astype(np.int64)
    raise ValueError(f"{metric}: labels must be class ids of shape (N,) or one-hot of shape (N, C); "
                     f"got {describe(arr)}")


def predicted_ids(metric: str, preds: Any) -> Tuple[np.ndarray, Optional[int]]:
    """Preds given as class ids (N,) or (N, 1), or scores (N, C) reduced by argmax (the first maximum).

    Returns the class ids (N,) and the class count C for scores (None for class ids).
    """
    arr = numeric(metric, "preds", preds, allow_inf=True)
    if arr.ndim == 2 and arr.shape[1] >= 2:
        return arr.argmax(axis=1).astype(np.int64), arr.shape[1]
    if arr.ndim == 1 or (arr.ndim == 2 and arr.shape[1] == 1):
        try:
            return class_ids(metric, "preds", arr.reshape(-1)), None
        except ValueError as exc:
            raise ValueError(f"{exc} (preds of shape (N,) are class ids; give scores or probabilities as (N, C), "
                             f"C >= 2)") from None
    raise ValueError(f"{metric}: preds must be class ids of shape (N,) or scores of shape (N, C); got {describe(arr)}")


def same_length(metric: str, n_preds: int, n_labels: int) -> None:
    if n_preds != n_labels:
        raise ValueError(f"{metric}: preds and labels must have the same length N; got {n_preds} preds and "
                         f"{n_labels} labels")


def no_data(metric: str) -> ValueError:
    return ValueError(f"{metric}: result() needs data, but update() was not called with any sample since the last "
                      f"reset()")
