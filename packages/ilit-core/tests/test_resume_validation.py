"""Issue 17 §2 and §5: a resume file is checked, not trusted: verdicts re-derived, non-finite numbers and
missing baselines refused before any work, special files refused without reading; files follow the umask."""

import json
import os
import stat

import pytest

import ilit
from ilit.history import History


@pytest.fixture
def good_history(toy, conf, tmp_path):
    """A real history of a run with passing and failing trials (the toy has fragile layers), as a dict."""
    model, data = toy
    tuner = ilit.Tuner(conf(tuning={**conf()["tuning"], "accuracy_criterion": {"relative": 0.02}, "max_trials": 6}))
    tuner.tune(model, data, eval_dataloader=data)
    with open(tuner.history_path) as f:
        doc = json.load(f)
    assert any(not t["meets"] for t in doc["trials"]) and any(t["meets"] for t in doc["trials"])
    return doc


def _write(tmp_path, doc, text=None):
    p = tmp_path / "edited.json"
    p.write_text(text if text is not None else json.dumps(doc))
    return str(p)


def _tune_refuses(toy, conf, tmp_path, path, match):
    """Through tune(): a ResumeError before any work (no adaptor built, nothing evaluated)."""
    model, data = toy
    tuner = ilit.Tuner(conf(tuning={**conf()["tuning"], "accuracy_criterion": {"relative": 0.02},
                                    "workspace": {"path": str(tmp_path / "ws2")}}))
    evaluated = []
    with pytest.raises(ilit.ResumeError, match=match):
        tuner.tune(model, data, eval_func=lambda m: evaluated.append(m) or 1.0, resume_file=path)
    assert tuner.adaptor is None and evaluated == []


def test_a_failing_trial_edited_to_meet_is_refused(good_history, toy, conf, tmp_path):
    doc = good_history
    i = next(i for i, t in enumerate(doc["trials"]) if not t["meets"] and t["accuracy"] is not None)
    doc["trials"][i]["accuracy"] = 0.1  # the edit: accuracy 0.1 with meets true
    doc["trials"][i]["meets"] = True
    doc["trials"][i]["objective"] = 1.0
    path = _write(tmp_path, doc)
    with pytest.raises(ilit.ResumeError, match=rf"trials\[{i}\] says meets=True but its accuracy 0.1"):
        History.load(path)
    _tune_refuses(toy, conf, tmp_path, path, "says meets=True")


def test_a_passing_trial_edited_to_fail_and_a_wrong_best_are_refused(good_history, tmp_path):
    doc = json.loads(json.dumps(good_history))
    i = next(i for i, t in enumerate(doc["trials"]) if t["meets"])
    doc["trials"][i]["meets"] = False
    with pytest.raises(ilit.ResumeError, match="says meets=False"):
        History.load(_write(tmp_path, doc))
    doc = json.loads(json.dumps(good_history))
    doc["best"] = next(t["trial"] for t in doc["trials"] if not t["meets"])
    with pytest.raises(ilit.ResumeError, match="does not meet the goal"):
        History.load(_write(tmp_path, doc))
    doc["best"] = 999
    with pytest.raises(ilit.ResumeError, match="does not exist"):
        History.load(_write(tmp_path, doc))


def test_the_running_configs_criterion_decides(good_history, tmp_path):
    """With a criterion given (the tuner's), a verdict is checked against it, whatever the file's config says."""
    from ilit.config import AccuracyCriterion

    path = _write(tmp_path, good_history)
    assert History.load(path).best == good_history["best"]
    with pytest.raises(ilit.ResumeError, match="says meets=True"):
        History.load(path, criterion=AccuracyCriterion(relative=None, absolute=-1.0))  # nothing could meet


@pytest.mark.parametrize("key", ["accuracy", "objective", "elapsed_s"])
def test_an_overflowing_number_is_a_resume_error(key, good_history, toy, conf, tmp_path):
    text = json.dumps(good_history)
    doc = json.loads(text)
    doc["trials"][0][key] = 12345.678
    text = json.dumps(doc).replace("12345.678", "1e400")  # parses as inf in plain json
    path = _write(tmp_path, None, text)
    with pytest.raises(ilit.ResumeError, match="1e400 is not a finite number"):
        History.load(path)
    _tune_refuses(toy, conf, tmp_path, path, "not a finite number")


@pytest.mark.parametrize("keys", [("baseline_objective",), ("baseline_accuracy",),
                                  ("baseline_accuracy", "baseline_objective")])
def test_a_missing_baseline_is_a_resume_error_before_any_work(keys, good_history, toy, conf, tmp_path):
    doc = good_history
    for key in keys:
        doc[key] = None
    path = _write(tmp_path, doc)
    with pytest.raises(ilit.ResumeError, match="baseline"):
        History.load(path)
    _tune_refuses(toy, conf, tmp_path, path, "baseline")



@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "directory"])
def test_a_resume_file_that_is_not_a_regular_file_is_refused_at_once(kind, toy, conf, tmp_path, alarm):
    path = tmp_path / "history.json"
    if kind == "fifo":
        os.mkfifo(path)  # open() of a FIFO without a writer used to hang forever
    elif kind == "dev-zero":
        os.symlink("/dev/zero", path)  # used to be read for 256 MB before refusal
    else:
        path.mkdir()
    with pytest.raises(ilit.ResumeError, match="not a regular file"):
        History.load(str(path))
    _tune_refuses(toy, conf, tmp_path, str(path), "not a regular file")


def test_a_deeply_nested_resume_file_is_a_resume_error(tmp_path):
    path = _write(tmp_path, None, "[" * 100_000 + "]" * 100_000)
    with pytest.raises(ilit.ResumeError, match="nested too deeply"):
        History.load(path)


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_history_and_best_model_files_follow_the_umask(umask, easy_toy, conf, tmp_path):

    model, data = easy_toy
    old = os.umask(umask)
    try:
        tuner = ilit.Tuner(conf(tuning={**conf()["tuning"], "max_trials": 1}))
        assert tuner.tune(model, data, eval_dataloader=data) is not None
    finally:
        os.umask(old)
    ws = tmp_path / "ws"
    best_files = [p for p in (ws / "best_model").rglob("*") if p.is_file()]
    assert best_files
    for p in [ws / "history.json", *best_files]:
        assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~umask, p
