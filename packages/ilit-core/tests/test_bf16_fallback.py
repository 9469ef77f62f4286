"""bf16 fallback (issue 15 §3): a per-op fallback dtype beside fp32, offered only where the capability lists it.

The toy adaptor stands in for a bf16-capable CPU when ``ToyModel.bf16`` is set: its bf16 layers really
compute with bf16-rounded weights, inputs and outputs (numpy emulation), so these tests need no framework.
"""

import json

import numpy as np
import pytest

import ilit
from ilit import StrategyContext, TuningSpace, load_config
from ilit.strategies.bayesian import BayesianStrategy
from ilit.tune_cfg import bf16_ops, cfg_fingerprint, describe, fallback_ops, is_quantized, quantized_ops
from ilit_toy import ToyAdaptor, make_chain_model, make_dataset
from ilit_toy.model import to_bf16

STRATEGIES = ("basic", "mse", "bayesian")


def _cap(names, bf16=(), fp32=True):
    """Dense-like ops; the ones in ``bf16`` also offer bf16 fallback."""
    out = {}
    for n in names:
        half = ["bf16"] if n in bf16 else []
        tail = ["fp32"] if fp32 else []
        out[(n, "Dense")] = {
            "weight": {"dtype": ["int8", *half, *tail], "scheme": ["sym"], "granularity": ["per_channel"],
                       "algorithm": ["minmax"]},
            "activation": {"dtype": ["uint8", *half, *tail], "scheme": ["asym"], "granularity": ["per_tensor"],
                           "algorithm": ["minmax", "kl"]}}
    return {"op_wise": out}


def _conf(**tuning):
    return load_config({"framework": {"name": "toy"}, "calibration": {"iterations": [2]},
                        "tuning": {"accuracy_criterion": {"relative": 0.01}, **tuning}})


# ----------------------------------------------------------------------------- the space and the tune_cfg
def test_space_offers_bf16_before_fp32_only_where_the_capability_lists_it():
    forced = {"b": {"weight": {"dtype": "fp32"}, "activation": {"dtype": "fp32"}}}
    space = TuningSpace.build(_cap(["a", "b", "c"], bf16={"a", "b"}), _conf(ops=forced))
    a = space.op_choices["a"]
    assert a[-2] == {"weight": {"dtype": "bf16"}, "activation": {"dtype": "bf16"}}
    assert a[-1] == {"weight": {"dtype": "fp32"}, "activation": {"dtype": "fp32"}}  # fp32 stays last
    assert all(is_quantized(c) for c in a[:-2])
    assert space.can_bf16("a") and not space.can_bf16("c")
    assert not space.can_bf16("b")  # forced to fp32 by the user: no bf16 choice
    assert space.fallback_dtypes(["a", "c"]) == ["bf16", "fp32"] and space.fallback_dtypes(["c"]) == ["fp32"]
    base = space.model_wise_configs()[0]
    cfg = space.with_fallback(base, ["a", "c"], dtype="bf16")
    assert cfg["ops"]["a"]["activation"] == {"dtype": "bf16"} and cfg["ops"]["a"]["weight"] == {"dtype": "bf16"}
    assert cfg["ops"]["c"]["activation"] == {"dtype": "fp32"}  # c has no bf16: fp32 instead
    assert space.with_fallback(base, ["a"])["ops"]["a"]["activation"] == {"dtype": "fp32"}  # the default is fp32
    assert bf16_ops(cfg) == ["a"] and fallback_ops(cfg) == ["a", "b", "c"] and quantized_ops(cfg) == []


def test_bf16_needs_fp32_beside_it_and_is_never_a_model_wise_choice():
    cap = _cap(["a", "b"], bf16={"a"})
    cap["op_wise"][("b", "Dense")]["weight"]["dtype"] = ["int8", "bf16"]  # bf16 on one tensor only
    cap["op_wise"][("b", "Dense")]["activation"]["dtype"] = ["uint8", "bf16"]
    space = TuningSpace.build(cap, _conf())
    assert not space.can_bf16("b")  # without fp32 beside it, b cannot fall back at all
    for cfg in space.model_wise_configs():
        assert quantized_ops(cfg) == ["a", "b"] and not bf16_ops(cfg)


