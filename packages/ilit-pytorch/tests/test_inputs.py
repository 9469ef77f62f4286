"""The inputs contract through ``tune``: a dict passed positionally, a dict of keywords, nested tuples."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import ilit
from ilit_pytorch.calibration import as_call, describe_inputs, dict_is_positional


class DictModel(nn.Module):
    """Takes the tokenizer-style dict whole, like a SentenceTransformer's ``forward(features)``."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, features):
        return self.fc2(torch.relu(self.fc1(features["pixels"] * features["mask"])))


class KeywordModel(nn.Module):
    """Takes the dict's entries as keyword arguments, like a Hugging Face model."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, pixels, mask=None):
        return self.fc2(torch.relu(self.fc1(pixels * mask)))


class NestedModel(nn.Module):
    """Takes a nested tuple ``((top, bottom), scale)``."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, halves, scale):
        top, bottom = halves
        return self.fc2(torch.relu(self.fc1(torch.cat([top, bottom], 1) * scale)))


def _flat(digits):
    return [(x.flatten(1), y) for x, y in digits[0]], [(x.flatten(1), y) for x, y in digits[1]]


def _as_dict(data):
    return [({"pixels": x, "mask": torch.ones_like(x)}, y) for x, y in data]


def _as_nested(data):
    return [(((x[:, :32], x[:, 32:]), torch.ones(1)), y) for x, y in data]


def _train(model, data, call):
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(4):
        for inputs, y in data:
            opt.zero_grad()
            nn.functional.cross_entropy(call(model, inputs), y).backward()
            opt.step()
    return model.eval()


def _tune(model, train, test, tmp_path):
    conf = {"framework": {"name": "pytorch"}, "calibration": {"iterations": [2]},
            "quantization": {"approach": "post_training_static_quant"},
            "tuning": {"metric": {"topk": 1}, "accuracy_criterion": {"relative": 0.02}, "objective": "performance",
                       "max_trials": 3, "workspace": {"path": str(tmp_path / "ws")}}}
    tuner = ilit.Tuner(conf)
    q = tuner.tune(model, q_dataloader=train, eval_dataloader=test)
    return tuner, q


CASES = {
    "dict_positional": (DictModel, _as_dict, lambda m, i: m(i)),
    "dict_keywords": (KeywordModel, _as_dict, lambda m, i: m(**i)),
    "nested_tuple": (NestedModel, _as_nested, lambda m, i: m(*i)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_structured_inputs_tune_evaluate_and_save(case, digits, tmp_path):
    cls, shape, call = CASES[case]
    train_flat, test_flat = _flat(digits)
    train, test = shape(train_flat), shape(test_flat)
    torch.manual_seed(0)
    model = _train(cls(), train, call)
    with torch.no_grad():
        fp32_acc = sum(int((call(model, i).argmax(1) == y).sum()) for i, y in test) / sum(len(y) for _, y in test)
    tuner, q = _tune(model, train, test, tmp_path)
    assert q is not None and tuner.best_trial.meets
    assert math.isclose(tuner.baseline_accuracy, fp32_acc)
    assert any(isinstance(m, torch.ao.nn.quantized.Linear) for m in q.modules())
    # the int8 model takes the same inputs the same way, and the saved one too
    inputs = test[0][0]
    with torch.no_grad():
        out = call(q, inputs)
    assert (out.argmax(1) == call(model, inputs).argmax(1)).float().mean() > 0.9
    best = tuner.adaptor.load(str(tmp_path / "ws" / "best_model"), model)
    with torch.no_grad():
        torch.testing.assert_close(call(best, inputs), out)


def test_dict_goes_positional_only_when_the_forward_cannot_take_its_keys():
    d = {"pixels": torch.zeros(1, 64), "mask": torch.ones(1, 64)}
    assert dict_is_positional(DictModel(), d)
    assert not dict_is_positional(KeywordModel(), d)
    assert as_call(DictModel(), d) == ((d,), {})
    args, kwargs = as_call(KeywordModel(), d)
    assert args == () and set(kwargs) == {"pixels", "mask"}
    # a 1-tuple always passes the dict positionally; numpy arrays become tensors at any depth
    import numpy as np
    args, _ = as_call(KeywordModel(), ((np.zeros(2), {"a": np.ones(1)}),))
    assert isinstance(args[0][0], torch.Tensor) and isinstance(args[0][1]["a"], torch.Tensor)


def test_failing_call_shows_the_batch_structure(digits, tmp_path):
    class WantsTwo(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(64, 10)

        def forward(self, a, b):
            return self.fc(a + b)

    train, test = _flat(digits)
    wrong = [({"x": x}, y) for x, y in test[:1]]
    assert describe_inputs(wrong[0][0]) == "dict{x: Tensor float32[100, 64]}"
    with pytest.raises(TypeError) as info:
        _tune(WantsTwo(), wrong, wrong, tmp_path)
    notes = "\n".join(getattr(info.value, "__notes__", []))
    assert "dict{x: Tensor float32[100, 64]}" in notes and "1 positional" in notes
