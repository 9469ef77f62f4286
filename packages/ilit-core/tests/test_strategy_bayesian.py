"""The ``bayesian`` strategy: seeded determinism, no repeats, exhaustion, meeting the goal, resume, errors."""

import json
import sys

import numpy as np
import pytest

import ilit
from ilit import StrategyContext, TuningSpace, cfg_fingerprint, load_config
from ilit.strategies.bayesian import BayesianStrategy
from ilit.tune_cfg import fallback_ops
from ilit_toy import ToyAdaptor, make_chain_model, make_dataset


chain_model = make_chain_model


def dataset(model, n=256, batch=64, seed=1):
    """Inputs labelled by the FP32 model, clear-cut ones only, so plain 8-bit noise rarely flips a label."""
    return make_dataset(model, n=n, batch=batch, seed=seed)


def make_conf(ws, seed=1978, wide=False, **tuning):
    """One model-wise config (each op: that choice or fp32); ``wide`` adds 2 schemes x 2 algorithms per op."""
    return {
        "framework": {"name": "toy"},
        "calibration": {"iterations": [2], "algorithm": {"activation": ["minmax", "percentile"] if wide else "minmax"}},
        "quantization": {"weight": {"granularity": "per_channel", "scheme": ["sym", "asym"] if wide else "sym"},
                         "activation": {"dtype": "uint8", "scheme": "asym"}},
        "tuning": {"strategy": "bayesian", "metric": "toy_accuracy", "accuracy_criterion": {"relative": 0.01},
                   "objective": "modelsize", "random_seed": seed, "workspace": {"path": str(ws)}, **tuning},
    }


FRAGILE = (2, 5)


@pytest.fixture(scope="module")
def chain():
    model = chain_model(8, FRAGILE)
    return model, dataset(model)


def tune(model, data, conf, **kw):
    tuner = ilit.Tuner(conf)
    q = tuner.tune(model, data, eval_dataloader=data, **kw)
    return tuner, q


@pytest.fixture
def proposals(monkeypatch):
    """Every config the strategy yields, as the tuner observes it (the tuner itself skips repeats)."""
    seen = []
    original = BayesianStrategy.observe

    def observe(self, tune_cfg, result):
        seen.append(cfg_fingerprint(tune_cfg))
        original(self, tune_cfg, result)

    monkeypatch.setattr(BayesianStrategy, "observe", observe)
    return seen


def sequence(tuner):
    return [cfg_fingerprint(t.tune_cfg) for t in tuner.history.trials]


def test_bayesian_meets_the_goal_on_the_synthetic_model(chain, tmp_path):
    model, data = chain
    tuner, q = tune(model, data, make_conf(tmp_path / "ws", max_trials=30))
    assert q is not None and tuner.best_trial.meets
    assert len(tuner.history.trials) <= 30
    assert {"op2", "op5"} <= set(fallback_ops(tuner.best_trial.tune_cfg))  # both fragile ops stay in fp32


def test_bayesian_keeps_improving_towards_the_fewest_fallbacks(chain, tmp_path):
    """With timeout > 0 it searches on after the first passing config, for one that quantizes more ops."""
    model, data = chain
    tuner, q = tune(model, data, make_conf(tmp_path / "ws", timeout=3600, max_trials=20))
    assert q is not None
    passing = [sorted(fallback_ops(t.tune_cfg)) for t in tuner.history.trials if t.meets]
    assert ["op2", "op5"] in passing  # the optimum (only the fragile ops in fp32) is found
    assert len(tuner.history.trials) == 20  # it went on searching after the first passing config
    best = tuner.best_trial  # the tuner returns the best *measured* objective (model size) among them
    assert all(best.objective <= t.objective for t in tuner.history.trials if t.meets)


def test_bayesian_is_deterministic_for_a_seed_and_differs_across_seeds(chain, tmp_path):
    model, data = chain
    runs = [sequence(tune(model, data, make_conf(tmp_path / f"ws{i}", seed=7, timeout=3600, max_trials=12))[0])
            for i in range(2)]
    assert runs[0] == runs[1] and len(runs[0]) == 12
    other = sequence(tune(model, data, make_conf(tmp_path / "other", seed=8, timeout=3600, max_trials=12))[0])
    assert other != runs[0]


