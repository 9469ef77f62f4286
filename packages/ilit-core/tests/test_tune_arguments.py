"""Bad arguments to tune(): each a clear error before any calibration, quantization or evaluation runs."""

import numpy as np
import pytest

import ilit
from ilit_toy import ToyAdaptor


class CountingLoader:
    """A re-iterable loader that counts how often it is iterated, to prove nothing calibrated."""

    def __init__(self, batches):
        self.batches, self.iterations = list(batches), 0

    def __iter__(self):
        self.iterations += 1
        return iter(self.batches)


@pytest.fixture
def spy(monkeypatch):
    """Records every quantize call of the toy adaptor."""
    calls = []
    original = ToyAdaptor.quantize

    def quantize(self, *args, **kwargs):
        calls.append(args)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ToyAdaptor, "quantize", quantize)
    return calls


def never_called(_model):
    raise AssertionError("eval_func must not run when the arguments are wrong")


MXNET_BLOCK = type("HybridSequential", (), {"__module__": "mxnet.gluon.nn.basic_layers"})


@pytest.mark.parametrize("foreign", [MXNET_BLOCK(), np.zeros((2, 2)), object(), "model.pt"],
                         ids=["mxnet-block", "ndarray", "object", "path-string"])
def test_a_model_of_another_framework_is_refused_before_calibration(toy, conf, spy, foreign):
    _model, data = toy
    loader = CountingLoader(data)
    with pytest.raises(ilit.ConfigError) as e:
        ilit.Tuner(conf()).tune(foreign, loader, eval_func=never_called)
    msg = str(e.value)
    assert msg.startswith("framework.name: is 'toy', but the model given to tune() is a ")
    assert type(foreign).__qualname__ in msg and "installed adaptors: toy" in msg
    assert spy == [] and loader.iterations <= 1  # the first batch is only looked at, never calibrated on
    if isinstance(foreign, str):  # the adaptor's own reason is part of the message
        assert "('model.pt' is a path; load a saved toy model with ToyAdaptor.load first)" in msg


def test_undetectable_framework_without_framework_name(conf, toy):
    _model, data = toy
    c = conf()
    del c["framework"]
    with pytest.raises(ilit.ConfigError, match=r"^framework.name: could not tell .*mxnet.gluon.nn.basic_layers"):
        ilit.Tuner(c).tune(MXNET_BLOCK(), data, eval_func=never_called)


@pytest.mark.parametrize("which", ["q_dataloader", "eval_dataloader"])
def test_an_empty_dataloader_is_refused(toy, conf, spy, which):
    model, data = toy
    loaders = {"q_dataloader": data, "eval_dataloader": data, which: []}
    with pytest.raises(ValueError, match=f"^{which} yielded no batches"):
        ilit.Tuner(conf()).tune(model, loaders["q_dataloader"], eval_dataloader=loaders["eval_dataloader"])
    assert spy == []


def test_a_one_shot_generator_is_refused(toy, conf, spy):
    model, data = toy
    with pytest.raises(ValueError, match="q_dataloader is a one-shot generator.*pass a list"):
        ilit.Tuner(conf()).tune(model, (b for b in data), eval_dataloader=data)
    assert spy == []


def test_a_loader_that_is_not_iterable(toy, conf):
    model, data = toy
    with pytest.raises(ValueError, match="eval_dataloader must be an iterable of"):
        ilit.Tuner(conf()).tune(model, data, eval_dataloader=42)


def test_neither_eval_dataloader_nor_eval_func(toy, conf, spy):
    model, data = toy
    with pytest.raises(ValueError, match="needs eval_dataloader .* or eval_func"):
        ilit.Tuner(conf()).tune(model, data)
    assert spy == []


def test_both_eval_dataloader_and_eval_func(toy, conf, spy):
    model, data = toy
    with pytest.raises(ValueError, match="both eval_func and eval_dataloader; give one"):
        ilit.Tuner(conf()).tune(model, data, eval_dataloader=data, eval_func=never_called)
    assert spy == []


def test_eval_dataloader_without_a_metric(toy, conf, spy):
    model, data = toy
    c = conf()
    del c["tuning"]["metric"]
    with pytest.raises(ilit.ConfigError, match="^tuning.metric: an eval_dataloader needs a metric"):
        ilit.Tuner(c).tune(model, data, eval_dataloader=data)
    assert spy == []


def test_eval_func_that_is_not_callable(toy, conf):
    model, data = toy
    with pytest.raises(ValueError, match="eval_func must be a function"):
        ilit.Tuner(conf()).tune(model, data, eval_func=0.9)


def test_no_calibration_loader(toy, conf):
    model, data = toy
    with pytest.raises(ValueError, match="needs q_dataloader"):
        ilit.Tuner(conf()).tune(model, None, eval_dataloader=data)


def test_quant_aware_training_without_q_func(toy, conf, spy):
    model, data = toy
    c = conf()
    c["quantization"]["approach"] = "quant_aware_training"
    with pytest.raises(ValueError, match="quant_aware_training needs q_func"):
        ilit.Tuner(c).tune(model, data, eval_dataloader=data)
    assert spy == []


def test_calibration_data_the_model_cannot_take_fails_before_the_first_trial(toy, conf, spy):
    """Batches of the wrong shape would fail every trial alike: the FP32 model runs on one first, and says so."""
    model, data = toy
    wrong = [(x[:, :-1], y) for x, y in data]  # one feature short
    loader = CountingLoader(wrong)
    with pytest.raises(ValueError) as e:
        ilit.Tuner(conf()).tune(model, loader, eval_dataloader=data)
    assert spy == []  # nothing was quantized
    notes = "\n".join(getattr(e.value, "__notes__", []))
    assert "running the FP32 model on the first q_dataloader batch" in notes
    assert f"ndarray float32[{wrong[0][0].shape[0]}, {wrong[0][0].shape[1]}]" in notes


def test_describe_inputs_shows_the_structure_of_a_batch():
    from ilit.arguments import describe_inputs

    batch = {"input_ids": np.zeros((2, 8), np.int64), "extra": (np.ones(3, np.float32), [1, 2])}
    assert describe_inputs(batch) == ("dict{input_ids: ndarray int64[2, 8], "
                                      "extra: tuple(ndarray float32[3], list(int, int))}")
