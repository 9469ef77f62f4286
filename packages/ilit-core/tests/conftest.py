import copy
import signal
from typing import Any, Dict

import pytest

import ilit_toy


@pytest.fixture
def toy():
    """A 6-layer toy model with two fragile layers, and batches labelled by its own FP32 predictions."""
    model = ilit_toy.make_model(n_layers=6, fragile=(2, 4), seed=0)
    return model, ilit_toy.make_dataset(model)


@pytest.fixture
def easy_toy():
    """A toy model with no fragile layer: plain INT8 meets a 2% goal."""
    model = ilit_toy.make_model(n_layers=4, seed=3)
    return model, ilit_toy.make_dataset(model)


@pytest.fixture
def conf(tmp_path):
    """A config factory: a small space over the toy adaptor, with overrides merged in per section."""

    def make(**sections: Dict[str, Any]) -> Dict[str, Any]:
        base: Dict[str, Any] = {
            "framework": {"name": "toy"},
            "calibration": {"iterations": [2], "algorithm": {"activation": "minmax"}},
            "quantization": {"weight": {"granularity": "per_channel", "scheme": "sym"},
                             "activation": {"dtype": "uint8", "scheme": "asym"}},
            "tuning": {"metric": {"toy_accuracy": None}, "accuracy_criterion": {"relative": 0.01},
                       "workspace": {"path": str(tmp_path / "ws")}, "objective": "modelsize"},
        }
        for key, value in sections.items():
            if isinstance(value, dict) and isinstance(base.get(key), dict):
                merged = copy.deepcopy(base[key])
                merged.update(value)
                base[key] = merged
            else:
                base[key] = value
        return base

    return make


@pytest.fixture
def alarm():
    """Fail (instead of hanging the suite) if the code under test blocks for 20 s."""
    def hung(*_):
        raise TimeoutError("blocked: the file was opened or read instead of refused")
    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(20)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)