def test_without_bf16_the_space_and_its_fingerprints_are_unchanged():
    """A capability listing bf16 changes no model-wise config; one without it builds exactly the old space."""
    plain = TuningSpace.build(_cap(["a", "b"]), _conf())
    with_bf16 = TuningSpace.build(_cap(["a", "b"], bf16={"a", "b"}), _conf())
    assert [cfg_fingerprint(c) for c in plain.model_wise_configs()] == [
        cfg_fingerprint(c) for c in with_bf16.model_wise_configs()]
    assert all(c["activation"]["dtype"] != "bf16" for ch in plain.op_choices.values() for c in ch)
    base = plain.model_wise_configs()[0]
    # fp32 fallback writes the same entries whether or not bf16 is offered
    assert plain.with_fallback(base, ["a"]) == with_bf16.with_fallback(base, ["a"])


def test_describe_names_bf16_and_fp32_fallbacks_apart():
    space = TuningSpace.build(_cap(["a", "b", "c"], bf16={"a"}), _conf())
    base = space.model_wise_configs()[0]
    cfg = space.with_fallback(space.with_fallback(base, ["a"], "bf16"), ["c"])
    text = describe(cfg)
    assert "int8 ops=1" in text and "bf16 fallback=1 (a)" in text and "fp32 fallback=1 (c)" in text
    assert "bf16" not in describe(space.with_fallback(base, ["a", "c"]))  # no bf16 op: the line is as before


def test_bayesian_counts_a_bf16_op_as_half_quantized_and_as_a_fallback():
    conf = _conf(strategy="bayesian")
    space = TuningSpace.build(_cap(["a", "b"], bf16={"a", "b"}), conf)
    ctx = StrategyContext(baseline=1.0, higher_is_better=True, adaptor=None, model=None, calib_dataloader=[],
                          quantize=lambda c: None, seed=0)
    s = BayesianStrategy(space, conf, ctx)
    base = space.model_wise_configs()[0]
    vecs = np.stack([s.encode(c) for c in (base, space.with_fallback(base, ["a"], "bf16"),
                                           space.with_fallback(base, ["a"]),
                                           space.with_fallback(base, ["a", "b"], "bf16"))])
    assert s.quantized_share(vecs).tolist() == [1.0, 0.75, 0.5, 0.5]
    assert s._n_fallback(vecs).tolist() == [0, 1, 1, 2]
    assert s._all_fp32(vecs).tolist() == [False, False, False, True]  # no int8 op left: not proposed


# ----------------------------------------------------------------------------- the toy, end to end
def toy_conf(ws, strategy, **tuning):
    return {
        "framework": {"name": "toy"},
        "calibration": {"iterations": [2], "algorithm": {"activation": "minmax"}},
        "quantization": {"weight": {"granularity": "per_channel", "scheme": "sym"},
                         "activation": {"dtype": "uint8", "scheme": "asym"}},
        "tuning": {"strategy": strategy, "metric": "toy_accuracy", "accuracy_criterion": {"relative": 0.01},
                   "objective": "modelsize", "random_seed": 5, "workspace": {"path": str(ws)}, **tuning},
    }


def fragile_chain(bf16, fragile_bf16=()):
    """8 ops, op2 and op5 quantize badly; ``bf16``: the toy offers bf16 fallback."""
    model = make_chain_model(8, fragile=(2, 5))
    model.bf16 = bf16
    for i in fragile_bf16:
        model.layers[i].fragile_bf16 = True
    return model, make_dataset(model, n=256, batch=64)


def tune(model, data, conf, **kwargs):
    tuner = ilit.Tuner(conf)
    return tuner, tuner.tune(model, data, eval_dataloader=data, **kwargs)