def test_bayesian_never_repeats_and_stops_when_the_space_is_exhausted(tmp_path, proposals):
    model = chain_model(3, (1,))
    data = dataset(model)
    # 3 ops x {int8, fp32}, minus the all-fp32 config that is never tried: 7 configs
    tuner, q = tune(model, data, make_conf(tmp_path / "ws", timeout=3600, max_trials=100))
    fps = sequence(tuner)
    assert len(fps) == 7 and len(set(fps)) == 7
    assert proposals == fps  # it proposed each config once, then its generator ended
    assert q is not None


def test_bayesian_never_repeats_in_a_wide_space(chain, tmp_path, proposals):
    model, data = chain
    tuner, q = tune(model, data, make_conf(tmp_path / "ws", wide=True, timeout=3600, max_trials=25))
    fps = sequence(tuner)
    assert len(fps) == 25 and len(set(fps)) == 25  # 5^8 configs: the candidate pool is sampled
    assert proposals == fps
    assert q is not None
    assert {"op2", "op5"} <= set(fallback_ops(tuner.best_trial.tune_cfg))


def test_bayesian_resume_proposes_the_same_remaining_sequence(chain, tmp_path):
    model, data = chain
    full, _ = tune(model, data, make_conf(tmp_path / "a", timeout=3600, max_trials=14))
    cut, _ = tune(model, data, make_conf(tmp_path / "b", timeout=3600, max_trials=6))
    assert len(cut.history.trials) == 6
    resumed, _ = tune(model, data, make_conf(tmp_path / "c", timeout=3600, max_trials=14),
                      resume_file=cut.history_path)
    with open(full.history_path) as f:
        seq_a = [t["tune_cfg"] for t in json.load(f)["trials"]]
    with open(resumed.history_path) as f:
        seq_c = [t["tune_cfg"] for t in json.load(f)["trials"]]
    assert len(seq_a) == 14
    assert seq_c == seq_a


def test_missing_scikit_learn_is_a_clear_error_before_tuning(chain, tmp_path, monkeypatch):
    model, data = chain
    for name in [m for m in sys.modules if m == "sklearn" or m.startswith("sklearn.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "sklearn", None)  # import sklearn now raises ImportError
    with pytest.raises(ImportError, match=r"pip install 'ilit-core\[bayesian\]'"):
        tune(model, data, make_conf(tmp_path / "ws"))
    assert not (tmp_path / "ws" / "history.json").exists()


def test_encoding_round_trip_and_features(chain, tmp_path):
    model, data = chain
    cfg = load_config(make_conf(tmp_path, wide=True))
    adaptor = ToyAdaptor(cfg)
    space = TuningSpace.build(adaptor.query_fw_capability(model), cfg)
    ctx = StrategyContext(baseline=1.0, higher_is_better=True, adaptor=adaptor, model=model, calib_dataloader=data,
                          quantize=lambda c: adaptor.quantize(c, model, data), seed=0)
    s = BayesianStrategy(space, cfg, ctx)
    assert s.space_size == 5 ** 8  # per op: 2 weight schemes x 2 activation algorithms, or fp32
    for mw in space.model_wise_configs():
        vec = s.encode(mw)
        assert vec is not None and s.decode(vec) == mw
        assert s.quantized_share(vec)[0] == 1.0
    fb = space.with_fallback(space.model_wise_configs()[0], ["op2"])
    vec = s.encode(fb)
    assert s.decode(vec) == fb and s.quantized_share(vec)[0] == pytest.approx(7 / 8)
    feats = s.features(np.vstack([s.encode(fb), s.encode(space.model_wise_configs()[0])]))
    # per op: fallback flag + weight scheme (2) + activation algorithm (2)
    assert feats.shape == (2, 8 * 5)
    assert feats[0].sum() == feats[1].sum() - 1  # the fp32 op has only its fallback flag set
