"""``cocomap``: COCO box mAP, computed by pycocotools' ``COCOeval`` (the reference), not reimplemented.

Inputs follow torchmetrics' ``MeanAveragePrecision`` convention, one dict per image:
  - preds: ``{"boxes": (N, 4), "scores": (N,), "labels": (N,)}``;
  - labels: ``{"boxes": (M, 4), "labels": (M,)}`` with optional ``"iscrowd": (M,)`` (0/1) and
    ``"area": (M,)`` (default: the box's width * height).
Boxes are pixels in ``box_format`` (default ``xyxy``; also ``xywh`` and ``cxcywh``). ``update`` checks
and converts each batch to compact float64/int64 arrays; ``result`` builds the COCO ground-truth
and detection structures in memory (image ids 1..n in update order, category ids = the labels)
and runs ``COCOeval(...).evaluate(); accumulate(); summarize()``. mAP needs every detection, so
the memory grows with the dataset: between updates, 56 bytes per detection and 64 per ground-truth
box; during ``result`` also the Python dicts that COCOeval works on, as when it is called directly.

pycocotools is the optional extra ``ilit-metrics[coco]``.
"""

from __future__ import annotations

import contextlib
import io
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from ilit import Metric

from ._checks import class_ids, describe, no_data, numeric

__all__ = ["CocoMAP", "STAT_NAMES"]

#: the 12 numbers of ``COCOeval.summarize()`` (``stats[0..11]``), named as torchmetrics names them.
STAT_NAMES = ("map", "map_50", "map_75", "map_small", "map_medium", "map_large",
              "mar_1", "mar_10", "mar_100", "mar_small", "mar_medium", "mar_large")

INSTALL_HINT = "pip install 'ilit-metrics[coco]'"


def _pycocotools() -> Tuple[Any, Any]:
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError as exc:
        raise ImportError(f"the cocomap metric needs pycocotools, which is not installed (or failed to import: "
                          f"{exc}). Add it with: {INSTALL_HINT}") from exc
    return COCO, COCOeval


def _thresholds(what: str, value: Any) -> Optional[np.ndarray]:
    if value is None:
        return None
    if np.isscalar(value):
        value = [value]
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        arr = None
    if arr is None or arr.ndim != 1 or arr.size == 0 or not np.isfinite(arr).all() \
            or (arr < 0).any() or (arr > 1).any():
        raise ValueError(f"cocomap: {what} must be a non-empty list of numbers in [0, 1]; got {value!r}")
    return arr


class _Batch:
    """One update's images, concatenated: image ids and per-box arrays."""

    __slots__ = ("gt_img", "gt_box", "gt_label", "gt_crowd", "gt_area", "dt_img", "dt_box", "dt_score", "dt_label")

    def __init__(self, gt: List[Tuple[np.ndarray, ...]], dt: List[Tuple[np.ndarray, ...]], first_id: int) -> None:
        ids = np.arange(first_id, first_id + len(gt), dtype=np.int64)
        self.gt_img = np.repeat(ids, [len(g[0]) for g in gt])
        self.gt_box, self.gt_label, self.gt_crowd, self.gt_area = (np.concatenate(col) for col in zip(*gt))
        self.dt_img = np.repeat(ids, [len(d[0]) for d in dt])
        self.dt_box, self.dt_score, self.dt_label = (np.concatenate(col) for col in zip(*dt))


