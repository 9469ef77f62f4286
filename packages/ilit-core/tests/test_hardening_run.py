"""Issue 17 §3 and §7 through tune(): one run per workspace, bool-like scores refused, names from models and files
escaped in log lines and summary rows."""

import logging
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import ilit
from ilit_toy import accuracy

HOLD = textwrap.dedent("""
    import sys, time
    from ilit.lock import WorkspaceLock
    WorkspaceLock(sys.argv[1]).acquire()
    print("held", flush=True)
    time.sleep(120)
""")


def test_a_second_run_in_a_held_workspace_fails_at_once_and_writes_nothing(toy, conf, tmp_path):
    model, data = toy
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "history.json").write_text("{\"kept\": true}")  # the first run's results
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(ws)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        evaluated = []
        tuner = ilit.Tuner(conf())
        with pytest.raises(ilit.WorkspaceBusyError, match=f"pid {proc.pid}"):
            tuner.tune(model, data, eval_func=lambda m: evaluated.append(m) or 1.0)
        assert evaluated == [] and tuner.adaptor is None
        assert (ws / "history.json").read_text() == "{\"kept\": true}"
    finally:
        proc.kill()
        proc.wait()
    # the holder was killed: its lock does not block the next run, and this run releases its own
    for _ in range(2):
        ilit.Tuner(conf(tuning={**conf()["tuning"], "max_trials": 1})).tune(model, data, eval_dataloader=data)


class _BoolTensor:
    """A 0-d bool tensor as torch gives one: it has __float__ (1.0), but it is a verdict, not an accuracy."""

    dtype = "torch.bool"

    def __float__(self):
        return 1.0


@pytest.mark.parametrize("value", [np.bool_(True), np.array(True), _BoolTensor()])
def test_an_eval_func_returning_a_bool_like_value_is_refused(value, easy_toy, conf):
    model, data = easy_toy
    with pytest.raises(ValueError, match="it must return a number"):
        ilit.Tuner(conf()).tune(model, data, eval_func=lambda m: value)


def test_op_names_from_the_model_cannot_forge_log_lines_or_summary_rows(toy, conf, caplog):
    model, data = toy
    for i, layer in enumerate(model.layers):
        layer.name = f"op{i}\n[ilit] FORGED trial 99 meets goal\x1b[2J"  # the toy splits names at ":"
    caplog.set_level(logging.INFO, logger="ilit")
    tuner = ilit.Tuner(conf(tuning={**conf()["tuning"], "max_trials": 4}))
    tuner.tune(model, data, eval_func=lambda m: accuracy(m, data))
    assert any(t.tune_cfg["ops"] and "fp32" in str(t.tune_cfg) for t in tuner.history.trials)
    text = "\n".join(r.getMessage() for r in caplog.records) + "\n" + tuner.summary()
    assert "FORGED" in text  # the names are shown...
    assert "\x1b" not in text  # ...without their escape codes...
    assert not any(line.lstrip().startswith("[ilit] FORGED") for line in text.splitlines())  # ...or lines
    assert "\\n[ilit] FORGED" in text and "\\x1b[2J" in text


def test_a_ctrl_c_that_library_code_swallows_still_stops_the_run_and_keeps_the_history(toy, conf, monkeypatch):
    """The issue's torch lazy-import case, simulated: SIGINT arrives inside the adaptor and the library turns the
    KeyboardInterrupt into an AttributeError. Without the watch that trial was recorded as failed and tuning
    went on; now the run stops with KeyboardInterrupt and the trials before it are saved."""
    import os
    import signal

    from ilit_toy import ToyAdaptor

    model, data = toy
    real, calls = ToyAdaptor.quantize, []

    def quantize(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            try:
                os.kill(os.getpid(), signal.SIGINT)
                signal.pthread_sigmask(signal.SIG_BLOCK, [])  # a syscall, so the handler runs here
            except BaseException:  # noqa: BLE001 - what a careless library does
                raise AttributeError("module 'sympy' has no attribute 'core'") from None
        return real(self, *args, **kwargs)
    monkeypatch.setattr(ToyAdaptor, "quantize", quantize)
    tuner = ilit.Tuner(conf(tuning={**conf()["tuning"], "timeout": 3600, "max_trials": 8}))
    with pytest.raises(KeyboardInterrupt):
        tuner.tune(model, data, eval_dataloader=data)
    assert len(calls) == 3 and len(tuner.history.trials) == 2
    with open(tuner.history_path) as f:
        assert len(__import__("json").load(f)["trials"]) == 2
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the watch is gone after the run
