"""The TensorFlow adaptor's reliability: models of another framework, untrusted saved files, the user's model left
as it was, and failing user code, all through ``ilit.Tuner`` with the real adaptor."""

from __future__ import annotations

import json
import os
import pathlib
import pickle
import shlex
import sys

import numpy as np
import pytest
import tensorflow as tf

import ilit
from ilit.testing import AdaptorContract, ContractSpec
import ilit_tensorflow.adaptor as tf_adaptor
from ilit_tensorflow import InvalidModelFileError, TensorFlowAdaptor, TFLiteModel
from ilit_tensorflow import flatbuffer as fb

from conftest import make_config


def tuner_conf(tmp_path, **tuning):
    return {"framework": {"name": "tensorflow"}, "calibration": {"iterations": [4]},
            "tuning": {"metric": {"topk": 1}, "accuracy_criterion": {"relative": 0.05}, "max_trials": 5,
                       "workspace": {"path": str(tmp_path / "ws")}, **tuning}}


def top1(model, loader) -> float:
    """What a user's eval_func does: run the model (Keras in inference mode, or the TFLite model) and count hits."""
    hits = total = 0
    for x, y in loader:
        out = model(x, training=False) if isinstance(model, tf.keras.Model) else model(x)
        hits += int((np.asarray(out).argmax(1) == y).sum())
        total += len(y)
    return hits / total


