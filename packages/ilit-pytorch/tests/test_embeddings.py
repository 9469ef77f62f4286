"""Int8 weight-only nn.Embedding / nn.EmbeddingBag: in the capability, quantized per row, fallback, tune."""

from __future__ import annotations

import torch
from torch import nn

from conftest import make_adaptor, train, uniform_cfg

import ilit
from ilit.objectives import saved_size


class BagOfPixels(nn.Module):
    """Each pixel (position x intensity 0-16) is a token: an Embedding summed, an EmbeddingBag, a Linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(64 * 17, 32)
        self.bag = nn.EmbeddingBag(64 * 17, 32, mode="sum")
        self.head = nn.Linear(32, 10)

    def forward(self, ids):
        return self.head(torch.relu(self.emb(ids).sum(1) + self.bag(ids)))


def _tokens(data):
    """Token ids (int64), as a tokenizer gives them: position * 17 + intensity."""
    return [((x.flatten(1) * 16).round().long() + 17 * torch.arange(64), y) for x, y in data]


def _model(digits):
    torch.manual_seed(0)
    return train(BagOfPixels(), _tokens(digits[0]), epochs=3)


def test_embeddings_are_int8_weight_only_ops(digits):
    model = _model(digits)
    digits = (_tokens(digits[0]), _tokens(digits[1]))
    adaptor = make_adaptor()
    cap = adaptor.query_fw_capability(model)
    assert ("emb", "Embedding") in cap["op_wise"] and ("bag", "EmbeddingBag") in cap["op_wise"]
    q = adaptor.quantize(uniform_cfg(adaptor, model), model, digits[0])
    assert isinstance(q.emb, torch.ao.nn.quantized.Embedding)
    assert isinstance(q.bag, torch.ao.nn.quantized.EmbeddingBag)
    assert type(model.emb) is nn.Embedding  # the user's model untouched
    # per-row affine int8: each row within half a step of its own range
    w, qw = model.emb.weight.detach(), q.emb.weight().dequantize()
    step = (w.amax(1) - w.amin(1)) / 255
    assert bool(((qw - w).abs() <= step.unsqueeze(1) / 2 + 1e-4).all())
    assert not torch.equal(qw, w)
    # fallback keeps the float table
    fb = adaptor.quantize(uniform_cfg(adaptor, model, fallback=["emb"]), model, digits[0])
    assert type(fb.emb) is nn.Embedding and isinstance(fb.bag, torch.ao.nn.quantized.EmbeddingBag)
    assert saved_size(q, adaptor) <= 0.4 * saved_size(model, adaptor)


def test_dynamic_approach_quantizes_embeddings_too(digits):
    model = _model(digits)
    digits = (_tokens(digits[0]), _tokens(digits[1]))
    adaptor = make_adaptor({"quantization": {"approach": "post_training_dynamic_quant"}})
    cfg = uniform_cfg(adaptor, model, activation={"algorithm": "minmax"})
    q = adaptor.quantize(cfg, model, digits[0])
    assert isinstance(q.emb, torch.ao.nn.quantized.Embedding)
    assert isinstance(q.head, torch.ao.nn.quantized.dynamic.Linear)


def test_tune_with_embeddings(digits, tmp_path):
    model = _model(digits)
    digits = (_tokens(digits[0]), _tokens(digits[1]))
    conf = {"framework": {"name": "pytorch"}, "calibration": {"iterations": [2]},
            "quantization": {"approach": "post_training_static_quant"},
            "tuning": {"metric": {"topk": 1}, "accuracy_criterion": {"relative": 0.02}, "max_trials": 3,
                       "workspace": {"path": str(tmp_path / "ws")}}}
    tuner = ilit.Tuner(conf)
    q = tuner.tune(model, q_dataloader=digits[0], eval_dataloader=digits[1])
    assert q is not None and tuner.best_trial.meets
    assert isinstance(q.emb, torch.ao.nn.quantized.Embedding)
    best = tuner.adaptor.load(str(tmp_path / "ws" / "best_model"), model)
    x = digits[1][0][0]
    with torch.no_grad():
        torch.testing.assert_close(best(x), q(x))
