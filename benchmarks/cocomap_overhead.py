"""How much time ilit's ``cocomap`` metric adds over calling pycocotools' COCOeval directly.

The same synthetic detections (default: 5,000 images x 100 detections, 80 classes, ~7 ground-truth
boxes per image) are evaluated twice in one process:

- direct: the data already in COCO form (a ground-truth dataset dict and a list of detection dicts,
  built before the clock starts), then ``COCO()`` + ``createIndex`` + ``loadRes`` + ``COCOeval``
  ``evaluate/accumulate/summarize``: the least a user of COCOeval runs;
- cocomap: the per-image dicts of numpy arrays (torchmetrics convention) fed through
  ``CocoMAP.update`` in batches, then ``result()``: checking, converting to COCO form, and the same
  COCOeval calls.

It prints both times, their ratio and the overhead (target: <= 10%), and checks that the 12 COCO
numbers are identical. Times are the process's CPU time (``time.process_time``, less disturbed
than wall time by other load on a shared machine) and wall time. ``--repeat`` alternates the two
runs (and which goes first) and reports the best (minimum) of each, the usual estimate under noise.
Since both runs make the same COCOeval calls, it also times cocomap's own work alone (``update``
plus building the COCO structures): the part of the overhead that noise in the long COCOeval run
does not blur.

Needs ilit-metrics with the coco extra (pip install 'packages/ilit-metrics[coco]'). On a shared
machine, take the benchmark lock:

    flock /tmp/ilit-bench.lock python benchmarks/cocomap_overhead.py \
        [--images 5000] [--dets 100] [--batch 50] [--repeat 1]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import os
import platform
import time

import numpy as np


def make_data(n_images: int, n_dets: int, n_classes: int = 80, seed: int = 0):
    """Per-image dicts in the torchmetrics convention: xyxy boxes, scores, labels."""
    rng = np.random.default_rng(seed)
    preds, targets = [], []
    for _ in range(n_images):
        m = int(rng.integers(1, 15))
        xy = rng.uniform(0, 560, (m, 2))
        wh = np.exp(rng.uniform(np.log(8), np.log(400), (m, 2)))
        gt = np.c_[xy, xy + wh]
        labels = rng.integers(0, n_classes, m)
        k = min(n_dets, 3 * m)  # a few detections near each object, the rest anywhere
        src = rng.integers(0, m, k)
        near = gt[src] + rng.normal(0, 0.1, (k, 4)) * np.c_[wh[src], wh[src]]
        near[:, 2:] = np.maximum(near[:, 2:], near[:, :2] + 1)
        rest = n_dets - k
        rxy = rng.uniform(0, 600, (rest, 2))
        rand = np.c_[rxy, rxy + np.exp(rng.uniform(np.log(4), np.log(300), (rest, 2)))]
        d_labels = np.r_[np.where(rng.random(k) < 0.8, labels[src], rng.integers(0, n_classes, k)),
                         rng.integers(0, n_classes, rest)]
        scores = np.r_[rng.uniform(0.3, 1.0, k), rng.uniform(0.0, 0.6, rest)]
        preds.append({"boxes": np.r_[near, rand].astype(np.float32), "scores": scores.astype(np.float32),
                      "labels": d_labels})
        targets.append({"boxes": gt.astype(np.float32), "labels": labels})
    return preds, targets


def coco_form(preds, targets):
    """The same data as COCO's json structures (xywh boxes, 1-based image and annotation ids)."""
    images, anns, dets, cats = [], [], [], set()
    for img_id, (p, t) in enumerate(zip(preds, targets), start=1):
        images.append({"id": img_id})
        for (x1, y1, x2, y2), c in zip(t["boxes"].astype(np.float64).tolist(), t["labels"].tolist()):
            anns.append({"id": len(anns) + 1, "image_id": img_id, "bbox": [x1, y1, x2 - x1, y2 - y1],
                         "category_id": c, "iscrowd": 0, "area": (x2 - x1) * (y2 - y1)})
            cats.add(c)
        for (x1, y1, x2, y2), s, c in zip(p["boxes"].astype(np.float64).tolist(),
                                          p["scores"].astype(np.float64).tolist(), p["labels"].tolist()):
            dets.append({"image_id": img_id, "bbox": [x1, y1, x2 - x1, y2 - y1], "score": s, "category_id": c})
            cats.add(c)
    return {"images": images, "annotations": anns, "categories": [{"id": c} for c in sorted(cats)]}, dets