@pytest.fixture
def adaptor_calls(monkeypatch):
    """Records every conversion, capability query and quantization the TensorFlow adaptor starts."""
    calls = []

    def spy(name, fn):
        def wrapper(*args, **kwargs):
            calls.append(name)
            return fn(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(tf_adaptor, "run_converter", spy("run_converter", tf_adaptor.run_converter))
    for name in ("quantize", "query_fw_capability", "_prepare"):
        monkeypatch.setattr(TensorFlowAdaptor, name, spy(name, getattr(TensorFlowAdaptor, name)))
    return calls


# ---------------------------------------------------------------------- 1. a model of another framework

def _foreign(kind, tmp_path):
    if kind == "mxnet_block":
        return type("HybridSequential", (), {"__module__": "mxnet.gluon.nn.basic_layers"})()
    if kind == "torch_module":
        return type("Sequential", (), {"__module__": "torch.nn.modules.container"})()
    if kind == "plain_object":
        return object()
    if kind == "numpy_array":
        return np.zeros((2, 8, 8, 1), np.float32)
    if kind == "dir_not_saved_model":
        tmp_path.mkdir()
        (tmp_path / "weights.h5").write_bytes(b"\x89HDF\r\n")
        return str(tmp_path)
    if kind == "missing_path":
        return pathlib.Path(tmp_path / "no_such_model")
    if kind == "keras_layer":
        return tf.keras.layers.Dense(3)
    if kind == "tf_function_without_signature":
        return tf.function(lambda x: x)
    if kind == "tflite_model":
        return TFLiteModel(b"")
    raise AssertionError(kind)


FOREIGN = ["mxnet_block", "torch_module", "plain_object", "numpy_array", "dir_not_saved_model", "missing_path",
           "keras_layer", "tf_function_without_signature", "tflite_model"]
#: what the adaptor adds to the refusal, for the near misses (Adaptor.reject_reason)
REASONS = {"dir_not_saved_model": "is not a SavedModel directory", "missing_path": "is not a SavedModel directory",
           "tf_function_without_signature": "needs an input_signature",
           "tflite_model": "already a converted TFLite model"}


@pytest.mark.parametrize("kind", FOREIGN)
def test_a_model_the_adaptor_does_not_take_is_refused_before_anything_runs(kind, tmp_path, calib_loader,
                                                                          test_loader, adaptor_calls):
    model = _foreign(kind, tmp_path / "m")
    assert not TensorFlowAdaptor.accepts(model)
    tuner = ilit.Tuner(tuner_conf(tmp_path))
    with pytest.raises(ilit.ConfigError) as info:
        tuner.tune(model, calib_loader, eval_dataloader=test_loader)
    message = str(info.value)
    assert info.value.path == "framework.name" and message.startswith("framework.name")
    assert f"{type(model).__module__}.{type(model).__qualname__}" in message
    assert REASONS.get(kind, "no reason given") in message or (kind not in REASONS and "does not take;" in message)
    assert adaptor_calls == []                # no conversion, capability query or quantization ran
    assert tuner.adaptor is None and tuner.history is None
    assert "torch" not in sys.modules and "mxnet" not in sys.modules  # telling them apart imported neither


@pytest.mark.parametrize("kind", ["mxnet_block", "torch_module"])
def test_a_foreign_model_without_framework_name_is_not_taken_for_tensorflow(kind, tmp_path, calib_loader,
                                                                            test_loader, adaptor_calls):
    conf = tuner_conf(tmp_path)
    del conf["framework"]
    with pytest.raises(ilit.ConfigError, match="framework.name"):
        ilit.Tuner(conf).tune(_foreign(kind, tmp_path), calib_loader, eval_dataloader=test_loader)
    assert adaptor_calls == []
    assert "torch" not in sys.modules and "mxnet" not in sys.modules


def test_every_model_form_the_readme_lists_is_accepted(keras_model, saved_model_dir, tf_function):
    keras = tf.keras

    class Subclassed(keras.Model):
        def __init__(self):
            super().__init__()
            self.fc = keras.layers.Dense(2)

        def call(self, x):
            return self.fc(x)

    sequential = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    for model in (keras_model, sequential, Subclassed(), saved_model_dir, pathlib.Path(saved_model_dir), tf_function):
        assert TensorFlowAdaptor.accepts(model), model
    # the SavedModel directory of a path that only names its parent is not one
    assert not TensorFlowAdaptor.accepts(os.path.dirname(saved_model_dir))


# ---------------------------------------------------------------------- 2. untrusted saved models

class _Payload:
    """Unpickling this runs a shell command that creates ``marker``: the proof that code ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(self.marker)}",)


def malicious_pickle(marker) -> bytes:
    return pickle.dumps(_Payload(str(marker)))


def test_the_crafted_pickle_does_run_code_when_unpickled(tmp_path):
    """The payload the tests below hand to load() is live: unpickling it creates its marker file."""
    marker = tmp_path / "unpickled"
    pickle.loads(malicious_pickle(marker))
    assert marker.exists()


@pytest.fixture(scope="module")
def saved_fp32(keras_model, tmp_path_factory):
    """A directory the adaptor's save wrote (the FP32 model's float conversion), with its file contents."""
    path = tmp_path_factory.mktemp("saved") / "fp32"
    TensorFlowAdaptor(make_config()).save(keras_model, str(path))
    return (path / "model.tflite").read_bytes(), (path / "ilit_tensorflow.json").read_text()


def _custom_op_model(content: bytes) -> bytes:
    """The model with its first operator turned into a custom op (as a Flex or user op would be)."""
    m = fb.read(content)
    m.operatorCodes[m.subgraphs[0].operators[0].opcodeIndex].builtinCode = 32  # BuiltinOperator.CUSTOM
    m.operatorCodes[m.subgraphs[0].operators[0].opcodeIndex].deprecatedBuiltinCode = 32
    m.operatorCodes[m.subgraphs[0].operators[0].opcodeIndex].customCode = b"FlexWriteFile"
    return fb.write(m)


def _json_with(j: str, extra: dict) -> bytes:
    """The saved metadata ``j`` with ``extra``'s keys set on top."""
    return json.dumps({**json.loads(j), **extra}).encode()


