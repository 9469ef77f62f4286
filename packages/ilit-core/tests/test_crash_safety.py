"""Crash safety: a tuning process SIGKILLed at any moment leaves a valid history.json holding every finished
trial, and resuming from it re-runs none of them and ends with the same result as an uninterrupted run.

Each case runs tests/crash_child.py in a real subprocess, waits until it reports it has reached the kill
point (it then sleeps), kills it with SIGKILL, checks the workspace, and resumes in a fresh subprocess.
"""

import json
import os
import signal
import subprocess
import sys

import pytest

import ilit
from ilit.history import History
from ilit.lock import LOCK_FILE
from ilit_toy import ToyAdaptor

CHILD = os.path.join(os.path.dirname(__file__), "crash_child.py")


def run(workspace, strategy, pause="none", resume_file=None, timeout=120, objective="modelsize"):
    """Run the child; with a pause, SIGKILL it once it reports the point reached. Returns its RESULT or None."""
    cmd = [sys.executable, CHILD, str(workspace), strategy, pause] + ([resume_file] if resume_file else [])
    env = {**os.environ, "ILIT_CRASH_OBJECTIVE": objective}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
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


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run of each strategy."""
    root = tmp_path_factory.mktemp("reference")
    return {s: run(root / s, s) for s in ("basic", "bayesian", "mse", "basic+easy")}


def test_the_reference_runs_search_and_save(reference):
    assert len(reference["bayesian"]["trials"]) == 12 and reference["bayesian"]["best"] is not None
    assert len(reference["basic"]["trials"]) >= 4 and reference["basic"]["best"] is not None
    assert reference["mse"]["best"] is not None
    assert len(reference["basic+easy"]["trials"]) == 2 and reference["basic+easy"]["best"] is not None


# (strategy, kill point, trials the history must hold afterwards). The reference runs: bayesian probes ops
# one at a time in a seeded order (its initial design over the fallback dimensions), passes at trial 9 and
# goes on with its Gaussian process; basic probes ops one at a time and passes at trial 10; mse passes at
# trial 4, then shrinks; "basic+easy" (a model without fragile ops) passes at trials 1 and 2, the second a
# smaller model (a new best, so the best model is swapped).
CASES = [
    ("bayesian", "eval:1", 0),            # during the FP32 baseline: no history yet
    ("bayesian", "history-write:1", 0),   # writing the first history (after the baseline)
    ("bayesian", "quantize:3", 2),        # inside trial 3's quantization
    ("bayesian", "eval:6", 4),            # inside trial 5's evaluation
    ("bayesian", "history-write:7", 5),   # halfway through writing the history after trial 6
    ("bayesian", "history-rename:9", 7),  # history after trial 8 complete, not yet renamed
    ("bayesian", "model-write:1", 8),     # halfway through saving the first best model (trial 9)
    ("bayesian", "quantize:11", 10),      # inside trial 11, chosen by the Gaussian process
    ("bayesian", "eval:13", 11),          # inside the last trial
    ("basic", "eval:3", 1),
    ("basic", "eval:6", 4),               # inside a one-op probe
    ("basic", "model-write:1", 9),
    ("mse", "eval:4", 2),                 # inside the first error-ranked fallback
    ("mse", "eval:6", 4),                 # inside the shrinking pass, after the passing trial 4
    ("basic+easy", "model-swap:1", 1),    # old best (trial 1) moved aside, new (trial 2) not yet in place
]


@pytest.mark.parametrize("strategy, point, kept", CASES, ids=[f"{s}-{p}" for s, p, _ in CASES])
def test_sigkill_then_resume(reference, tmp_path, strategy, point, kept):
    ref = reference[strategy]
    ws = tmp_path / "ws"
    assert run(ws, strategy, point) is None  # killed at the point
    hist = ws / "history.json"
    if kept == 0 and point in ("eval:1", "history-write:1"):
        assert not hist.exists()  # killed before the first history was complete: nothing to resume
    else:
        with open(hist) as f:
            json.load(f)  # valid JSON, never a torn file
        history = History.load(str(hist))
        assert history.baseline_accuracy is not None
        saved = [[t.fingerprint, t.accuracy] for t in history.trials]
        assert saved == ref["trials"][:kept]  # every finished trial, exactly as the uninterrupted run had it
        if history.best is not None:  # the best model the history names is whole and loadable
            best = ws / "best_model"
            if point.startswith("model-swap"):  # killed between the swap's two renames: it waits aside,
                best = next(ws.glob(".ilit-old-best_model-*"))  # and the next run puts it back
            ToyAdaptor(ilit.load_config({"framework": {"name": "toy"}})).load(str(best))

    had_history = hist.exists()
    resumed = run(ws, strategy, resume_file=str(hist) if had_history else None)
    assert resumed["trials"] == ref["trials"] and resumed["best"] == ref["best"]
    baseline_again = 0 if had_history else 1
    assert resumed["evaluations"] == len(ref["trials"]) - kept + baseline_again  # no finished trial re-run
    # the workspace lock file stays (empty once released: deleting it would race with a run opening it)
    leftovers = [p.name for p in ws.iterdir() if p.name not in ("history.json", "best_model", LOCK_FILE)]
    assert leftovers == [] and (ws / LOCK_FILE).read_text() == ""
    ToyAdaptor(ilit.load_config({"framework": {"name": "toy"}})).load(str(ws / "best_model"))


OBJECTIVE_CASES = [("bayesian", "eval:6", 4), ("bayesian", "history-rename:9", 7), ("basic", "eval:6", 4)]


@pytest.fixture(scope="module")
def references_by_objective(tmp_path_factory):
    """The uninterrupted run of each strategy under each timing objective, run once when first needed."""
    root, done = tmp_path_factory.mktemp("reference-objectives"), {}

    def get(strategy, objective):
        if (strategy, objective) not in done:
            done[strategy, objective] = run(root / f"{strategy}-{objective}", strategy, objective=objective)
        return done[strategy, objective]
    return get


@pytest.mark.parametrize("objective", ["performance", "footprint"])
@pytest.mark.parametrize("strategy, point, kept", OBJECTIVE_CASES, ids=[f"{s}-{p}" for s, p, _ in OBJECTIVE_CASES])
def test_sigkill_then_resume_under_every_objective(references_by_objective, tmp_path, objective, strategy, point,
                                                   kept):
    """Timing objectives measure differently in each process, so resume must not depend on their values: the
    trials (configs and accuracies) are those of the uninterrupted run, none re-run, and the best is a meeting
    trial. (modelsize, deterministic, is held to the same best as well, in test_sigkill_then_resume.)"""
    ref = references_by_objective(strategy, objective)
    ws = tmp_path / "ws"
    assert run(ws, strategy, point, objective=objective) is None
    history = History.load(str(ws / "history.json"))
    assert [[t.fingerprint, t.accuracy] for t in history.trials] == ref["trials"][:kept]
    resumed = run(ws, strategy, resume_file=str(ws / "history.json"), objective=objective)
    assert resumed["trials"] == ref["trials"]
    assert resumed["evaluations"] == len(ref["trials"]) - kept
    assert resumed["best"] is not None and resumed["best"] in resumed["meeting"]
    assert resumed["meeting"] == ref["meeting"]
    ToyAdaptor(ilit.load_config({"framework": {"name": "toy"}})).load(str(ws / "best_model"))
