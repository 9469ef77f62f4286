"""cocomap against pycocotools' COCOeval called directly on the same data, built independently here."""

import contextlib
import io
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from ilit_metrics import CocoMAP
from ilit_metrics.coco import STAT_NAMES


def to_xywh(box, fmt):
    a, b, c, d = box
    if fmt == "xyxy":
        return [a, b, c - a, d - b]
    if fmt == "xywh":
        return [a, b, c, d]
    return [a - c / 2, b - d / 2, c, d]  # cxcywh


def reference_stats(preds, targets, iou_thresholds=None, fmt="xyxy", gt_categories_only=False):
    """COCOeval on COCO structures built box by box in plain Python, as a user would by hand."""
    images, anns, dets, cats = [], [], [], set()
    for img_id, (p, t) in enumerate(zip(preds, targets), start=1):
        images.append({"id": img_id})
        for j, (box, label) in enumerate(zip(np.asarray(t["boxes"], float).reshape(-1, 4).tolist(),
                                             np.asarray(t["labels"]).tolist())):
            x, y, w, h = to_xywh(box, fmt)
            anns.append({"id": len(anns) + 1, "image_id": img_id, "bbox": [x, y, w, h], "category_id": int(label),
                         "iscrowd": int(t["iscrowd"][j]) if "iscrowd" in t else 0,
                         "area": float(t["area"][j]) if "area" in t else w * h})
            cats.add(int(label))
        for box, score, label in zip(np.asarray(p["boxes"], float).reshape(-1, 4).tolist(),
                                     np.asarray(p["scores"], float).tolist(), np.asarray(p["labels"]).tolist()):
            dets.append({"image_id": img_id, "bbox": to_xywh(box, fmt), "score": score, "category_id": int(label)})
            if not gt_categories_only:
                cats.add(int(label))
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {"images": images, "annotations": anns, "categories": [{"id": c} for c in sorted(cats)]}
        gt.createIndex()
        ev = COCOeval(gt, gt.loadRes(dets), iouType="bbox")
        if iou_thresholds is not None:
            ev.params.iouThrs = np.array(iou_thresholds, dtype=float)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats


def make_data(seed, n_images=40, n_classes=5, max_gt=8, n_random=6, crowd=False, area=False, fmt="xyxy",
              float32=False):
    """Detections near the ground truth (jittered, some with the wrong class) plus random ones; rounded
    scores make ties, which COCOeval breaks by input order."""
    rng = np.random.default_rng(seed)
    preds, targets = [], []
    for _ in range(n_images):
        m = int(rng.integers(0, max_gt + 1))
        xy = rng.uniform(0, 600, (m, 2))
        wh = np.exp(rng.uniform(np.log(4), np.log(300), (m, 2)))  # small, medium and large boxes
        gt = np.c_[xy, xy + wh]
        labels = rng.integers(0, n_classes, m)
        near = gt + rng.normal(0, 0.08, gt.shape) * np.c_[wh, wh]
        near[:, 2:] = np.maximum(near[:, 2:], near[:, :2])
        rxy = rng.uniform(0, 600, (n_random, 2))
        rand = np.c_[rxy, rxy + rng.uniform(2, 200, (n_random, 2))]
        d = np.r_[near, rand]
        d_labels = np.r_[np.where(rng.random(m) < 0.85, labels, rng.integers(0, n_classes, m)),
                         rng.integers(0, n_classes, n_random)]
        scores = np.round(rng.random(len(d)), 2)
        target = {"boxes": gt, "labels": labels}
        if crowd:
            target["iscrowd"] = (rng.random(m) < 0.15).astype(np.int64)
        if area:
            target["area"] = wh.prod(1) * rng.uniform(0.5, 1.0, m)
        if fmt != "xyxy":
            for arr in (gt, d):
                w, h = arr[:, 2] - arr[:, 0], arr[:, 3] - arr[:, 1]
                if fmt == "xywh":
                    arr[:, 2:] = np.c_[w, h]
                else:
                    arr[:] = np.c_[arr[:, 0] + w / 2, arr[:, 1] + h / 2, w, h]
        if float32:
            d, scores = d.astype(np.float32), scores.astype(np.float32)
        preds.append({"boxes": d, "scores": scores, "labels": d_labels})
        targets.append(target)
    return preds, targets


