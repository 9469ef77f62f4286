"""The Basic strategy end to end: ilit.Tuner with a YAML config, the topk metric and real digits data."""

import math

import torch
import yaml

from conftest import accuracy

import ilit
from ilit.tune_cfg import fallback_ops


def _config(tmp_path, **tuning):
    conf = {
        "framework": {"name": "pytorch"},
        "calibration": {"iterations": [2]},
        "quantization": {"approach": "post_training_static_quant",
                         "weight": {"granularity": "per_channel", "scheme": "sym"},
                         "activation": {"scheme": "asym", "algorithm": ["minmax", "kl"]}},
        "tuning": {"strategy": "basic", "metric": {"topk": 1}, "accuracy_criterion": {"relative": 0.01},
                   "objective": "performance", "workspace": {"path": str(tmp_path / "ws")}, **tuning},
    }
    path = tmp_path / "conf.yaml"
    path.write_text(yaml.safe_dump(conf))
    return str(path)


def test_basic_strategy_tunes_the_digits_cnn_to_int8(trained_cnn, digits, tmp_path):
    tuner = ilit.Tuner(_config(tmp_path))
    q = tuner.tune(trained_cnn, q_dataloader=digits[0], eval_dataloader=digits[1])
    assert q is not None and tuner.best_trial is not None and tuner.best_trial.meets
    base = tuner.baseline_accuracy
    assert math.isclose(base, accuracy(trained_cnn, digits[1]))
    assert accuracy(q, digits[1]) >= base * 0.99
    assert math.isclose(accuracy(q, digits[1]), tuner.best_trial.accuracy)
    assert any(isinstance(m, torch.ao.nn.quantized.Linear) for m in q.modules())
    assert tuner.adaptor.calibration_batches <= 2 * len(tuner.history.trials)
    best = tuner.adaptor.load(str(tmp_path / "ws" / "best_model"), model=trained_cnn)
    assert torch.equal(best(digits[1][0][0]), q(digits[1][0][0]))


class PairTiedNet(torch.nn.Module):
    """The digits CNN with each class score replaced by max(its own, the previous class's): on every row the top
    class ties exactly with the next one (in FP32 and INT8 alike, on any CPU), so the tie rule decides top-1."""

    def __init__(self, cnn: torch.nn.Module) -> None:
        super().__init__()
        self.cnn = cnn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.cnn(x)
        return torch.maximum(z, torch.roll(z, 1, dims=1))


def test_topk_1_inside_tune_equals_a_by_hand_argmax_on_tied_int8_logits(trained_cnn, digits, tmp_path):
    import copy

    model = PairTiedNet(copy.deepcopy(trained_cnn)).eval()
    tuner = ilit.Tuner(_config(tmp_path, accuracy_criterion={"relative": 0.5}, max_trials=1))
    q = tuner.tune(model, q_dataloader=digits[0], eval_dataloader=digits[1])
    assert q is not None and any(isinstance(m, torch.ao.nn.quantized.Linear) for m in q.modules())
    labels = torch.cat([y for _, y in digits[1]])
    for net, reported in ((model, tuner.baseline_accuracy), (q, tuner.best_trial.accuracy)):
        with torch.no_grad():
            scores = torch.cat([net(x) for x, _ in digits[1]])
        top = scores.max(1, keepdim=True).values
        assert bool(((scores == top).sum(1) >= 2).all())  # every row ties at the top
        by_hand = int((scores.argmax(1) == labels).sum()) / len(labels)  # torch's argmax: the first maximum
        assert reported == by_hand
        # the rule matters here: ranking the higher class id first among ties would score far lower
        last_max = scores.shape[1] - 1 - scores.flip(1).argmax(1)
        assert int((last_max == labels).sum()) / len(labels) < by_hand - 0.5


def test_basic_strategy_falls_back_ops_when_model_wise_configs_miss(trained_cnn, digits, tmp_path):
    # the score is minus the distance to the fp32 logits and no loss is allowed: only fp32 meets the goal,
    # so every model-wise config misses and the op-wise fallback phase runs
    x = torch.cat([xb for xb, _ in digits[1]])
    with torch.no_grad():
        ref = trained_cnn(x)

    def eval_func(model):
        with torch.no_grad():
            return -float(((model(x) - ref) ** 2).mean())

    tuner = ilit.Tuner(_config(tmp_path, accuracy_criterion={"absolute": 0.0}, max_trials=6))
    assert tuner.tune(trained_cnn, q_dataloader=digits[0], eval_func=eval_func) is None
    trials = tuner.history.trials
    assert len(trials) == 6
    assert [len(fallback_ops(t.tune_cfg)) for t in trials[:2]] == [0, 0]
    assert all(len(fallback_ops(t.tune_cfg)) >= 1 for t in trials[2:])
    assert all(t.error is None for t in trials)
    # statistics are collected once per algorithm, whatever falls back
    assert tuner.adaptor.calibration_batches == 2 * 2


class FragileNet(torch.nn.Module):
    """A digits net whose frozen 1x1 conv ``fragile`` is an identity plus one channel of -1000 weights.

    Per-tensor int8 weights give ``fragile`` a scale of ~1000/127, which rounds its identity weights to 0,
    so the net only keeps its accuracy with ``fragile`` in fp32 (or with per-channel weights).
    """

    def __init__(self) -> None:
        super().__init__()
        nn = torch.nn
        self.conv = nn.Conv2d(1, 16, 3, padding=1)
        self.fragile = nn.Conv2d(16, 16, 1)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.fc = nn.Linear(16 * 64, 10)
        self.relu = nn.ReLU()
        with torch.no_grad():
            w = torch.eye(16)
            w[15, :] = -1000.0
            self.fragile.weight.copy_(w[:, :, None, None])
            self.fragile.bias.zero_()
        self.fragile.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.fragile(self.relu(self.conv(x))))
        return self.fc(torch.flatten(self.relu(self.conv2(x)), 1))


def test_mse_strategy_ranks_the_fragile_conv_first_end_to_end(digits, tmp_path):
    from conftest import train

    torch.manual_seed(0)
    model = train(FragileNet(), digits[0], epochs=3)
    path = _config(tmp_path, strategy="mse", max_trials=10)
    conf = yaml.safe_load(open(path))
    conf["quantization"]["weight"]["granularity"] = "per_tensor"
    conf["quantization"]["activation"]["algorithm"] = "minmax"
    tuner = ilit.Tuner(conf)
    q = tuner.tune(model, q_dataloader=digits[0], eval_dataloader=digits[1])
    trials = tuner.history.trials
    assert not trials[0].meets  # the model-wise config collapses
    assert fallback_ops(trials[1].tune_cfg) == ["fragile"]  # inspect_tensor ranked it first
    assert q is not None and tuner.best_trial.meets and len(trials) == 2
    # really fp32: a float (fused conv-relu) module with float weights, not a quantized conv
    assert not isinstance(q.fragile, torch.ao.nn.quantized.Conv2d)
    assert q.fragile[0].weight.dtype == torch.float32 and isinstance(q.conv, torch.ao.nn.quantized.Conv2d)
    assert accuracy(q, digits[1]) >= 0.99 * tuner.baseline_accuracy
