"""Failing user code: a bad trial is recorded and skipped, a bad baseline stops at once, Ctrl-C keeps the history."""

import json
import math

import numpy as np
import pytest

import ilit
from ilit_toy import accuracy


def many_trials(conf, **tuning):
    """A config whose search runs several trials: two calibration sizes, timeout > 0, no metric (eval_func)."""
    c = conf(calibration={"iterations": [2, 3, 4], "algorithm": {"activation": "minmax"}})
    c["tuning"].update({"timeout": 600, "max_trials": 4, **tuning})
    del c["tuning"]["metric"]
    return c


def saved_trials(tuner):
    with open(tuner.history_path) as f:
        return json.load(f)["trials"]


@pytest.mark.parametrize("bad, message", [
    (RuntimeError("CUDA out of memory"), "RuntimeError: CUDA out of memory"),
    (float("nan"), "ValueError: eval_func returned nan; it must return a finite number"),
    ("0.93", "ValueError: eval_func returned '0.93' (str); it must return a number"),
    (None, "ValueError: eval_func returned None (NoneType); it must return a number"),
    (np.array([0.9, 0.8]), "ValueError: eval_func returned ndarray that is not one number"),
], ids=["raises", "nan", "string", "none", "array"])
def test_a_failing_eval_func_fails_that_trial_only(easy_toy, conf, bad, message):
    model, data = easy_toy
    calls = []

    def eval_func(m):
        calls.append(m)
        if len(calls) == 3:  # the second quantized trial
            if isinstance(bad, Exception):
                raise bad
            return bad
        return accuracy(m, data)

    tuner = ilit.Tuner(many_trials(conf))
    q = tuner.tune(model, data, eval_func=eval_func)
    trials = saved_trials(tuner)
    assert len(trials) == 3 and len(calls) == 4  # baseline + 3 trials: tuning went on after the failure
    failed = trials[1]
    assert failed["error"].startswith(message) and failed["meets"] is False and failed["accuracy"] is None
    assert trials[0]["error"] is None and trials[2]["error"] is None and trials[2]["meets"]
    assert q is not None and tuner.best_trial.trial in (1, 3)


def test_a_failing_q_func_fails_that_trial_only(easy_toy, conf):
    model, data = easy_toy
    runs = []

    def q_func(m):
        runs.append(m)
        if len(runs) == 2:
            raise ValueError("loss diverged")
        m.layers[0].b = m.layers[0].b + 0.0  # the user's "training" touches only the copy it is given

    c = many_trials(conf)
    c["quantization"]["approach"] = "quant_aware_training"
    tuner = ilit.Tuner(c)
    before = model.layers[0].b.copy()
    tuner.tune(model, data, q_func=q_func, eval_func=lambda m: accuracy(m, data))
    trials = saved_trials(tuner)
    assert [t["error"] for t in trials] == [None, "ValueError: loss diverged", None]
    assert all(r is not model for r in runs) and np.array_equal(model.layers[0].b, before)


def test_a_failing_baseline_stops_at_once_with_that_error(easy_toy, conf):
    model, data = easy_toy
    boom = KeyError("label_ids")

    def eval_func(m):
        raise boom

    tuner = ilit.Tuner(many_trials(conf))
    with pytest.raises(KeyError) as e:
        tuner.tune(model, data, eval_func=eval_func)
    assert e.value is boom  # the user's own exception, untouched
    assert tuner.adaptor.quantize_calls == 0


def test_a_nan_baseline_stops_at_once(easy_toy, conf):
    model, data = easy_toy
    tuner = ilit.Tuner(many_trials(conf))
    with pytest.raises(ValueError, match="eval_func returned nan"):
        tuner.tune(model, data, eval_func=lambda m: math.nan)
    assert tuner.adaptor.quantize_calls == 0


def test_every_trial_failing_is_an_error_naming_the_first(easy_toy, conf):
    model, data = easy_toy
    calls = []

    def eval_func(m):
        calls.append(m)
        if len(calls) > 1:
            raise RuntimeError(f"bad batch {len(calls) % 2}")  # two errors alternating: never 3 alike in a row
        return 1.0

    with pytest.raises(RuntimeError, match="every trial failed; the first error was: RuntimeError: bad batch 0"):
        ilit.Tuner(many_trials(conf)).tune(model, data, eval_func=eval_func)
    assert len(calls) == 1 + 3  # the baseline, then all 3 configs of the space: errors that differ never stop it


