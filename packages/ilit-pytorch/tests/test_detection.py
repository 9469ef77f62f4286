"""Detection models through both usages: (a) eval_dataloader + ``cocomap`` + ``postprocess``, (b) eval_func.

The detector is tiny and hand-set, so its FP32 boxes are known exactly: two input channels (one per class)
holding 5x5 squares; a 5x5 mean filter peaks at each square's centre, and three 1x1-conv heads give raw
outputs (class heat-map logits, box sizes, centre offsets), decoded outside the model. Some images have no
square at all, and one batch is all empty. Quantized accuracies are checked against the same decoding and
cocomap run by hand on the returned model, never against fixed INT8 numbers.
"""

from __future__ import annotations

from typing import Any, Dict, List

import numpy as np
import pytest
import torch
from torch import nn

import ilit
from ilit_pytorch import PyTorchAdaptor

from ilit_metrics import CocoMAP  # cocomap needs pycocotools: ilit-metrics[coco], as the pytorch nox session installs

SIDE, SQUARE = 16, 5


class TinyDetector(nn.Module):
    """A shared trunk and three heads: forward returns the raw ``(heatmap, size, offset)``, or a dict of them."""

    def __init__(self, as_dict: bool = False) -> None:
        super().__init__()
        self.as_dict = as_dict
        self.trunk = nn.Conv2d(2, 2, SQUARE, padding=SQUARE // 2)
        self.relu = nn.ReLU()
        self.heatmap = nn.Conv2d(2, 2, 1)
        self.size = nn.Conv2d(2, 2, 1)
        self.offset = nn.Conv2d(2, 2, 1)
        with torch.no_grad():
            self.trunk.weight.zero_()
            for c in range(2):  # channel c: the mean of input channel c over a 5x5 window (1 at a square's centre)
                self.trunk.weight[c, c] = 1.0 / SQUARE ** 2
            self.trunk.bias.zero_()
            self.heatmap.weight.copy_(torch.eye(2).view(2, 2, 1, 1) * 20.0)
            self.heatmap.bias.fill_(-15.0)
            self.size.weight.zero_()
            self.size.bias.fill_(float(SQUARE))
            self.offset.weight.zero_()
            self.offset.bias.fill_(0.5)

    def forward(self, x: torch.Tensor) -> Any:
        f = self.relu(self.trunk(x))
        heads = (self.heatmap(f), self.size(f), self.offset(f))
        return dict(zip(("heatmap", "size", "offset"), heads)) if self.as_dict else heads


def decode(outputs: Any, min_score: float = 0.3) -> List[Dict[str, np.ndarray]]:
    """Raw head outputs of one batch -> cocomap's per-image ``{boxes, scores, labels}`` (3x3 peaks, stride 1)."""
    if isinstance(outputs, dict):
        outputs = (outputs["heatmap"], outputs["size"], outputs["offset"])
    heat, size, offset = (np.asarray(o, dtype=np.float64) for o in outputs)
    prob = 1.0 / (1.0 + np.exp(-heat))
    b, c, h, w = prob.shape
    padded = np.pad(prob, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=-1.0)
    peak = np.max(np.stack([padded[:, :, dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3)]), axis=0)
    out = []
    for i in range(b):
        cls, ys, xs = np.nonzero((prob[i] >= peak[i]) & (prob[i] > min_score))
        cx, cy = xs + offset[i, 0, ys, xs], ys + offset[i, 1, ys, xs]
        bw, bh = size[i, 0, ys, xs], size[i, 1, ys, xs]
        out.append({"boxes": np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], axis=1).reshape(-1, 4),
                    "scores": prob[i, cls, ys, xs], "labels": cls.astype(np.int64)})
    return out


