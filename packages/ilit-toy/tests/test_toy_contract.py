"""The adaptor contract kit (ilit.testing) run against the toy adaptor, as any third-party adaptor would."""

import copy
from dataclasses import fields

import pytest

import ilit_toy
from ilit.testing import AdaptorContract, ContractSpec

MODEL = ilit_toy.make_model(n_layers=4, seed=3)
BATCHES = ilit_toy.make_dataset(MODEL, n=64, batch=16)


def toy_state(model):
    """Every field of every layer and the model's mode flag: what tune must leave as it was."""
    return {"training": model.training,
            "layers": [{f.name: getattr(layer, f.name) for f in fields(layer)} for layer in model.layers]}


class TestToyAdaptorContract(AdaptorContract):
    @pytest.fixture(scope="class")
    @classmethod
    def spec(cls):
        return ContractSpec(framework="toy", make_model=lambda: copy.deepcopy(MODEL), batches=BATCHES,
                            state=toy_state, metric={"toy_accuracy": None},
                            config={"calibration": {"algorithm": {"activation": "minmax"}}},
                            foreign_models={"toy_layer": lambda: MODEL.layers[0],
                                            "saved_path_string": lambda: "ilit_workspace/best_model"})
