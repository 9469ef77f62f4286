"""Untrusted files: a resume file or saved model from someone else is read as data, never run.

A crafted pickle whose unpickling would create a marker file proves no code runs; a resume file of the
wrong shape or version is refused with a ResumeError saying what is wrong.
"""

import json
import os
import pickle

import pytest

import ilit
from ilit.history import History
from ilit_toy import ToyAdaptor


class Payload:
    """Unpickling this runs ``touch marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def evil_pickle(path, marker, protocol):
    path.write_bytes(pickle.dumps({"trials": [Payload(marker)], "format": 1}, protocol=protocol))
    return str(path)


def test_the_payload_really_runs_when_unpickled(tmp_path):
    """The control: the crafted file does run code when someone unpickles it."""
    marker = tmp_path / "ran"
    with open(evil_pickle(tmp_path / "x.pkl", marker, 2), "rb") as f:
        pickle.load(f)
    assert marker.exists()


@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_a_pickle_as_resume_file_is_refused_and_never_run(toy, conf, tmp_path, protocol):
    model, data = toy
    marker = tmp_path / "ran"
    path = evil_pickle(tmp_path / "history.json", marker, protocol)
    with pytest.raises(ilit.ResumeError, match="not a history.json|not a valid history.json") as e:
        ilit.Tuner(conf()).tune(model, data, eval_dataloader=data, resume_file=path)
    assert "earlier ilit run" in str(e.value)
    assert not marker.exists()


@pytest.fixture
def history(toy, conf):
    """A real history.json as a dict, and a function writing an edited copy of it."""
    model, data = toy
    tuner = ilit.Tuner(conf())
    tuner.tune(model, data, eval_dataloader=data)
    with open(tuner.history_path) as f:
        good = json.load(f)

    def edited(tmp_path, edit):
        doc = json.loads(json.dumps(good))
        result = edit(doc)
        doc = doc if result is None else result
        p = tmp_path / "edited.json"
        p.write_text(json.dumps(doc) if not isinstance(doc, str) else doc)
        return str(p)

    return good, edited


def _set(path, value):
    def edit(doc):
        target = doc
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return edit


@pytest.mark.parametrize("edit, message", [
    (lambda d: [d], "JSON but not an ilit history"),
    (lambda d: {}, "JSON but not an ilit history"),
    (lambda d: "null", "JSON but not an ilit history"),
    (lambda d: '{"format": 1, "trials": [}', "not a valid history.json"),
    (lambda d: json.dumps(d).replace('"baseline_accuracy": 1.0', '"baseline_accuracy": NaN'), "not strict JSON"),
    (_set(["format"], 2), "history format 2 .* this ilit .* reads format 1"),
    (lambda d: d.pop("trials") and None, r"missing keys \['trials'\]"),
    (_set(["__class__"], "x"), r"unknown keys \['__class__'\]"),
    (_set(["trials"], "abc"), "trials is 'abc'"),
    (_set(["trials"], [1]), r"trials\[0\] is int, expected an object"),
    (_set(["trials", 0, "accuracy"], "high"), r"trials\[0\].accuracy is 'high'"),
    (_set(["trials", 0, "meets"], 1), r"trials\[0\].meets is 1"),
    (_set(["trials", 0, "trial"], 7), "trial numbers"),
    (_set(["trials", 0, "tune_cfg", "approach"], "x"), "does not match its fingerprint"),
    (_set(["best"], "1"), "best is '1'"),
    (_set(["baseline_accuracy"], True), "baseline_accuracy is True"),
])
def test_a_resume_file_of_the_wrong_shape_or_version_is_refused(history, toy, conf, tmp_path, edit, message):
    _good, edited = history
    path = edited(tmp_path, edit)
    with pytest.raises(ilit.ResumeError, match=message):
        History.load(path)
    model, data = toy  # and through tune(), before any work
    tuner = ilit.Tuner(conf(tuning={**conf()["tuning"], "workspace": {"path": str(tmp_path / "ws2")}}))
    with pytest.raises(ilit.ResumeError):
        tuner.tune(model, data, eval_dataloader=data, resume_file=path)
    assert tuner.adaptor is None


def test_an_unedited_history_loads(history, tmp_path):
    good, edited = history
    assert History.load(edited(tmp_path, lambda d: None)).to_dict() == good


@pytest.mark.parametrize("victim", ["weights.npz", "model.json"])
def test_a_pickle_as_saved_model_is_refused_and_never_run(toy, conf, tmp_path, victim):
    model, data = toy
    adaptor = ToyAdaptor(ilit.load_config(conf()))
    saved = tmp_path / "model"
    adaptor.save(model, str(saved))
    marker = tmp_path / "ran"
    evil_pickle(saved / victim, marker, pickle.HIGHEST_PROTOCOL)
    with pytest.raises(ValueError):  # numpy: "pickled data ... allow_pickle=False"; json: not JSON
        adaptor.load(str(saved))
    assert not marker.exists()


def test_nothing_ilit_writes_is_a_pickle(toy, conf):
    model, data = toy
    tuner = ilit.Tuner(conf())
    tuner.tune(model, data, eval_dataloader=data)
    workspace = os.path.dirname(tuner.history_path)
    files = [os.path.join(r, f) for r, _d, fs in os.walk(workspace) for f in fs]
    assert len(files) >= 3  # history.json, best_model/model.json, best_model/weights.npz
    for path in files:
        with open(path, "rb") as f:
            assert f.read(1) != b"\x80", f"{path} is a pickle"
    with open(tuner.history_path) as f:
        json.load(f)
