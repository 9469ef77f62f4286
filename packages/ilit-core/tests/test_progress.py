"""The status line: what it says (trial of max, batches, time left by hand), where it goes, and when it is off."""

import io
import logging

import pytest

from ilit.progress import ENV, Progress, ProgressHandler, enabled


class Tty(io.StringIO):
    def isatty(self):
        return True


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def last_line(stream):
    return stream.getvalue().rsplit("\r\x1b[K", 1)[-1]


@pytest.fixture(autouse=True)
def no_env(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)


def test_status_counts_trials_batches_and_bounds_the_time_left():
    s, clock = Tty(), Clock()
    p = Progress(s, max_trials=10, timeout=0, clock=clock)
    for _ in p.batches([1, 2, 3], "evaluate"):
        clock.t += 0.5
    assert last_line(s) == "[ilit] FP32 baseline | evaluate 3/3 | 0:01 elapsed"
    p.set_phase("objective")
    assert last_line(s) == "[ilit] FP32 baseline | objective | 0:02 elapsed"
    clock.t += 2.5
    p.start_trial(1)
    for _ in p.batches([1, 2, 3, 4, 5], "calibrate", limit=3):
        clock.t += 1
    assert "trial 1/10 | calibrate 3/3" in last_line(s)  # the extra batch is not shown past the limit
    data = []
    for batch in p.batches([1, 2], "evaluate"):
        data.append(batch)
        clock.t += 0.5
    assert data == [1, 2] and "evaluate 2/2" in last_line(s)
    p.end_trial(6.0)  # the 1st trial took 6 s: 9 trials at most are left, 54 s at most
    p.start_trial(2)
    assert last_line(s) == "[ilit] trial 2/10 | quantize | 0:10 elapsed | at most 0:54 left"


def test_timeout_bounds_the_time_left_when_it_is_sooner():
    s, clock = Tty(), Clock()
    p = Progress(s, max_trials=100, timeout=60, clock=clock)
    clock.t += 20
    p.start_trial(1)
    assert last_line(s).endswith("0:20 elapsed | at most 0:40 left")
    p.end_trial(10.0)
    clock.t += 15
    p.start_trial(2)  # trials bound 99 x 10 s, the timeout 25 s
    assert last_line(s).endswith("0:35 elapsed | at most 0:25 left")


def test_nothing_is_drawn_off_a_terminal_or_when_turned_off(monkeypatch):
    plain = io.StringIO()
    p = Progress(plain, 5, 0)
    p.start_trial(1)
    assert list(p.batches([1, 2], "evaluate")) == [1, 2]
    assert plain.getvalue() == "" and not enabled(plain)
    monkeypatch.setenv(ENV, "0")
    tty = Tty()
    p = Progress(tty, 5, 0)
    loader = [1, 2]
    assert p.batches(loader, "evaluate") is loader  # the loader itself: nothing wraps it
    p.start_trial(1)
    assert tty.getvalue() == "" and not enabled(tty)


def test_log_lines_clear_the_status_line_first_and_it_comes_back():
    s = Tty()
    log = logging.getLogger("ilit.test_progress")
    log.propagate = False
    handler = ProgressHandler(s)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(handler)
    try:
        p = Progress(s, 5, 0)
        handler.progress = p
        p.start_trial(1)
        list(p.batches([1, 2, 3], "evaluate"))
        log.warning("a log line")
        out = s.getvalue()
        before, after = out.split("a log line\n")
        assert before.endswith("\r\x1b[K")  # the status was erased, so the log line starts clean
        assert after.startswith("\r\x1b[K[ilit] trial 1/5 | evaluate 3/3")  # and redrawn below it
        p.close()
        assert s.getvalue().endswith("\r\x1b[K")
        log.warning("after close")
        assert s.getvalue().endswith("after close\n")
    finally:
        log.removeHandler(handler)


def test_counted_loader_is_re_iterable_and_passes_attributes_through():
    class Loader(list):
        batch_size = 7

    p = Progress(Tty(), 5, 0)
    c = p.batches(Loader([1, 2, 3]), "evaluate")
    assert list(c) == [1, 2, 3] and list(c) == [1, 2, 3] and len(c) == 3 and c.batch_size == 7
    import copy

    assert list(copy.copy(c)) == [1, 2, 3]


