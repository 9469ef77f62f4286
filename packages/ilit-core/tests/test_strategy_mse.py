"""The ``mse`` strategy: ranking by per-op normalized MSE, fallback order, config-time errors, resume."""

import json
import math
import textwrap

import numpy as np
import pytest

import ilit
from ilit import ConfigError, StrategyContext, TuningSpace, load_config
from ilit.strategies.mse import MSEStrategy, normalized_mse, rank_by_added_error
from ilit.tune_cfg import fallback_ops
from ilit_toy import ToyAdaptor, make_chain_model, make_dataset


chain_model = make_chain_model


def dataset(model, n=256, batch=64, seed=1):
    """Inputs labelled by the FP32 model, clear-cut ones only, so plain 8-bit noise rarely flips a label."""
    return make_dataset(model, n=n, batch=batch, seed=seed)


def make_conf(ws, strategy="mse", schemes=("sym",), **tuning):
    return {
        "framework": {"name": "toy"},
        "calibration": {"iterations": [2], "algorithm": {"activation": "minmax"}},
        "quantization": {"weight": {"granularity": "per_channel", "scheme": list(schemes)},
                         "activation": {"dtype": "uint8", "scheme": "asym"}},
        "tuning": {"strategy": strategy, "metric": "toy_accuracy", "accuracy_criterion": {"relative": 0.01},
                   "objective": "modelsize", "workspace": {"path": str(ws)}, **tuning},
    }


FRAGILE = (3, 7)


@pytest.fixture
def chain():
    model = chain_model(10, FRAGILE)
    return model, dataset(model)


def strategy_for(model, data, conf):
    cfg = load_config(conf)
    adaptor = ToyAdaptor(cfg)
    space = TuningSpace.build(adaptor.query_fw_capability(model), cfg)
    ctx = StrategyContext(baseline=1.0, higher_is_better=True, adaptor=adaptor, model=model, calib_dataloader=data,
                          quantize=lambda c: adaptor.quantize(c, model, data), seed=0)
    return MSEStrategy(space, cfg, ctx), space


def test_mse_ranks_the_sensitive_ops_first(chain, tmp_path):
    model, data = chain
    strategy, space = strategy_for(model, data, make_conf(tmp_path))
    base = space.model_wise_configs()[0]
    errors = strategy.measure_errors(base)
    order = rank_by_added_error(space.ops, errors, space.fallback_candidates(base))
    assert set(order[:2]) == {f"op{i}" for i in FRAGILE}
    assert sorted(order) == sorted(space.ops)
    # the ops after a fragile one inherit its error: raw output error alone would not single it out
    assert errors["op4"] > 0.5 * errors["op3"]


def test_mse_tunes_by_falling_back_the_sensitive_ops_only(chain, tmp_path):
    model, data = chain
    tuner = ilit.Tuner(make_conf(tmp_path / "ws"))
    q = tuner.tune(model, data, eval_dataloader=data)
    assert q is not None
    trials = tuner.history.trials
    # 1 model-wise trial, then op3's fallback alone, then op3 + op7
    assert len(trials) == 3
    assert not trials[0].meets and fallback_ops(trials[0].tune_cfg) == []
    assert len(fallback_ops(trials[1].tune_cfg)) == 1 and fallback_ops(trials[1].tune_cfg)[0] in ("op3", "op7")
    assert sorted(fallback_ops(tuner.best_trial.tune_cfg)) == ["op3", "op7"]
    assert tuner.best_trial.accuracy >= 0.99


def test_normalized_mse_compares_ops_of_different_scale():
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, (192, 50))
    noisy = x + rng.normal(0, 0.1, x.shape)
    small = normalized_mse([x[:64], x[64:128], x[128:]], [noisy[:64], noisy[64:128], noisy[128:]])
    big = normalized_mse([1000 * x], [1000 * noisy])
    assert small == pytest.approx(big)
    assert small == pytest.approx(0.01, rel=0.2)
    assert normalized_mse([x], [x]) == 0.0
    assert normalized_mse([x], [2 * x]) > 0.5  # a scale error is an error (min-max normalizing each would hide it)
    assert math.isnan(normalized_mse([x], [x[:, :25]]))
    assert math.isnan(normalized_mse([], []))


