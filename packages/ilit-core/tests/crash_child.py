"""A tuning run for test_crash_safety.py, which SIGKILLs it at a chosen moment.

    python crash_child.py WORKSPACE STRATEGY[+easy] PAUSE [RESUME_FILE]

PAUSE is ``none`` or ``POINT:N``: at the N-th time the run reaches POINT it prints ``PAUSED`` and
sleeps until it is killed. Points: ``eval`` (inside an evaluation; the first is the FP32 baseline),
``quantize`` (inside a trial's quantization), ``history-write`` (halfway through writing the temporary
history file), ``history-rename`` (temporary history complete, not yet renamed over history.json),
``model-write`` (halfway through saving a new best model) and ``model-swap`` (the old best model moved
aside, the new one not yet in place). Without a pause it prints ``RESULT {json}`` at the end.
The objective is ``$ILIT_CRASH_OBJECTIVE`` (default ``modelsize``).
"""

import json
import os
import sys
import time

import ilit
import ilit.history
import ilit.workspace
import ilit_toy
from ilit_toy import ToyAdaptor

workspace, strategy, pause = sys.argv[1:4]
objective = os.environ.get("ILIT_CRASH_OBJECTIVE", "modelsize")
resume_file = sys.argv[4] if len(sys.argv) > 4 else None
point, _, nth = pause.partition(":")
counts = {}


def reached(name):
    """Count a visit to ``name``; at the chosen visit, report and wait to be killed."""
    counts[name] = counts.get(name, 0) + 1
    if name == point and counts[name] == int(nth):
        print("PAUSED", flush=True)
        time.sleep(600)


original_quantize, original_save = ToyAdaptor.quantize, ToyAdaptor.save
original_dump, original_replace = json.dump, os.replace


def quantize(self, *args, **kwargs):
    reached("quantize")
    return original_quantize(self, *args, **kwargs)


def save(self, model, path):
    if ".ilit-new-" not in path:  # the model fingerprint also saves, to a temporary directory
        return original_save(self, model, path)
    original_save(self, model, path)
    with open(os.path.join(path, "weights.npz"), "r+b") as f:  # a save cut off halfway
        f.truncate(os.path.getsize(f.name) // 2)
        f.flush()
        reached("model-write")
    original_save(self, model, path)  # not killed: write it whole again


def dump(obj, f, **kwargs):
    if not (isinstance(obj, dict) and "trials" in obj):  # only the history is cut in half
        return original_dump(obj, f, **kwargs)
    text = json.dumps(obj, **kwargs)
    f.write(text[: len(text) // 2])
    f.flush()
    reached("history-write")
    f.write(text[len(text) // 2:])


def replace(src, dst):
    src_s, dst_s = os.fspath(src), os.fspath(dst)
    if ".history-" in src_s:
        reached("history-rename")
    original_replace(src, dst)
    if ".ilit-old-" in dst_s:
        reached("model-swap")


ToyAdaptor.quantize, ToyAdaptor.save = quantize, save
json.dump, os.replace = dump, replace

# STRATEGY "basic+easy": a model without fragile layers, whose model-wise configs both pass, the second
# (per-tensor weights) with a smaller model: a second best model, which the model-swap kill point needs
strategy, _, kind = strategy.partition("+")
if kind == "easy":
    model = ilit_toy.make_model(n_layers=4, width=48, seed=3)
else:  # layers wide enough that each op kept in fp32 makes the saved model clearly bigger
    model = ilit_toy.make_model(n_layers=6, width=48, fragile=(2, 4), seed=0)
data = ilit_toy.make_dataset(model)
evaluations = 0


def eval_func(m):
    global evaluations
    evaluations += 1
    reached("eval")
    return ilit_toy.accuracy(m, data)


conf = {
    "framework": {"name": "toy"},
    "calibration": {"iterations": [2], "algorithm": {"activation": "minmax"}},
    "quantization": {"weight": {"granularity": ["per_channel", "per_tensor"], "scheme": "sym"},
                     "activation": {"dtype": "uint8", "scheme": "asym"}},
    "tuning": {"strategy": strategy, "accuracy_criterion": {"relative": 0.02}, "objective": objective,
               "timeout": 3600, "max_trials": 12, "random_seed": 7, "workspace": {"path": workspace}},
}
tuner = ilit.Tuner(conf)
q = tuner.tune(model, data, eval_func=eval_func, resume_file=resume_file)
print("RESULT " + json.dumps({
    "evaluations": evaluations,
    "trials": [[t.fingerprint, None if t.accuracy != t.accuracy else t.accuracy] for t in tuner.history.trials],
    "best": tuner.best_trial.tune_cfg if tuner.best_trial else None,
    "meeting": [t.tune_cfg for t in tuner.history.trials if t.meets],
    "quantized": q is not None,
}), flush=True)
