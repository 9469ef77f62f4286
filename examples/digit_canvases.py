"""Detection data and post-processing shared by the detection demos: numpy and scikit-learn only, no framework.

Each image is a 48x48 canvas with 0 to 3 digits from scikit-learn's ``load_digits`` pasted at random positions
and scales (12 to 20 pixels), so every box (each digit's inked pixels) and class is known by construction.
Targets follow torchmetrics' convention, as ilit_metrics' ``cocomap`` takes them: one
``{"boxes": (M, 4) xyxy pixels, "labels": (M,)}`` dict per image. The detectors are CenterNet-shaped: class
heat-maps, box sizes and centre offsets on a 12x12 grid (stride 4); :func:`decode` turns those raw outputs
into boxes, outside the model.
"""

from __future__ import annotations

from typing import Any, Dict, List, Sequence, Tuple

import numpy as np

CANVAS = 48          # image side, pixels
STRIDE = 4           # the heads' output stride: a 12x12 grid
GRID = CANVAS // STRIDE
NUM_CLASSES = 10
MIN_SIDE, MAX_SIDE = 12, 20   # a pasted digit's side, pixels
Target = Dict[str, np.ndarray]          # {"boxes": (M, 4) xyxy pixels, "labels": (M,)}


def _resize_matrix(src: int, dst: int) -> np.ndarray:
    """(dst, src) bilinear interpolation weights, half-pixel centres (torch's ``align_corners=False``)."""
    pos = np.clip((np.arange(dst) + 0.5) * src / dst - 0.5, 0, src - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, src - 1)
    frac = pos - lo
    m = np.zeros((dst, src))
    np.add.at(m, (np.arange(dst), lo), 1 - frac)
    np.add.at(m, (np.arange(dst), hi), frac)
    return m


def _scaled(images: np.ndarray) -> Dict[int, np.ndarray]:
    """Every 8x8 digit (0..16) resized to each side in MIN_SIDE..MAX_SIDE (bilinear), in [0, 1]."""
    out = {}
    for side in range(MIN_SIDE, MAX_SIDE + 1):
        r = _resize_matrix(images.shape[-1], side)
        out[side] = np.einsum("ij,njk,lk->nil", r, images / 16.0, r).astype(np.float32)
    return out


def make_canvases(images: np.ndarray, classes: np.ndarray, n: int, seed: int,
                  max_digits: int = 3) -> Tuple[np.ndarray, List[Target]]:
    """``n`` canvases ``(n, 1, 48, 48)`` with 0..max_digits non-touching digits each, and their targets."""
    rng = np.random.default_rng(seed)
    scaled = _scaled(images)
    canvases = np.zeros((n, 1, CANVAS, CANVAS), dtype=np.float32)
    targets: List[Target] = []
    for i in range(n):
        boxes: List[List[float]] = []
        labels: List[int] = []
        for _ in range(int(rng.integers(0, max_digits + 1))):
            for _attempt in range(20):
                side = int(rng.integers(MIN_SIDE, MAX_SIDE + 1))
                x0, y0 = (int(v) for v in rng.integers(0, CANVAS - side + 1, size=2))
                k = int(rng.integers(len(images)))
                patch = scaled[side][k]
                ys, xs = np.nonzero(patch > 0.25)
                box = [x0 + xs.min(), y0 + ys.min(), x0 + xs.max() + 1, y0 + ys.max() + 1]
                if all(box[0] >= b[2] + 1 or box[2] + 1 <= b[0] or box[1] >= b[3] + 1 or box[3] + 1 <= b[1]
                       for b in boxes):
                    region = canvases[i, 0, y0:y0 + side, x0:x0 + side]
                    np.maximum(region, patch, out=region)
                    boxes.append([float(v) for v in box])
                    labels.append(int(classes[k]))
                    break
        targets.append({"boxes": np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
                        "labels": np.asarray(labels, dtype=np.int64)})
    return np.clip(canvases, 0.0, 1.0), targets


def detection_arrays(n_train: int = 2000, n_test: int = 300,
                     seed: int = 0) -> Tuple[np.ndarray, List[Target], np.ndarray, List[Target]]:
    """Train and test canvases (N, 1, 48, 48) with their targets, built from disjoint sets of digits."""
    from sklearn.datasets import load_digits

    d = load_digits()
    order = np.random.default_rng(seed).permutation(len(d.target))
    split = int(0.75 * len(order))
    tr, te = order[:split], order[split:]
    x_tr, t_tr = make_canvases(d.images[tr], d.target[tr], n_train, seed + 1)
    x_te, t_te = make_canvases(d.images[te], d.target[te], n_test, seed + 2)
    return x_tr, t_tr, x_te, t_te