def test_a_broken_terminal_turns_the_status_off_instead_of_failing():
    class Broken(Tty):
        def write(self, text):
            raise OSError("terminal gone")

    p = Progress(Broken(), 5, 0)
    p.start_trial(1)  # no exception
    assert not p.active


# ---------------------------------------------------------------------- inside tune (a fresh process each: the
# status line follows ilit's own log handler, which pytest's logging capture would otherwise replace)
SCRIPT = r"""
import io, json, logging, os, sys
import ilit, ilit_toy

class Tty(io.StringIO):
    def isatty(self):
        return True

mode = sys.argv[1]
buf = Tty() if mode != "pipe" else io.StringIO()
sys.stderr = buf
if mode == "app-logging":
    logging.basicConfig(stream=buf, level=logging.INFO, format="APP %(message)s")
model = ilit_toy.make_model(n_layers=6, fragile=(2, 4), seed=0)
data = ilit_toy.make_dataset(model)
conf = {"framework": {"name": "toy"}, "calibration": {"iterations": [2], "algorithm": {"activation": "minmax"}},
        "quantization": {"weight": {"granularity": "per_channel", "scheme": "sym"},
                         "activation": {"dtype": "uint8", "scheme": "asym"}},
        "tuning": {"metric": {"toy_accuracy": None}, "objective": "modelsize", "max_trials": 4, "timeout": 600,
                   "workspace": {"path": sys.argv[2]}}}
ilit.Tuner(conf).tune(model, data, eval_dataloader=data)
sys.__stdout__.write(json.dumps(buf.getvalue()))
"""


def tune_output(tmp_path, mode, **env):
    import json
    import os
    import subprocess
    import sys

    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    full_env = {k: v for k, v in os.environ.items() if k != ENV}
    full_env.update(env)
    proc = subprocess.run([sys.executable, str(script), mode, str(tmp_path / "ws")], capture_output=True, text=True,
                          env=full_env, timeout=300, check=True)
    return json.loads(proc.stdout)


def test_tune_draws_the_status_line_on_a_terminal_between_its_log_lines(tmp_path):
    out = tune_output(tmp_path, "tty")
    status = [s.split("\n")[0] for s in out.split("\r\x1b[K")[1:] if s.startswith("[ilit] ")]
    assert any(s.startswith("[ilit] FP32 baseline | evaluate") for s in status)
    # the first trial calibrates (later ones reuse its statistics, so draw no calibration batches)
    assert any(s.startswith("[ilit] trial 1/4 | calibrate") for s in status)
    for n in (1, 2, 3, 4):  # max_trials 4: each trial shows up, evaluating its 8 batches
        assert any(s.startswith(f"[ilit] trial {n}/4 | evaluate") and "/8" in s for s in status), n
    assert any("at most" in s and "left" in s for s in status)  # after the first trial, a bound on the time left
    import re

    logged = list(re.finditer(r"\d\d:\d\d:\d\d \[ilit\] trial \d \(ran\)[^\r\n]*\n", out))
    assert len(logged) == 4
    for m in logged:  # each log line starts clean (the status erased just before it, or a fresh line) and is whole
        assert out[:m.start()].endswith(("\r\x1b[K", "\n"))
        assert "\x1b" not in m.group(0)
    assert out.endswith("\r\x1b[K") or "stopped" in out.rsplit("\r\x1b[K", 1)[-1]


@pytest.mark.parametrize("mode, env", [("pipe", {}), ("tty", {ENV: "0"}), ("app-logging", {})],
                         ids=["not-a-terminal", "ILIT_PROGRESS=0", "app-configured-logging"])
def test_tune_draws_no_status_line(tmp_path, mode, env):
    out = tune_output(tmp_path, mode, **env)
    assert "\x1b[K" not in out and "\r" not in out
    assert "trial 4 (ran)" in out  # the log lines themselves are there
    if mode == "app-logging":
        assert "APP trial 1 (ran)" in out