def test_the_same_error_in_consecutive_trials_stops_tuning_early(easy_toy, conf, tmp_path):
    model, data = easy_toy
    calls = []

    def eval_func(m):
        calls.append(m)
        if len(calls) > 1:
            raise RuntimeError("labels of the wrong shape")
        return 1.0

    tuner = ilit.Tuner(many_trials(conf))
    with pytest.raises(ilit.RepeatedTrialError, match="the same error ended the last 3 trials.*wrong shape"):
        tuner.tune(model, data, eval_func=eval_func)
    assert len(tuner.history.trials) == ilit.run.REPEATED_ERRORS and len(calls) == 1 + ilit.run.REPEATED_ERRORS
    saved = json.loads((tmp_path / "ws" / "history.json").read_text())
    assert len(saved["trials"]) == 3 and saved["finished"] and "3 trials in a row" in saved["stop_reason"]


def test_an_error_between_passing_trials_does_not_stop_tuning(easy_toy, conf):
    model, data = easy_toy
    calls = []

    def eval_func(m):
        calls.append(m)
        if len(calls) % 3 == 0:  # every third trial fails alike, never three in a row
            raise RuntimeError("flaky")
        return 0.0 if len(calls) > 1 else 1.0  # below the goal: the search goes on

    tuner = ilit.Tuner(many_trials(conf, max_trials=6))
    tuner.tune(model, data, eval_func=eval_func)
    trials = tuner.history.trials
    assert len(trials) == 6 and [t.trial for t in trials if t.error] == [2, 5]


def test_ctrl_c_saves_the_history_and_resume_continues(easy_toy, conf, tmp_path):
    model, data = easy_toy
    full = ilit.Tuner(many_trials(conf, workspace={"path": str(tmp_path / "full")}))
    full.tune(model, data, eval_func=lambda m: accuracy(m, data))
    expected = saved_trials(full)
    assert len(expected) == 3

    calls = []

    def interrupted(m):
        calls.append(m)
        if len(calls) == 3:  # during the second trial
            raise KeyboardInterrupt
        return accuracy(m, data)

    first = ilit.Tuner(many_trials(conf, workspace={"path": str(tmp_path / "ws")}))
    with pytest.raises(KeyboardInterrupt):
        first.tune(model, data, eval_func=interrupted)
    kept = saved_trials(first)
    assert [t["tune_cfg"] for t in kept] == [expected[0]["tune_cfg"]]  # the finished trial, not the interrupted one

    evaluated = []

    def counting(m):
        evaluated.append(m)
        return accuracy(m, data)

    second = ilit.Tuner(many_trials(conf, workspace={"path": str(tmp_path / "ws")}))
    q = second.tune(model, data, eval_func=counting, resume_file=first.history_path)
    assert len(evaluated) == 2  # the two unfinished trials; neither the baseline nor trial 1 again
    assert [t["tune_cfg"] for t in saved_trials(second)] == [t["tune_cfg"] for t in expected]
    assert q is not None and second.best_trial.tune_cfg == full.best_trial.tune_cfg


def test_the_users_model_is_unchanged_whatever_happens(toy, conf):
    model, data = toy
    before = [(l.W.copy(), l.b.copy(), l.qcfg, l.wq) for l in model.layers]
    calls = []

    def eval_func(m):
        calls.append(m)
        if len(calls) == 2:
            raise RuntimeError("trial failure")
        return accuracy(m, data)

    c = many_trials(conf, max_trials=6)
    ilit.Tuner(c).tune(model, data, eval_func=eval_func)
    ilit.Tuner(conf()).tune(model, data, eval_dataloader=data)
    for (w, b, qcfg, wq), layer in zip(before, model.layers):
        assert np.array_equal(w, layer.W) and np.array_equal(b, layer.b)
        assert layer.qcfg is qcfg is None and layer.wq is wq is None


def test_the_users_model_mode_comes_back_whatever_eval_func_does(easy_toy, conf):
    """The adaptor's fp32_context runs the user's code on the FP32 model in inference mode and restores the
    model's own mode after, even when eval_func flips it (as model.eval() / model.train() would)."""
    model, data = easy_toy
    model.training = True
    seen = []

    def eval_func(m):
        if m is model:
            seen.append(m.training)
            m.training = "flipped by the user's eval_func"
        return accuracy(m, data)

    ilit.Tuner(many_trials(conf)).tune(model, data, eval_func=eval_func)
    assert seen == [False] and model.training is True