def test_toy_capability_lists_bf16_only_on_a_bf16_model():
    conf = load_config({"framework": {"name": "toy"}})
    for flag in (False, True):
        model, _ = fragile_chain(flag)
        cap = ToyAdaptor(conf).query_fw_capability(model)
        for op in cap["op_wise"].values():
            assert ("bf16" in op["weight"]["dtype"]) is flag and ("bf16" in op["activation"]["dtype"]) is flag


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_falls_the_fragile_ops_back_to_bf16_first(tmp_path, strategy):
    model, data = fragile_chain(True)
    tuner, q = tune(model, data, toy_conf(tmp_path / "bf16", strategy))
    assert q is not None
    best = tuner.best_trial.tune_cfg
    assert {"op2", "op5"} <= set(bf16_ops(best)) and not set(fallback_ops(best)) - set(bf16_ops(best))
    # every fallback tried was bf16: bf16 fixed it, so no fp32 pass ran
    assert all(set(fallback_ops(t.tune_cfg)) == set(bf16_ops(t.tune_cfg)) for t in tuner.history.trials)
    # the returned model really computes those ops in bf16: weights on the bf16 grid, outputs as by hand
    x = data[0][0]
    h = x
    for ref, layer in zip(model.layers, q.layers):
        if layer.name in bf16_ops(best):
            assert layer.bf16 and np.array_equal(layer.W, to_bf16(ref.W))
            by_hand = to_bf16(to_bf16(h) @ to_bf16(ref.W) + to_bf16(ref.b))
            by_hand = np.maximum(by_hand, 0) if ref.relu else by_hand
            out = layer.forward(h)
            assert np.array_equal(out, by_hand)
            exact = h @ ref.W + ref.b
            exact = np.maximum(exact, 0) if ref.relu else exact
            assert np.abs(out - exact).max() <= 2 ** -6 * np.abs(exact).max()  # bf16 rounding, not int8's error
        h = layer.forward(h)
    # the same search without bf16 falls back the same ops to fp32, in no fewer trials
    plain_model, plain_data = fragile_chain(False)
    plain, _ = tune(plain_model, plain_data, toy_conf(tmp_path / "fp32", strategy))
    assert set(fallback_ops(plain.best_trial.tune_cfg)) == set(fallback_ops(best))
    assert not bf16_ops(plain.best_trial.tune_cfg)
    assert len(tuner.history.trials) <= len(plain.history.trials)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_fp32_fallback_runs_when_bf16_is_not_enough(tmp_path, strategy):
    model, data = fragile_chain(True, fragile_bf16=(5,))  # op5 is as bad in bf16 as in int8
    tuner, q = tune(model, data, toy_conf(tmp_path / "ws", strategy, max_trials=60))
    assert q is not None
    best = tuner.best_trial.tune_cfg
    assert "op5" in fallback_ops(best) and "op5" not in bf16_ops(best)  # fp32 for it in the end
    trials = tuner.history.trials
    fp32_tried = [i for i, t in enumerate(trials) if set(fallback_ops(t.tune_cfg)) - set(bf16_ops(t.tune_cfg))]
    bf16_tried = [i for i, t in enumerate(trials) if bf16_ops(t.tune_cfg)]
    assert fp32_tried and bf16_tried and min(bf16_tried) < min(fp32_tried)  # bf16 was tried first
    if strategy != "bayesian":  # the GP may mix them afterwards; the fallback search passes do not
        assert max(bf16_tried) < min(fp32_tried)


def test_bf16_history_resumes_exactly_and_the_model_saves_and_loads(tmp_path):
    model, data = fragile_chain(True)
    full, q = tune(model, data, toy_conf(tmp_path / "full", "basic"))
    expected = [t.tune_cfg for t in full.history.trials]
    assert any(bf16_ops(c) for c in expected) and len(expected) >= 3
    part, none = tune(model, data, toy_conf(tmp_path / "part", "basic", max_trials=len(expected) - 1))
    assert none is None
    resumed, q2 = tune(model, data, toy_conf(tmp_path / "resumed", "basic"), resume_file=part.history_path)
    with open(resumed.history_path) as f:
        assert [t["tune_cfg"] for t in json.load(f)["trials"]] == expected
    assert resumed.adaptor.quantize_calls == 1  # only the last trial ran again
    assert q2 is not None and resumed.best_trial.tune_cfg == full.best_trial.tune_cfg
    adaptor = ToyAdaptor(load_config({"framework": {"name": "toy"}}))
    adaptor.save(q, str(tmp_path / "saved"))
    loaded = adaptor.load(str(tmp_path / "saved"))
    assert [layer.bf16 for layer in loaded.layers] == [layer.bf16 for layer in q.layers]
    assert np.array_equal(loaded(data[0][0]), q(data[0][0]))


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_with_a_budget_the_fp32_result_puts_back_in_bf16_what_bf16_can_hold(tmp_path, strategy):
    model, data = fragile_chain(True, fragile_bf16=(5,))  # op2 is fine in bf16, op5 needs fp32
    first, _ = tune(model, data, toy_conf(tmp_path / "first", strategy, max_trials=60))
    assert not bf16_ops(first.best_trial.tune_cfg)  # timeout 0: the first passing config, all fp32
    budget, q = tune(model, data, toy_conf(tmp_path / "budget", strategy, max_trials=60, timeout=3600))
    best = budget.best_trial.tune_cfg
    assert bf16_ops(best) == ["op2"] and fallback_ops(best) == ["op2", "op5"]
    passing = [t for t in budget.history.trials if t.meets]
    assert not bf16_ops(passing[0].tune_cfg)  # found in fp32 first, then op2 moved to bf16
    assert q.layers[2].bf16 and not q.layers[5].bf16 and not q.layers[5].quantized
