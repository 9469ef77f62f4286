"""A PyTorch tuning run under ``objective: modelsize`` for test_crash_resume.py, which SIGKILLs it mid-run.

    python crash_child.py WORKSPACE FP32_STATE PAUSE [RESUME_FILE]

FP32_STATE is the trained DigitsCNN's state dict (the parent trains once, so every process tunes the same
weights). PAUSE is ``none`` or ``eval:N``: at the N-th evaluation (the first is the FP32 baseline) it prints
``PAUSED`` and sleeps until killed. Without a pause it prints ``RESULT {json}`` at the end: each trial's
fingerprint, accuracy and measured size, the best trial and a hash of ``best_model``'s files.
"""

import hashlib
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "..", "examples"))
from pytorch_digits_demo import DigitsCNN  # noqa: E402

import ilit  # noqa: E402

workspace, state_file, pause = sys.argv[1:4]
resume_file = sys.argv[4] if len(sys.argv) > 4 else None
point, _, nth = pause.partition(":")
evaluations = 0

model = DigitsCNN(width=8)
model.load_state_dict(torch.load(state_file, weights_only=True))
model.eval()
from sklearn.datasets import load_digits  # noqa: E402

d = load_digits()
x = torch.tensor(d.images / 16.0, dtype=torch.float32).unsqueeze(1)
y = torch.tensor(d.target, dtype=torch.long)
calib = [(x[i:i + 64], y[i:i + 64]) for i in range(0, 256, 64)]
test = (x[1300:], y[1300:])


def eval_func(m):
    global evaluations
    evaluations += 1
    if point == "eval" and evaluations == int(nth):
        print("PAUSED", flush=True)
        time.sleep(600)
    with torch.no_grad():
        return float((m(test[0]).argmax(1) == test[1]).float().mean())


conf = {
    "framework": {"name": "pytorch"},
    "calibration": {"iterations": [2], "algorithm": {"activation": "minmax"}},
    "quantization": {"approach": "post_training_static_quant",
                     "weight": {"granularity": ["per_channel", "per_tensor"], "scheme": "sym"}},
    "tuning": {"strategy": "bayesian", "accuracy_criterion": {"relative": 0.5}, "objective": "modelsize",
               "timeout": 3600, "max_trials": 5, "random_seed": 7, "workspace": {"path": workspace}},
}
tuner = ilit.Tuner(conf)
tuner.tune(model, q_dataloader=calib, eval_func=eval_func, resume_file=resume_file)
best_dir = os.path.join(workspace, "best_model")
digest = hashlib.sha256()
for name in sorted(os.listdir(best_dir)):
    with open(os.path.join(best_dir, name), "rb") as f:
        digest.update(name.encode() + f.read())
print("RESULT " + json.dumps({
    "evaluations": evaluations,
    "trials": [[t.fingerprint, t.accuracy, t.objective] for t in tuner.history.trials],
    "best": tuner.best_trial.trial if tuner.best_trial else None,
    "best_model": digest.hexdigest(),
}), flush=True)