BAD_FILES = {
    # case: (file that is replaced, how its content is made from the good model bytes / JSON text and the marker)
    "pickle_as_model.tflite": ("model.tflite", lambda c, j, mk: malicious_pickle(mk)),
    "pickle_as_json": ("ilit_tensorflow.json", lambda c, j, mk: malicious_pickle(mk)),
    "pickle_as_bare_tflite_file": ("bare.tflite", lambda c, j, mk: malicious_pickle(mk)),
    "empty_model": ("model.tflite", lambda c, j, mk: b""),
    "garbage_model": ("model.tflite", lambda c, j, mk: np.random.default_rng(0).bytes(len(c))),
    "identifier_then_garbage": ("model.tflite", lambda c, j, mk: c[:8] + np.random.default_rng(1).bytes(len(c) - 8)),
    "truncated_to_half": ("model.tflite", lambda c, j, mk: c[: len(c) // 2]),
    "truncated_to_16_bytes": ("model.tflite", lambda c, j, mk: c[:16]),
    "truncated_by_one_byte": ("model.tflite", lambda c, j, mk: c[:-1]),
    "custom_op": ("model.tflite", lambda c, j, mk: _custom_op_model(c)),
    "json_not_utf8": ("ilit_tensorflow.json", lambda c, j, mk: b"\xff\xfe{}"),
    "json_a_list": ("ilit_tensorflow.json", lambda c, j, mk: b"[1, 2]"),
    "json_unknown_key": ("ilit_tensorflow.json", lambda c, j, mk: _json_with(j, {"py/object": "os.system"})),
    "json_op_index_not_ints": ("ilit_tensorflow.json", lambda c, j, mk: _json_with(j, {"op_index": {"conv": "0"}})),
    "json_op_index_out_of_range": ("ilit_tensorflow.json",
                                   lambda c, j, mk: _json_with(j, {"op_index": {"conv": 10_000}})),
    "json_tune_cfg_a_string": ("ilit_tensorflow.json", lambda c, j, mk: _json_with(j, {"tune_cfg": "x"})),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_load_refuses_files_ilit_did_not_save_and_runs_no_code(case, saved_fp32, tmp_path):
    content, meta = saved_fp32
    marker = tmp_path / "code_ran"
    target, make = BAD_FILES[case]
    model_dir = tmp_path / "best_model"
    model_dir.mkdir()
    (model_dir / "model.tflite").write_bytes(content)
    (model_dir / "ilit_tensorflow.json").write_text(meta)
    bad = model_dir / target
    bad.write_bytes(make(content, meta, marker))
    load_path = bad if target == "bare.tflite" else model_dir
    with pytest.raises(ilit.ModelFileError) as info:  # the core type every adaptor raises a subclass of
        TensorFlowAdaptor(make_config()).load(str(load_path))
    assert isinstance(info.value, InvalidModelFileError)
    assert str(bad) in str(info.value) and "is not a model ilit saved" in str(info.value)
    assert info.value.file == str(bad)
    assert not marker.exists()


def test_a_custom_op_is_refused_before_any_interpreter_is_built(saved_fp32, tmp_path, monkeypatch):
    """TensorFlow's interpreter links the Flex delegate: a FlexWriteFile op must never reach one."""
    import ilit_tensorflow.model as tfl_model

    content, meta = saved_fp32
    (tmp_path / "model.tflite").write_bytes(_custom_op_model(content))
    (tmp_path / "ilit_tensorflow.json").write_text(meta)
    built = []
    monkeypatch.setattr(tfl_model, "interpreter_class", lambda: (lambda **k: built.append(k)))
    with pytest.raises(InvalidModelFileError, match="custom or unknown ops"):
        TensorFlowAdaptor(make_config()).load(str(tmp_path))
    assert built == []


def test_deeply_nested_metadata_is_a_model_file_error(saved_fp32, tmp_path):
    content, _meta = saved_fp32
    (tmp_path / "model.tflite").write_bytes(content)
    (tmp_path / "ilit_tensorflow.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(InvalidModelFileError, match="nested too deeply"):
        TensorFlowAdaptor(make_config()).load(str(tmp_path))


def test_load_still_reads_what_save_wrote(saved_fp32, keras_model, test_loader, tmp_path):
    content, meta = saved_fp32
    (tmp_path / "model.tflite").write_bytes(content)
    (tmp_path / "ilit_tensorflow.json").write_text(meta)
    loaded = TensorFlowAdaptor(make_config()).load(str(tmp_path))
    assert loaded.op_index == json.loads(meta)["op_index"]
    x = test_loader[0][0]
    np.testing.assert_allclose(loaded(x), keras_model(x).numpy(), rtol=1e-4, atol=1e-4)


def test_a_pickle_named_saved_model_pb_runs_no_code(tmp_path, calib_loader, test_loader):
    """A directory passed to tune() as a SavedModel is parsed as a protobuf, never unpickled."""
    marker = tmp_path / "code_ran"
    model_dir = tmp_path / "untrusted_saved_model"
    model_dir.mkdir()
    (model_dir / "saved_model.pb").write_bytes(malicious_pickle(marker))
    with pytest.raises(OSError, match="saved_model.pb"):
        ilit.Tuner(tuner_conf(tmp_path)).tune(str(model_dir), calib_loader, eval_dataloader=test_loader)
    assert not marker.exists()


# ---------------------------------------------------------------------- 3. the user's model is left as it was

@pytest.fixture
def bn_dropout_model(digits):
    """A compiled, briefly trained digits net with BatchNormalization, Dropout and one frozen layer; a fresh one
    per test, so no test sees a change an earlier one left."""
    keras = tf.keras
    keras.utils.set_random_seed(2)
    inp = keras.Input((8, 8, 1), name="image")
    x = keras.layers.Conv2D(16, 3, padding="same", name="conv")(inp)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.ReLU(name="relu")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dropout(0.3, name="drop")(x)
    x = keras.layers.Dense(32, activation="relu", name="fc")(x)
    out = keras.layers.Dense(10, name="logits")(x)
    model = keras.Model(inp, out, name="bn_dropout")
    model.compile(optimizer=keras.optimizers.Adam(3e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    (xt, yt), _cal, _test = digits
    model.fit(xt, yt, epochs=2, batch_size=32, verbose=0)
    model.get_layer("fc").trainable = False  # a flag the user set, which must survive tuning
    return model


def model_state(model) -> dict:
    """Everything the user's Keras model carries: every variable bit for bit, flags, config, compile state."""
    layers = list(model._flatten_layers(include_self=True, recursive=True))
    return {
        "variables": [(v.path, v.trainable, str(v.dtype), tuple(v.shape), v.numpy().tobytes())
                      for v in model.variables],
        "layers": [(layer.name, layer.trainable, sorted(vars(layer))) for layer in layers],
        "config": model.to_json(),
        "compiled": (model.compiled, id(model.loss), id(model.optimizer)),
        "optimizer": [(v.path, v.numpy().tobytes()) for v in model.optimizer.variables],
    }


@pytest.mark.parametrize("usage", ["eval_dataloader", "eval_func"])
def test_tuning_leaves_the_keras_model_as_it_was(usage, bn_dropout_model, calib_loader, test_loader, tmp_path,
                                                monkeypatch):
    model = bn_dropout_model
    keras = tf.keras
    calls = []
    for name in ("compile", "fit", "train_on_batch", "evaluate", "predict"):
        real = getattr(keras.Model, name)
        monkeypatch.setattr(keras.Model, name,
                            lambda self, *a, _n=name, _r=real, **k: calls.append(_n) or _r(self, *a, **k))
    before = model_state(model)
    paths = [p for p, *_ in before["variables"]]
    assert "bn/moving_mean" in paths and "bn/moving_variance" in paths and any("seed_generator" in p for p in paths)
    moving_var = model.get_layer("bn").moving_variance.numpy()
    assert not np.allclose(moving_var, 1.0)  # trained: a run in training mode would move these
    assert before["optimizer"] and model.optimizer.iterations.numpy() > 0

    tuner = ilit.Tuner(tuner_conf(tmp_path, strategy="basic", max_trials=2))
    if usage == "eval_dataloader":
        q = tuner.tune(model, calib_loader, eval_dataloader=test_loader)
    else:
        q = tuner.tune(model, calib_loader, eval_func=lambda m: top1(m, test_loader))
    assert isinstance(q, TFLiteModel) and tuner.adaptor.float_conversions == 1
    assert calls == []
    after = model_state(model)
    assert after["layers"] == before["layers"]
    assert after["variables"] == before["variables"]
    assert after["optimizer"] == before["optimizer"]
    assert after == before


def _dir_contents(path) -> dict:
    return {os.path.relpath(os.path.join(root, f), path): pathlib.Path(root, f).read_bytes()
            for root, _dirs, files in os.walk(path) for f in files}


def test_quantizing_a_saved_model_or_tf_function_changes_neither(saved_model_dir, tf_function, keras_model,
                                                                 calib_loader, tmp_path):
    """The SavedModel directory's files and the variables a tf.function captures are what they were."""
    files = _dir_contents(saved_model_dir)
    captured = [(v.name, v.numpy().tobytes()) for v in tf_function.get_concrete_function().variables]
    assert captured
    for model in (saved_model_dir, tf_function):
        conf = ilit.load_config(tuner_conf(tmp_path))
        adaptor = TensorFlowAdaptor(conf)
        space = ilit.TuningSpace.build(adaptor.query_fw_capability(model), conf)
        assert isinstance(adaptor.quantize(space.model_wise_configs()[0], model, calib_loader), TFLiteModel)
    assert _dir_contents(saved_model_dir) == files
    assert [(v.name, v.numpy().tobytes()) for v in tf_function.get_concrete_function().variables] == captured


# ---------------------------------------------------------------------- 4. failing user code

def test_a_failing_trial_is_recorded_and_tuning_goes_on(keras_model, calib_loader, test_loader, tmp_path):
    seen = []

    def eval_func(model):
        if not isinstance(model, TFLiteModel):
            return top1(model, test_loader)          # the FP32 baseline
        seen.append(model)
        if len(seen) == 1:
            raise RuntimeError("the eval server dropped the connection")
        if len(seen) == 2:
            return float("nan")
        return top1(model, test_loader)

    tuner = ilit.Tuner(tuner_conf(tmp_path, strategy="basic"))
    q = tuner.tune(keras_model, calib_loader, eval_func=eval_func)
    trials = tuner.history.trials
    assert len(trials) == 3 and len(seen) == 3
    assert trials[0].error == "RuntimeError: the eval server dropped the connection" and not trials[0].meets
    assert "nan" in trials[1].error and not trials[1].meets
    assert trials[2].error is None and trials[2].meets
    assert q is seen[2] and tuner.best_trial.trial == 3
    on_disk = json.loads((tmp_path / "ws" / "history.json").read_text())
    assert [t["error"] for t in on_disk["trials"]] == [t.error for t in trials]


# ---------------------------------------------------------------------- 5. the adaptor contract kit
class TestTensorFlowAdaptorContract(AdaptorContract):
    """ilit.testing's conformance suite, the one every adaptor runs, on the session's Keras digits model."""

    @pytest.fixture(scope="class")
    @classmethod
    def spec(cls, keras_model, calib_loader):
        return ContractSpec(framework="tensorflow", make_model=lambda: keras_model, batches=calib_loader[:4],
                            state=model_state, metric={"topk": 1},
                            foreign_models={"keras_layer": lambda: keras_model.layers[1],
                                            "tf_function_without_signature": lambda: tf.function(lambda x: x)})
