"""history.json (atomic, JSON only) and resume: exact replay, refusal of foreign histories."""

import json
import os

import pytest

import ilit
from ilit.history import History, write_json_atomic


def test_history_records_every_trial_with_fingerprints(toy, conf):
    model, data = toy
    tuner = ilit.Tuner(conf())
    tuner.tune(model, data, eval_dataloader=data)
    with open(tuner.history_path) as f:
        h = json.load(f)
    assert h["baseline_accuracy"] == 1.0 and h["finished"] is True
    assert len(h["config_fingerprint"]) == 64 and len(h["model_fingerprint"]) == 64
    assert h["best"] == tuner.best_trial.trial
    t = h["trials"][0]
    assert set(t) >= {"trial", "tune_cfg", "accuracy", "objective", "meets", "quantize_s", "evaluate_s",
                      "objective_s", "elapsed_s", "fingerprint"}
    assert t["tune_cfg"] == tuner.history.trials[0].tune_cfg
    assert os.path.isdir(os.path.join(os.path.dirname(tuner.history_path), "best_model"))


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    path = str(tmp_path / "history.json")
    write_json_atomic(path, {"ok": 1})
    with pytest.raises(TypeError):
        write_json_atomic(path, {"bad": object()})
    with open(path) as f:
        assert json.load(f) == {"ok": 1}
    assert os.listdir(tmp_path) == ["history.json"]  # no temporary file left behind


def sequence(history_path):
    with open(history_path) as f:
        return [t["tune_cfg"] for t in json.load(f)["trials"]]


def test_resume_replays_exactly_and_skips_done_trials(toy, conf, tmp_path):
    model, data = toy
    full = ilit.Tuner(conf(tuning={**conf()["tuning"], "workspace": {"path": str(tmp_path / "full")}}))
    full.tune(model, data, eval_dataloader=data)
    expected = sequence(full.history_path)
    assert len(expected) >= 4

    part_conf = conf(tuning={**conf()["tuning"], "workspace": {"path": str(tmp_path / "part")}, "max_trials": 2})
    part = ilit.Tuner(part_conf)
    assert part.tune(model, data, eval_dataloader=data) is None
    assert sequence(part.history_path) == expected[:2]

    resumed = ilit.Tuner(conf(tuning={**conf()["tuning"], "workspace": {"path": str(tmp_path / "resumed")}}))
    q = resumed.tune(model, data, eval_dataloader=data, resume_file=part.history_path)
    assert sequence(resumed.history_path) == expected
    assert resumed.adaptor.quantize_calls == len(expected) - 2  # the two done trials were not run again
    assert q is not None and resumed.best_trial.tune_cfg == full.best_trial.tune_cfg


def test_resume_refuses_another_config_or_model(toy, easy_toy, conf, tmp_path):
    model, data = toy
    first = ilit.Tuner(conf())
    first.tune(model, data, eval_dataloader=data)
    other_conf = conf(calibration={"iterations": [3], "algorithm": {"activation": "minmax"}})
    with pytest.raises(ilit.ResumeError, match="different config"):
        ilit.Tuner(other_conf).tune(model, data, eval_dataloader=data, resume_file=first.history_path)
    other_model, other_data = easy_toy
    with pytest.raises(ilit.ResumeError, match="different model"):
        ilit.Tuner(conf()).tune(other_model, other_data, eval_dataloader=other_data, resume_file=first.history_path)


def test_history_round_trips(toy, conf):
    model, data = toy
    tuner = ilit.Tuner(conf())
    tuner.tune(model, data, eval_dataloader=data)
    loaded = History.load(tuner.history_path)
    assert loaded.to_dict() == tuner.history.to_dict()
