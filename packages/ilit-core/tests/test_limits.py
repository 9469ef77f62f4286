"""Limits: timeout honoured within one trial, max_trials exact (also across resume), bad workspace at start."""

import json
import math

import pytest

import ilit
from ilit_toy import accuracy
import ilit.run
from ilit.lock import LOCK_FILE

TRIAL_SECONDS = 10.0


def wide(conf, **tuning):
    """A space of 12 model-wise configs, searched past the first pass (timeout > 0), eval_func usage."""
    c = conf(calibration={"iterations": [1, 2, 3], "algorithm": {"activation": "minmax"}},
             quantization={"weight": {"granularity": ["per_channel", "per_tensor"], "scheme": ["sym", "asym"]},
                           "activation": {"dtype": "uint8", "scheme": "asym"}})
    del c["tuning"]["metric"]
    c["tuning"].update({"timeout": 10_000, "max_trials": 100, **tuning})
    return c


class FakeClock:
    """The tuner's clock, advanced only by evaluations: each costs TRIAL_SECONDS, so time is deterministic."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


@pytest.mark.parametrize("timeout", [5, 25, 42, 60])
def test_timeout_is_honoured_within_one_trial(easy_toy, conf, monkeypatch, timeout):
    model, data = easy_toy
    clock = FakeClock()
    monkeypatch.setattr(ilit.run, "_now", clock)

    def eval_func(m):
        clock.now += TRIAL_SECONDS
        return accuracy(m, data)

    tuner = ilit.Tuner(wide(conf, timeout=timeout))
    tuner.tune(model, data, eval_func=eval_func)
    # the baseline takes the first 10 s; a trial starts only while the clock is below the timeout
    assert len(tuner.history.trials) == max(0, math.ceil((timeout - TRIAL_SECONDS) / TRIAL_SECONDS)) < 12
    # the last trial started before the timeout, and no trial started after it
    assert clock.now - TRIAL_SECONDS < timeout <= clock.now
    assert clock.now <= timeout + TRIAL_SECONDS
    assert not tuner.history.trials or tuner.history.trials[-1].elapsed_s == clock.now


@pytest.mark.parametrize("max_trials", [1, 2, 5, 11])
def test_max_trials_is_exact(easy_toy, conf, max_trials):
    model, data = easy_toy
    evaluated = []
    tuner = ilit.Tuner(wide(conf, max_trials=max_trials))
    tuner.tune(model, data, eval_func=lambda m: evaluated.append(m) or accuracy(m, data))
    assert len(tuner.history.trials) == max_trials
    assert len(evaluated) == max_trials + 1  # and the baseline
    assert tuner.adaptor.quantize_calls == max_trials


def test_max_trials_counts_resumed_trials(easy_toy, conf, tmp_path):
    model, data = easy_toy
    first = ilit.Tuner(wide(conf, max_trials=3))
    first.tune(model, data, eval_func=lambda m: accuracy(m, data))
    evaluated = []
    second = ilit.Tuner(wide(conf, max_trials=7, workspace={"path": str(tmp_path / "second")}))
    second.tune(model, data, eval_func=lambda m: evaluated.append(m) or accuracy(m, data),
                resume_file=first.history_path)
    assert len(second.history.trials) == 7 and len(evaluated) == 4  # 3 resumed + 4 new; no baseline again


def test_an_unwritable_workspace_is_reported_at_start(easy_toy, conf, tmp_path):
    model, data = easy_toy
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    evaluated = []
    tuner = ilit.Tuner(wide(conf, workspace={"path": str(blocker / "ws")}))
    with pytest.raises(ilit.ConfigError, match=r"^tuning.workspace.path: cannot write to .*a_file/ws"):
        tuner.tune(model, data, eval_func=lambda m: evaluated.append(m) or 1.0)
    assert evaluated == [] and tuner.adaptor is None  # nothing ran: not the baseline, not the adaptor


def test_leftovers_of_a_killed_run_are_tidied(easy_toy, conf, tmp_path):
    """A temporary history and a half-saved model are removed; a best model moved aside mid-swap is put back."""
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / ".history-abc.tmp").write_text("{")
    (ws / ".ilit-new-best_model-123").mkdir()
    aside = ws / ".ilit-old-best_model-123"
    aside.mkdir()
    (aside / "model.json").write_text("[]")
    model, data = easy_toy
    tuner = ilit.Tuner(wide(conf, max_trials=1, workspace={"path": str(ws)}))
    tuner.tune(model, data, eval_func=lambda m: accuracy(m, data))
    names = sorted(p.name for p in ws.iterdir())
    assert names == [LOCK_FILE, "best_model", "history.json"]
    with open(ws / "best_model" / "model.json") as f:
        assert len(json.load(f)) == len(model.layers)  # the new best model replaced the restored one