class CocoMAP(Metric):
    """COCO box mAP@[.50:.95] (``COCOeval.stats[0]``); :meth:`results` gives all 12 COCO numbers.

    ``iou_thresholds`` (default COCO's 0.50:0.05:0.95) and ``rec_thresholds`` (default 0:0.01:1)
    set ``COCOeval.params.iouThrs`` / ``recThrs``; ``box_format`` is ``xyxy`` (default), ``xywh`` or
    ``cxcywh``. As in COCOeval, a number with nothing to measure (e.g. no ground-truth box at all)
    is -1. The 12 numbers are computed once and cached until the next ``update`` or ``reset``.

    YAML: ``metric: cocomap`` or ``metric: {cocomap: {iou_thresholds: [0.5, 0.75]}}``.
    """

    name = "cocomap"
    higher_is_better = True
    BOX_FORMATS = ("xyxy", "xywh", "cxcywh")

    def __init__(self, iou_thresholds: Optional[Sequence[float]] = None,
                 rec_thresholds: Optional[Sequence[float]] = None, box_format: str = "xyxy") -> None:
        self._COCO, self._COCOeval = _pycocotools()
        if box_format not in self.BOX_FORMATS:
            raise ValueError(f"cocomap: box_format must be one of {', '.join(self.BOX_FORMATS)}; "
                             f"got {describe(box_format)}")
        self.iou_thresholds = _thresholds("iou_thresholds", iou_thresholds)
        self.rec_thresholds = _thresholds("rec_thresholds", rec_thresholds)
        self.box_format = box_format
        self.reset()

    def reset(self) -> None:
        self._batches: List[_Batch] = []
        self.n_images = 0
        self._stats: Optional[np.ndarray] = None

    # ------------------------------------------------------------------ input checks
    def _boxes(self, where: str, value: Any) -> np.ndarray:
        arr = numeric(self.name, f"{where}['boxes']", value)
        if arr.size == 0:
            return np.zeros((0, 4))
        if arr.ndim != 2 or arr.shape[1] != 4:
            raise ValueError(f"cocomap: {where}['boxes'] must be an array of shape (N, 4) ({self.box_format}); "
                             f"got {describe(arr)}")
        b = arr.astype(np.float64)
        if self.box_format == "xyxy":
            w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
            x, y = b[:, 0], b[:, 1]
        elif self.box_format == "xywh":
            x, y, w, h = b.T
        else:
            w, h = b[:, 2], b[:, 3]
            x, y = b[:, 0] - w / 2, b[:, 1] - h / 2
        if (w < 0).any() or (h < 0).any():
            bad = int(np.flatnonzero((w < 0) | (h < 0))[0])
            raise ValueError(f"cocomap: {where}['boxes'] must have non-negative width and height in {self.box_format} "
                             f"format; box {bad} is {arr[bad].tolist()}")
        return np.stack([x, y, w, h], axis=1)

    def _vector(self, where: str, key: str, value: Any, n: int, *, ids: bool = False) -> np.ndarray:
        arr = numeric(self.name, f"{where}[{key!r}]", value)
        if arr.size == 0 and n == 0:
            return np.zeros(0, dtype=np.int64 if ids else np.float64)
        if arr.ndim != 1 or len(arr) != n:
            raise ValueError(f"cocomap: {where}[{key!r}] must be of shape ({n},), one per box; got {describe(arr)}")
        return class_ids(self.name, f"{where}[{key!r}]", arr) if ids else arr.astype(np.float64)

    @staticmethod
    def _dict(where: str, value: Any, required: Sequence[str]) -> Mapping[str, Any]:
        if not isinstance(value, Mapping):
            raise ValueError(f"cocomap: {where} must be a dict with keys {', '.join(required)}; got {describe(value)}")
        missing = [k for k in required if k not in value]
        if missing:
            raise ValueError(f"cocomap: {where} lacks the key(s) {', '.join(map(repr, missing))}; it must hold "
                             f"{', '.join(required)}; got keys {sorted(map(str, value))}")
        return value

    def _image(self, i: int, pred: Any, target: Any) -> Tuple[Tuple[np.ndarray, ...], Tuple[np.ndarray, ...]]:
        p = self._dict(f"preds[{i}]", pred, ("boxes", "scores", "labels"))
        t = self._dict(f"labels[{i}]", target, ("boxes", "labels"))
        d_box = self._boxes(f"preds[{i}]", p["boxes"])
        n = len(d_box)
        d_score = self._vector(f"preds[{i}]", "scores", p["scores"], n)
        d_label = self._vector(f"preds[{i}]", "labels", p["labels"], n, ids=True)
        g_box = self._boxes(f"labels[{i}]", t["boxes"])
        m = len(g_box)
        g_label = self._vector(f"labels[{i}]", "labels", t["labels"], m, ids=True)
        if t.get("iscrowd") is not None:
            g_crowd = self._vector(f"labels[{i}]", "iscrowd", t["iscrowd"], m, ids=True)
            if (g_crowd > 1).any():
                raise ValueError(f"cocomap: labels[{i}]['iscrowd'] must hold 0 or 1; got {int(g_crowd.max())}")
        else:
            g_crowd = np.zeros(m, dtype=np.int64)
        if t.get("area") is not None:
            g_area = self._vector(f"labels[{i}]", "area", t["area"], m)
            if (g_area < 0).any():
                raise ValueError(f"cocomap: labels[{i}]['area'] must be >= 0; got {float(g_area.min())}")
        else:
            g_area = g_box[:, 2] * g_box[:, 3]
        return (g_box, g_label, g_crowd, g_area), (d_box, d_score, d_label)

    def update(self, preds: Any, labels: Any) -> None:
        if isinstance(preds, Mapping) or isinstance(labels, Mapping) or not isinstance(preds, (list, tuple)) \
                or not isinstance(labels, (list, tuple)):
            raise ValueError("cocomap: preds and labels must be lists with one dict per image (preds: boxes, scores, "
                             f"labels; labels: boxes, labels); got preds as {describe(preds)} and labels as "
                             f"{describe(labels)}")
        if len(preds) != len(labels):
            raise ValueError(f"cocomap: preds and labels must have one dict per image each; got {len(preds)} preds "
                             f"and {len(labels)} labels")
        gt, dt = [], []
        for i, (pred, target) in enumerate(zip(preds, labels)):
            g, d = self._image(i, pred, target)
            gt.append(g)
            dt.append(d)
        if not gt:
            return
        self._batches.append(_Batch(gt, dt, first_id=self.n_images + 1))
        self.n_images += len(gt)
        self._stats = None

    # ------------------------------------------------------------------ evaluation
    def coco_structures(self) -> Tuple[Dict[str, Any], List[Dict[str, Any]]]:
        """The COCO ground-truth dataset dict and the detection list that :meth:`result` evaluates."""
        if not self.n_images:
            raise no_data(self.name)

        def cat(field: str) -> np.ndarray:
            return np.concatenate([getattr(b, field) for b in self._batches])

        gt_img, gt_box, gt_label, gt_crowd, gt_area = (cat(f) for f in ("gt_img", "gt_box", "gt_label", "gt_crowd",
                                                                         "gt_area"))
        dt_img, dt_box, dt_score, dt_label = (cat(f) for f in ("dt_img", "dt_box", "dt_score", "dt_label"))
        categories = sorted(set(gt_label.tolist()) | set(dt_label.tolist()))
        annotations = [
            {"id": j, "image_id": im, "bbox": box, "category_id": c, "iscrowd": crowd, "area": area}
            for j, (im, box, c, crowd, area) in enumerate(
                zip(gt_img.tolist(), gt_box.tolist(), gt_label.tolist(), gt_crowd.tolist(), gt_area.tolist()), 1)
        ]
        dataset = {"images": [{"id": i} for i in range(1, self.n_images + 1)], "annotations": annotations,
                   "categories": [{"id": c} for c in categories]}
        detections = [{"image_id": im, "bbox": box, "score": s, "category_id": c}
                      for im, box, s, c in zip(dt_img.tolist(), dt_box.tolist(), dt_score.tolist(), dt_label.tolist())]
        return dataset, detections

    def _evaluate(self) -> np.ndarray:
        dataset, detections = self.coco_structures()
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress and the summary table
            coco_gt = self._COCO()
            coco_gt.dataset = dataset
            coco_gt.createIndex()
            if detections:
                coco_dt = coco_gt.loadRes(detections)
            else:  # loadRes cannot take an empty list; an empty result set scores as COCOeval scores it
                coco_dt = self._COCO()
                coco_dt.dataset = {"images": list(dataset["images"]), "categories": list(dataset["categories"]),
                                   "annotations": []}
                coco_dt.createIndex()
            evaluator = self._COCOeval(coco_gt, coco_dt, iouType="bbox")
            if self.iou_thresholds is not None:
                evaluator.params.iouThrs = self.iou_thresholds.copy()
            if self.rec_thresholds is not None:
                evaluator.params.recThrs = self.rec_thresholds.copy()
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        return np.asarray(evaluator.stats, dtype=np.float64)

    def results(self) -> Dict[str, float]:
        """All 12 COCO numbers by name (``map`` = stats[0], ``map_50``, ..., ``mar_large`` = stats[11])."""
        if not self.n_images:
            raise no_data(self.name)
        if self._stats is None:
            self._stats = self._evaluate()
        return {name: float(v) for name, v in zip(STAT_NAMES, self._stats)}

    def result(self) -> float:
        return self.results()["map"]