def make_images(n: int, seed: int) -> List[Any]:
    """``n`` (image, target) pairs with 0..2 squares each (targets as tensors, as a torch Dataset gives them)."""
    rng = np.random.default_rng(seed)
    samples = []
    for i in range(n):
        img = torch.zeros(2, SIDE, SIDE)
        boxes, labels = [], []
        for _ in range(0 if i % 3 == 0 else int(rng.integers(1, 3))):
            x0, y0 = (int(v) for v in rng.integers(0, SIDE - SQUARE + 1, size=2))
            if any(x0 < b[2] + 2 and b[0] < x0 + SQUARE + 2 and y0 < b[3] + 2 and b[1] < y0 + SQUARE + 2
                   for b in boxes):
                continue  # no touching squares: each keeps its own peak
            c = int(rng.integers(0, 2))
            img[c, y0:y0 + SQUARE, x0:x0 + SQUARE] = 1.0
            boxes.append([x0, y0, x0 + SQUARE, y0 + SQUARE])
            labels.append(c)
        samples.append((img, {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                              "labels": torch.tensor(labels, dtype=torch.int64)}))
    return samples


def collate(samples: List[Any]) -> Any:
    """Images stacked, targets kept as a list of dicts (boxes differ in number, so they cannot be stacked)."""
    return torch.stack([s[0] for s in samples]), [s[1] for s in samples]


@pytest.fixture(scope="module")
def loader():
    samples = make_images(12, seed=0)
    empty = [(torch.zeros(2, SIDE, SIDE), {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)})
             for _ in range(4)]
    # a real torch DataLoader; the last batch holds images with no boxes only
    return torch.utils.data.DataLoader(samples + empty, batch_size=4, shuffle=False, collate_fn=collate)


def by_hand(model: nn.Module, loader: Any, decode: Any = decode) -> float:
    """COCO mAP@[.5:.95] of ``model``: run it, decode, score with cocomap, without ilit."""
    metric = CocoMAP()
    with torch.no_grad():
        for images, targets in loader:
            out = model(images)
            out = {k: v.numpy() for k, v in out.items()} if isinstance(out, dict) else [o.numpy() for o in out]
            metric.update(decode(out), [{k: v.numpy() for k, v in t.items()} for t in targets])
    return metric.result()


def config(tmp_path, usage: str, **tuning: Any) -> Dict[str, Any]:
    conf: Dict[str, Any] = {
        "framework": {"name": "pytorch"},
        "calibration": {"iterations": [2], "algorithm": {"activation": "minmax"}},
        "quantization": {"weight": {"scheme": "sym", "granularity": "per_channel"},
                         "activation": {"dtype": "uint8", "scheme": "asym"}},
        "tuning": {"accuracy_criterion": {"relative": 0.01}, "objective": "modelsize",
                   "workspace": {"path": str(tmp_path / usage)}, **tuning},
    }
    if usage == "a":
        conf["tuning"]["metric"] = {"cocomap": None}
    return conf


def test_the_hand_set_detector_finds_every_square(loader):
    """The fixture itself: FP32 decoding gives exactly the drawn boxes, so mAP is 1 (and the data has empty images)."""
    targets = [t for _, ts in loader for t in ts]
    assert sum(len(t["boxes"]) == 0 for t in targets) >= 5 and sum(len(t["boxes"]) for t in targets) >= 8
    assert by_hand(TinyDetector(), loader) == pytest.approx(1.0)


def test_evaluate_carries_several_outputs_and_box_targets(loader):
    """The adaptor feeds the metric each batch's outputs as numpy in the model's structure (a tuple of heads,
    or a dict), and the targets as the list of per-image dicts of numpy arrays, empty images included."""

    class Recorder(ilit.Metric):
        def __init__(self):
            self.reset()

        def reset(self):
            self.calls = []

        def update(self, preds, labels):
            self.calls.append((preds, labels))

        def result(self):
            return 0.0

    adaptor = PyTorchAdaptor(ilit.load_config({"framework": {"name": "pytorch"}}))
    for as_dict in (False, True):
        rec = Recorder()
        adaptor.evaluate(TinyDetector(as_dict), loader, rec)
        assert len(rec.calls) == len(loader)
        for (preds, labels), (images, targets) in zip(rec.calls, loader):
            heads = [preds[k] for k in ("heatmap", "size", "offset")] if as_dict else list(preds)
            assert isinstance(preds, dict if as_dict else tuple) and len(preds) == 3
            assert all(isinstance(h, np.ndarray) for h in heads)
            assert [h.shape for h in heads] == [(len(images), 2, SIDE, SIDE)] * 3
            assert isinstance(labels, list) and len(labels) == len(images)
            for got, want in zip(labels, targets):
                assert set(got) == {"boxes", "labels"} and isinstance(got["boxes"], np.ndarray)
                assert got["boxes"].shape == (len(want["boxes"]), 4)
                np.testing.assert_array_equal(got["boxes"], want["boxes"].numpy())
                np.testing.assert_array_equal(got["labels"], want["labels"].numpy())


