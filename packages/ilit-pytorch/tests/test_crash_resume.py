"""SIGKILL then resume under ``objective: modelsize`` with the PyTorch adaptor (issue 17 §4): the saved size of a
model is one number in every process, so the resumed run measures and chooses as the uninterrupted one did.

Each run is a real subprocess (tests/crash_child.py); the kill comes while it evaluates trial 3.
"""

import json
import os
import signal
import subprocess
import sys

import torch

from conftest import DigitsCNN, train

CHILD = os.path.join(os.path.dirname(__file__), "crash_child.py")


def run(workspace, state, pause="none", resume_file=None, timeout=600):
    """Run the child; with a pause, SIGKILL it once it reports the point reached. Returns its RESULT or None."""
    cmd = [sys.executable, CHILD, str(workspace), str(state), pause] + ([resume_file] if resume_file else [])
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        for line in proc.stdout:
            if line.startswith("PAUSED"):
                os.kill(proc.pid, signal.SIGKILL)
                assert proc.wait(timeout) == -signal.SIGKILL
                return None
            if line.startswith("RESULT "):
                assert proc.wait(timeout) == 0
                return json.loads(line[len("RESULT "):])
        raise AssertionError(f"child ended without reaching {pause} (exit {proc.wait(timeout)})")
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()


def test_sigkill_then_resume_under_modelsize_ends_as_the_uninterrupted_run(digits, tmp_path):
    torch.manual_seed(0)
    state = tmp_path / "fp32.pt"
    torch.save(train(DigitsCNN(width=8), digits[0][:6], epochs=1).state_dict(), str(state))
    reference = run(tmp_path / "whole", state)
    assert len(reference["trials"]) == 5 and reference["best"] is not None
    assert len({size for _, _, size in reference["trials"]}) > 1  # fallbacks change the size: the choice matters
    assert run(tmp_path / "killed", state, pause="eval:4") is None  # the baseline, trials 1 and 2, then killed
    history = tmp_path / "killed" / "history.json"
    assert len(json.loads(history.read_text())["trials"]) == 2
    resumed = run(tmp_path / "resumed", state, resume_file=str(history))
    assert resumed["trials"] == reference["trials"]  # same configs, accuracies and sizes, to the byte
    assert resumed["evaluations"] == 3  # the 3 trials not yet run (the baseline comes from the history): none re-run
    assert resumed["best"] == reference["best"] and resumed["best_model"] == reference["best_model"]