def run(metric, preds, targets, batch=7):
    metric.reset()
    for i in range(0, len(preds), batch):
        metric.update(preds[i:i + batch], targets[i:i + batch])
    return metric.results()


@pytest.mark.parametrize("seed, kwargs", [
    (0, {}),
    (1, {"crowd": True}),
    (2, {"area": True, "crowd": True}),
    (3, {"n_classes": 1, "max_gt": 20, "n_random": 30}),
    (4, {"fmt": "xywh"}),
    (5, {"fmt": "cxcywh", "crowd": True}),
    (6, {"float32": True}),
    (7, {"n_images": 150, "n_classes": 12}),
])
def test_equals_cocoeval_called_directly(seed, kwargs):
    preds, targets = make_data(seed, **kwargs)
    fmt = kwargs.get("fmt", "xyxy")
    want = reference_stats(preds, targets, fmt=fmt)
    got = run(CocoMAP(box_format=fmt), preds, targets)
    assert [got[k] for k in STAT_NAMES] == want.tolist()  # bit-for-bit: COCOeval did the computing
    assert got["map"] == want[0] and 0 < want[0] < 1


def test_categories_seen_only_in_detections_change_nothing():
    preds, targets = make_data(8, n_classes=6)
    for t in targets:  # class 5 now only ever appears among the detections
        keep = t["labels"] != 5
        t["boxes"], t["labels"] = t["boxes"][keep], t["labels"][keep]
    assert reference_stats(preds, targets).tolist() == reference_stats(preds, targets, gt_categories_only=True).tolist()
    assert run(CocoMAP(), preds, targets)["map"] == reference_stats(preds, targets)[0]


@pytest.mark.parametrize("iou", [[0.5], [0.5, 0.75], [0.3, 0.5, 0.7, 0.9]])
def test_iou_thresholds(iou):
    preds, targets = make_data(9)
    want = reference_stats(preds, targets, iou_thresholds=iou)
    m = CocoMAP(iou_thresholds=iou)
    assert [run(m, preds, targets)[k] for k in STAT_NAMES] == want.tolist()
    if iou == [0.5]:
        assert m.result() == m.results()["map_50"]


@settings(max_examples=40)
@given(st.integers(0, 2**32 - 1), st.integers(1, 12), st.integers(1, 4), st.integers(0, 5), st.booleans())
def test_random_equals_cocoeval(seed, n_images, n_classes, n_random, crowd):
    preds, targets = make_data(seed, n_images=n_images, n_classes=n_classes, max_gt=4, n_random=n_random,
                               crowd=crowd)
    if not any(len(p["boxes"]) for p in preds):
        return  # loadRes cannot take an empty list (covered below)
    got = run(CocoMAP(), preds, targets, batch=3)
    assert [got[k] for k in STAT_NAMES] == reference_stats(preds, targets).tolist()


def test_no_detections_and_no_ground_truth():
    preds, targets = make_data(10, n_images=5)
    empty = [{"boxes": np.zeros((0, 4)), "scores": np.zeros(0), "labels": np.zeros(0, int)} for _ in preds]
    m = CocoMAP()
    m.update(empty, targets)
    assert m.result() == 0.0 and m.results()["mar_100"] == 0.0
    no_gt = [{"boxes": np.zeros((0, 4)), "labels": np.zeros(0, int)} for _ in preds]
    m = CocoMAP()
    m.update(preds, no_gt)
    assert m.result() == -1.0  # COCOeval's "nothing to measure"