def test_normalized_mse_sees_damage_hidden_by_an_outlier_channel():
    """Per-tensor uint8 quantization of a tensor with one huge channel wipes out the other channels."""
    rng = np.random.default_rng(0)
    x = np.abs(rng.normal(0, 1, (128, 16)))

    def quantize(t):
        step = t.max() / 255
        return np.round(t / step) * step

    outlier = x.copy()
    outlier[:, 0] *= 1000
    plain_err = normalized_mse([x], [quantize(x)])
    outlier_err = normalized_mse([outlier], [quantize(outlier)])
    assert outlier_err > 100 * plain_err
    assert outlier_err > 0.5  # most channels are lost
    # one variance for the whole tensor would call the outlier tensor's error small
    whole = np.mean((quantize(outlier) - outlier) ** 2) / np.var(outlier)
    assert whole < 0.01


def test_rank_by_added_error_discounts_inherited_error():
    ops = ["a", "b", "c", "d", "e"]
    nmse = {"a": 0.001, "b": 0.30, "c": 0.31, "d": 0.60, "e": math.nan}
    assert rank_by_added_error(ops, nmse, ops) == ["b", "d", "c", "a", "e"]
    assert rank_by_added_error(ops, nmse, ["a", "c", "e"]) == ["c", "a", "e"]


def _plugin(tmp_path, monkeypatch, name, body):
    """Install a one-module adaptor plugin through a real entry point (a dist-info on sys.path)."""
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(body))
    dist = tmp_path / f"{name}-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[ilit.adaptors]\n{name} = {name}:Adaptor\n"
                                           f"[ilit.model_modules]\nilit_toy = {name}:Adaptor\n")
    monkeypatch.syspath_prepend(str(tmp_path))


def test_adaptor_without_inspect_tensor_fails_at_config_time(chain, tmp_path, monkeypatch):
    _plugin(tmp_path, monkeypatch, "toy_noinspect", """
        from ilit import Adaptor as Base
        from ilit_toy import ToyAdaptor

        class Adaptor(ToyAdaptor):
            name = "toy_noinspect"
            inspect_tensor = Base.inspect_tensor  # i.e. not implemented
            quantized = 0

            def quantize(self, *a, **k):
                Adaptor.quantized += 1
                return super().quantize(*a, **k)
    """)
    model, data = chain
    conf = make_conf(tmp_path / "ws")
    conf["framework"]["name"] = "toy_noinspect"
    with pytest.raises(ConfigError) as err:
        ilit.Tuner(conf).tune(model, data, eval_dataloader=data)
    msg = str(err.value)
    assert msg.startswith("tuning.strategy:")
    assert "inspect_tensor" in msg and "toy_noinspect" in msg and "basic" in msg
    import toy_noinspect

    assert toy_noinspect.Adaptor.quantized == 0  # nothing was tuned
    assert not (tmp_path / "ws" / "history.json").exists()
    # the same adaptor works with basic
    conf["tuning"]["strategy"] = "basic"
    assert ilit.Tuner(conf).tune(model, data, eval_dataloader=data) is not None


def test_inspect_tensor_failing_at_run_time_does_not_end_tuning(chain, tmp_path, monkeypatch, caplog):
    _plugin(tmp_path, monkeypatch, "toy_badinspect", """
        from ilit_toy import ToyAdaptor

        class Adaptor(ToyAdaptor):
            name = "toy_badinspect"

            def inspect_tensor(self, *a, **k):
                raise RuntimeError("cannot hook this graph")
    """)
    model, data = chain
    conf = make_conf(tmp_path / "ws")
    conf["framework"]["name"] = "toy_badinspect"
    tuner = ilit.Tuner(conf)
    with caplog.at_level("WARNING", logger="ilit"):
        q = tuner.tune(model, data, eval_dataloader=data)
    assert q is not None
    assert sorted(fallback_ops(tuner.best_trial.tune_cfg)) == ["op3", "op7"]
    assert any("cannot hook this graph" in r.getMessage() for r in caplog.records)
    # it went on with Basic's one-op probe: model-wise, then single-op fallbacks
    assert len(tuner.history.trials) > 3