@pytest.mark.parametrize("as_dict", [False, True], ids=["tuple-heads", "dict-heads"])
def test_usage_a_eval_dataloader_cocomap_postprocess(loader, tmp_path, as_dict):
    model = TinyDetector(as_dict)
    tuner = ilit.Tuner(config(tmp_path, "a", max_trials=3))
    q = tuner.tune(model, loader, eval_dataloader=loader, postprocess=decode)
    assert tuner.baseline_accuracy == pytest.approx(by_hand(model, loader)) == pytest.approx(1.0)
    assert q is not None and getattr(q, "_ilit_quantized", False)
    assert tuner.best_trial.accuracy == pytest.approx(by_hand(q, loader))
    assert tuner.best_trial.accuracy >= 0.99
    out = q(next(iter(loader))[0])  # the INT8 model still returns the raw heads, in FP32
    heads = [out[k] for k in ("heatmap", "size", "offset")] if as_dict else list(out)
    assert len(heads) == 3 and all(h.dtype == torch.float32 and not h.is_quantized for h in heads)


def test_usage_b_eval_func_matches_usage_a(loader, tmp_path):
    """An eval_func that decodes and scores itself sees the same numbers as usage (a), trial by trial."""
    model = TinyDetector()
    tuner_a = ilit.Tuner(config(tmp_path, "a", max_trials=2))
    tuner_a.tune(model, loader, eval_dataloader=loader, postprocess=decode)
    tuner_b = ilit.Tuner(config(tmp_path, "b", max_trials=2))
    q_b = tuner_b.tune(model, loader, eval_func=lambda m: by_hand(m, loader))
    assert q_b is not None
    assert tuner_b.baseline_accuracy == pytest.approx(tuner_a.baseline_accuracy)
    assert [t.tune_cfg for t in tuner_b.history.trials] == [t.tune_cfg for t in tuner_a.history.trials]
    assert [t.accuracy for t in tuner_b.history.trials] == pytest.approx([t.accuracy for t in tuner_a.history.trials])
    assert tuner_b.best_trial.accuracy == pytest.approx(by_hand(q_b, loader))


def test_a_detector_whose_heads_lose_accuracy_gets_them_back_by_fallback(loader, tmp_path):
    """A size head with a wide-range output (one channel ~1000, boxes read from the other) loses its box
    precision in INT8: the goal is met only by keeping that head in FP32, found through cocomap in usage (a)."""
    model = TinyDetector()
    with torch.no_grad():  # a second, useless channel makes the head's activation range 200x wider
        model.size.bias.copy_(torch.tensor([float(SQUARE), 1000.0]))

    def decode_square(outputs):
        heat, size, offset = outputs
        size = np.repeat(size[:, :1], 2, axis=1)  # boxes are square: the width channel only
        return decode((heat, size, offset))

    assert by_hand(model, loader, decode_square) == pytest.approx(1.0)
    tuner = ilit.Tuner(config(tmp_path, "a", max_trials=20))
    q = tuner.tune(model, loader, eval_dataloader=loader, postprocess=decode_square)
    assert q is not None
    first = tuner.history.trials[0]
    assert not first.meets and ilit.fallback_ops(first.tune_cfg) == []
    assert "size" in ilit.fallback_ops(tuner.best_trial.tune_cfg)
    assert tuner.best_trial.accuracy == pytest.approx(by_hand(q, loader, decode_square))
    assert tuner.best_trial.accuracy >= 0.99