def encode(targets: Sequence[Target]) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """CenterNet training targets (N, C, 12, 12): Gaussian heat-maps, size/offset at each box's centre cell, mask."""
    g = CANVAS // STRIDE
    n = len(targets)
    heat = np.zeros((n, NUM_CLASSES, g, g), dtype=np.float32)
    size = np.zeros((n, 2, g, g), dtype=np.float32)
    offset = np.zeros((n, 2, g, g), dtype=np.float32)
    mask = np.zeros((n, 1, g, g), dtype=np.float32)
    yy, xx = np.mgrid[0:g, 0:g]
    for i, t in enumerate(targets):
        for (x0, y0, x1, y1), c in zip(t["boxes"], t["labels"]):
            cx, cy = (x0 + x1) / 2 / STRIDE, (y0 + y1) / 2 / STRIDE
            ix, iy = min(int(cx), g - 1), min(int(cy), g - 1)
            sigma = max((x1 - x0), (y1 - y0)) / STRIDE / 6 + 0.3
            heat[i, c] = np.maximum(heat[i, c], np.exp(-((xx - ix) ** 2 + (yy - iy) ** 2) / (2 * sigma ** 2)))
            size[i, :, iy, ix] = ((x1 - x0) / STRIDE, (y1 - y0) / STRIDE)
            offset[i, :, iy, ix] = (cx - ix, cy - iy)
            mask[i, 0, iy, ix] = 1.0
    return heat, size, offset, mask


def _nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """Greedy NMS; the indices kept, best score first."""
    order = np.argsort(-scores, kind="stable")
    keep: List[int] = []
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    while order.size:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        w = np.clip(np.minimum(boxes[i, 2], boxes[rest, 2]) - np.maximum(boxes[i, 0], boxes[rest, 0]), 0, None)
        h = np.clip(np.minimum(boxes[i, 3], boxes[rest, 3]) - np.maximum(boxes[i, 1], boxes[rest, 1]), 0, None)
        inter = w * h
        order = rest[inter / (area[i] + area[rest] - inter + 1e-9) <= iou]
    return np.asarray(keep, dtype=np.int64)


def decode(outputs: Sequence[Any], top_k: int = 20, min_score: float = 0.05,
           nms_iou: float = 0.5) -> List[Dict[str, np.ndarray]]:
    """The raw head outputs of one batch (numpy or tensors) -> one ``{boxes, scores, labels}`` dict per image.

    Peaks of the sigmoid heat-map (3x3 local maxima), their box from the size and offset heads, then
    class-agnostic NMS: cocomap's input, in torchmetrics' convention (boxes xyxy in pixels).
    """
    heat, size, offset = (np.asarray(o.detach() if hasattr(o, "detach") else o, dtype=np.float32) for o in outputs)
    prob = 1.0 / (1.0 + np.exp(-heat))
    b, c, g, _ = prob.shape
    padded = np.pad(prob, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=-1.0)
    local_max = np.max(np.stack([padded[:, :, dy:dy + g, dx:dx + g] for dy in range(3) for dx in range(3)]), axis=0)
    peaks = np.where(prob >= local_max, prob, 0.0).reshape(b, -1)
    results = []
    for i in range(b):
        idx = np.argsort(-peaks[i], kind="stable")[:top_k]
        idx = idx[peaks[i, idx] > min_score]
        cls, rem = np.divmod(idx, g * g)
        ys, xs = np.divmod(rem, g)
        cx = (xs + offset[i, 0, ys, xs]) * STRIDE
        cy = (ys + offset[i, 1, ys, xs]) * STRIDE
        w = np.maximum(size[i, 0, ys, xs], 0) * STRIDE
        h = np.maximum(size[i, 1, ys, xs], 0) * STRIDE
        boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1).astype(np.float32)
        scores = peaks[i, idx].astype(np.float32)
        keep = _nms(boxes, scores, nms_iou)
        results.append({"boxes": boxes[keep], "scores": scores[keep], "labels": cls[keep].astype(np.int64)})
    return results


def isa() -> str:
    """The widest x86 INT8 feature of this CPU: amx, avx512_vnni or avx2."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = f.read()
    except OSError:
        return "unknown"
    return next((name for flag, name in (("amx_int8", "amx"), ("avx512_vnni", "avx512_vnni"), ("avx2", "avx2"))
                 if flag in flags), "other")