def test_when_the_error_ranking_misses_the_goal_mse_goes_on_probing(tmp_path, monkeypatch, caplog):
    """An inspect_tensor that blames only the last op, op5, and shows no other error: once the errors point
    nowhere and the goal is not met, MSE probes the remaining ops one at a time and finds op0 and op4."""
    _plugin(tmp_path, monkeypatch, "toy_misleading", """
        import numpy as np
        from ilit_toy import ToyAdaptor

        class Adaptor(ToyAdaptor):
            name = "toy_misleading"

            def inspect_tensor(self, model, dataloader, op_list, iteration_list):
                fp32 = [type(l)(l.name, l.W, l.b, l.relu) for l in model.layers]
                out = super().inspect_tensor(type(model)(fp32), dataloader, op_list, iteration_list)
                if any(l.quantized for l in model.layers):
                    out["op5"] = [o + 1.0 for o in out["op5"]]
                return out
    """)
    model = chain_model(6, (0, 4))
    data = dataset(model)
    conf = make_conf(tmp_path / "ws")
    conf["framework"]["name"] = "toy_misleading"
    tuner = ilit.Tuner(conf)
    with caplog.at_level("INFO", logger="ilit"):
        q = tuner.tune(model, data, eval_dataloader=data)
    assert q is not None
    seq = [fallback_ops(t.tune_cfg) for t in tuner.history.trials]
    assert seq[:2] == [[], ["op5"]]  # the (misled) ranking came first
    assert any("probing ops one at a time" in r.getMessage() for r in caplog.records)
    first = set(fallback_ops(tuner.best_trial.tune_cfg))
    assert {"op0", "op4"} <= first and len(first) <= 3  # at most one op more than needed (op5, blamed)
    # given a budget, the shrinking pass re-quantizes the op that was blamed wrongly
    conf2 = make_conf(tmp_path / "ws2", timeout=3600, max_trials=40)
    conf2["framework"]["name"] = "toy_misleading"
    budget = ilit.Tuner(conf2)
    assert budget.tune(model, data, eval_dataloader=data) is not None
    passing = [sorted(fallback_ops(t.tune_cfg)) for t in budget.history.trials if t.meets]
    assert passing[-1] == ["op0", "op4"]  # (the tuner returns the passing model of the smallest size)


def _sequence(path):
    with open(path) as f:
        return [t["tune_cfg"] for t in json.load(f)["trials"]]


def test_mse_resume_proposes_the_same_remaining_sequence(tmp_path):
    model = chain_model(12, (4, 6, 9))  # three fallbacks needed: a longer sequence to cut in two
    data = dataset(model)
    # two model-wise configs (sym, asym weights), then the MSE-ordered fallbacks
    full = ilit.Tuner(make_conf(tmp_path / "a", schemes=("sym", "asym")))
    assert full.tune(model, data, eval_dataloader=data) is not None
    seq_a = _sequence(full.history_path)
    assert len(seq_a) >= 5

    cut = ilit.Tuner(make_conf(tmp_path / "b", schemes=("sym", "asym"), max_trials=3))
    assert cut.tune(model, data, eval_dataloader=data) is None
    assert len(_sequence(cut.history_path)) == 3
    resumed = ilit.Tuner(make_conf(tmp_path / "c", schemes=("sym", "asym")))
    assert resumed.tune(model, data, eval_dataloader=data, resume_file=cut.history_path) is not None
    assert _sequence(resumed.history_path) == seq_a