def run_direct(dataset, dets):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    w0, c0 = time.perf_counter(), time.process_time()
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = dataset
        gt.createIndex()
        ev = COCOeval(gt, gt.loadRes(dets), iouType="bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return time.process_time() - c0, time.perf_counter() - w0, np.asarray(ev.stats)


def run_cocomap(preds, targets, batch):
    from ilit_metrics import CocoMAP
    from ilit_metrics.coco import STAT_NAMES

    w0, c0 = time.perf_counter(), time.process_time()
    metric = CocoMAP()
    for i in range(0, len(preds), batch):
        metric.update(preds[i:i + batch], targets[i:i + batch])
    c_update = time.process_time() - c0
    metric.result()
    cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    c1 = time.process_time()
    metric.coco_structures()  # again, outside the totals: the conversion's own cost
    c_build = time.process_time() - c1
    return cpu, wall, c_update, c_build, np.array([metric.results()[k] for k in STAT_NAMES])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--dets", type=int, default=100, help="detections per image")
    ap.add_argument("--batch", type=int, default=50, help="images per update() call")
    ap.add_argument("--repeat", type=int, default=1, help="alternate the two runs this many times; report medians")
    args = ap.parse_args()

    from importlib.metadata import version

    print(f"load average (1, 5, 15 min) at start: {os.getloadavg()}")
    print(f"python {platform.python_version()}, numpy {np.__version__}, pycocotools "
          f"{version('pycocotools')}, ilit-metrics {version('ilit-metrics')}, {platform.machine()}")
    t = time.perf_counter()
    preds, targets = make_data(args.images, args.dets)
    n_gt = sum(len(tg["labels"]) for tg in targets)
    print(f"data: {args.images} images, {args.images * args.dets} detections ({args.dets} per image), "
          f"{n_gt} ground-truth boxes, 80 classes (made in {time.perf_counter() - t:.1f}s)")

    direct, ours, own = [], [], []  # (cpu, wall) per run; cocomap's own cpu work
    for r in range(args.repeat):
        def direct_run():
            dataset, dets = coco_form(preds, targets)  # fresh each time: loadRes writes into the dicts
            gc.collect()
            return run_direct(dataset, dets)

        def cocomap_run():
            gc.collect()
            return run_cocomap(preds, targets, args.batch)

        if r % 2 == 0:  # alternate which goes first, so neither gains from the order
            cd, wd, stats_direct = direct_run()
            cm, wm, cu, cb, stats_ours = cocomap_run()
        else:
            cm, wm, cu, cb, stats_ours = cocomap_run()
            cd, wd, stats_direct = direct_run()
        gc.collect()
        assert np.array_equal(stats_direct, stats_ours), (stats_direct, stats_ours)
        direct.append((cd, wd))
        ours.append((cm, wm))
        own.append((cu, cb))
        print(f"run {r + 1}: COCOeval direct {cd:.2f}s cpu / {wd:.2f}s wall | cocomap {cm:.2f}s cpu / {wm:.2f}s wall "
              f"(update {cu:.2f}s, building COCO structures {cb:.2f}s) | ratio {cm / cd:.3f} cpu, {wm / wd:.3f} wall")
    cd, wd = np.min(direct, axis=0)
    cm, wm = np.min(ours, axis=0)
    cu, cb = np.min(own, axis=0)
    print(f"mAP@[.50:.95] = {stats_direct[0]:.6f} (the 12 COCO numbers are identical from both)")
    print(f"best of {args.repeat}:")
    print(f"  COCOeval called directly:  {cd:8.2f} s cpu  {wd:8.2f} s wall")
    print(f"  cocomap (update + result): {cm:8.2f} s cpu  {wm:8.2f} s wall")
    print(f"  ratio cocomap / direct: {cm / cd:.3f} cpu, {wm / wd:.3f} wall -> overhead "
          f"{100 * (cm / cd - 1):+.1f}% cpu, {100 * (wm / wd - 1):+.1f}% wall (target <= +10%)")
    print(f"  cocomap's own work: update {cu:.2f} s + building the COCO structures {cb:.2f} s = {cu + cb:.2f} s cpu, "
          f"{100 * (cu + cb) / cd:.1f}% of the direct COCOeval time")
    print(f"load average (1, 5, 15 min) at end: {os.getloadavg()}")

if __name__ == "__main__":
    main()