def test_result_is_cached_until_update_or_reset():
    preds, targets = make_data(11, n_images=10)
    m = CocoMAP()
    m.update(preds[:5], targets[:5])
    first = m.result()
    assert m.result() == first and m._stats is not None
    m.update(preds[5:], targets[5:])
    assert m._stats is None
    assert m.result() == reference_stats(preds, targets)[0]
    m.reset()
    with pytest.raises(ValueError, match=r"cocomap: result\(\) needs data"):
        m.result()


def test_lists_and_tuples_as_inputs():
    preds, targets = make_data(12, n_images=6)
    as_lists = [{k: v.tolist() for k, v in p.items()} for p in preds]
    m = CocoMAP()
    m.update(tuple(as_lists), [{k: v.tolist() for k, v in t.items()} for t in targets])
    assert m.result() == reference_stats(preds, targets)[0]


def good():
    return ({"boxes": np.array([[0, 0, 10, 10.0]]), "scores": np.array([0.9]), "labels": np.array([1])},
            {"boxes": np.array([[0, 0, 10, 10.0]]), "labels": np.array([1])})


@pytest.mark.parametrize("change, message", [
    (lambda p, t: p.update(boxes=np.zeros((1, 3))), r"preds\[0\]\['boxes'\] must be an array of shape \(N, 4\) "
                                                    r"\(xyxy\); got an array of shape \(1, 3\)"),
    (lambda p, t: p.update(scores=np.array([np.nan])), r"preds\[0\]\['scores'\] contain NaN"),
    (lambda p, t: p.update(scores=np.array([0.1, 0.2])), r"preds\[0\]\['scores'\] must be of shape \(1,\)"),
    (lambda p, t: p.update(labels=np.array([1.5])), r"preds\[0\]\['labels'\] must be integer class ids"),
    (lambda p, t: p.pop("scores"), r"preds\[0\] lacks the key\(s\) 'scores'"),
    (lambda p, t: t.update(boxes=np.array([[10, 0, 0, 10.0]])), r"labels\[0\]\['boxes'\] must have non-negative "
                                                                r"width and height"),
    (lambda p, t: t.update(iscrowd=np.array([2])), r"labels\[0\]\['iscrowd'\] must hold 0 or 1"),
    (lambda p, t: t.update(area=np.array([1.0, 2.0])), r"labels\[0\]\['area'\] must be of shape \(1,\)"),
    (lambda p, t: t.update(boxes=np.array([[0, 0, np.inf, 1]])), r"labels\[0\]\['boxes'\] contain infinite"),
])
def test_bad_input(change, message):
    p, t = good()
    change(p, t)
    m = CocoMAP()
    with pytest.raises(ValueError, match=f"^cocomap: {message}"):
        m.update([p], [t])
    assert m.n_images == 0


def test_bad_structure_and_arguments():
    p, t = good()
    m = CocoMAP()
    with pytest.raises(ValueError, match="cocomap: preds and labels must have one dict per image each; got 2 preds "
                                         "and 1 labels"):
        m.update([p, p], [t])
    with pytest.raises(ValueError, match="cocomap: preds and labels must be lists with one dict per image"):
        m.update(p, t)
    with pytest.raises(ValueError, match=r"cocomap: preds\[0\] must be a dict"):
        m.update([np.zeros(4)], [t])
    with pytest.raises(ValueError, match=r"cocomap: iou_thresholds must be a non-empty list of numbers in \[0, 1\]"):
        CocoMAP(iou_thresholds=[0.5, 1.5])
    with pytest.raises(ValueError, match="cocomap: box_format must be one of xyxy, xywh, cxcywh"):
        CocoMAP(box_format="yxyx")


def test_missing_pycocotools_names_the_pip_command(monkeypatch):
    for mod in ("pycocotools", "pycocotools.coco", "pycocotools.cocoeval"):
        monkeypatch.setitem(sys.modules, mod, None)  # import now raises ImportError
    with pytest.raises(ImportError, match=r"pip install 'ilit-metrics\[coco\]'"):
        CocoMAP()

