"""The adaptor on Keras, SavedModel and tf.function inputs: capability, real INT8, fallback, calibration reuse."""

from __future__ import annotations

import numpy as np
import pytest

import ilit
from ilit_tensorflow import QAT_MESSAGE, TensorFlowAdaptor, TFLiteModel
from ilit_tensorflow.flatbuffer import OpInfo

from conftest import accuracy, interpreter_tensor_types, make_config

STATIC, DYNAMIC = "post_training_static_quant", "post_training_dynamic_quant"


def space_for(adaptor, model, config):
    return ilit.TuningSpace.build(adaptor.query_fw_capability(model), config)


def minmax_cfg(space, granularity="per_channel", algorithm="minmax", iterations=4):
    choice = {"weight": {"dtype": "int8", "scheme": "sym", "granularity": granularity, "algorithm": "minmax"},
              "activation": {"dtype": "int8", "scheme": "asym", "granularity": "per_tensor", "algorithm": algorithm}}
    return space.make_config(choice, iterations)


def test_capability_lists_every_quantizable_op_with_its_type(keras_model):
    cfg = make_config()
    cap = TensorFlowAdaptor(cfg).query_fw_capability(keras_model)
    assert cap["approaches"] == [STATIC, DYNAMIC]
    types = [t for (_n, t) in cap["op_wise"]]
    assert types == ["CONV_2D", "DEPTHWISE_CONV_2D", "CONV_2D", "ADD", "MAX_POOL_2D", "CONCATENATION",
                     "FULLY_CONNECTED", "FULLY_CONNECTED"]
    names = [n for (n, _t) in cap["op_wise"]]
    assert names == ["conv", "dwconv", "pointwise", "residual", "pool", "concat", "fc", "logits"]  # Keras layer names
    for (name, op_type), op_cap in cap["op_wise"].items():
        act = op_cap["activation"]
        assert act == {"dtype": ["int8", "fp32"], "scheme": ["asym"], "granularity": ["per_tensor"],
                       "algorithm": ["minmax", "kl", "percentile"]}
        if op_type in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
            assert op_cap["weight"] == {"dtype": ["int8", "fp32"], "scheme": ["sym"],
                                        "granularity": ["per_channel", "per_tensor"], "algorithm": ["minmax"]}
        else:
            assert "weight" not in op_cap, name
    # stable: a fresh adaptor names the same model's ops identically
    again = TensorFlowAdaptor(cfg).query_fw_capability(keras_model)
    assert list(again["op_wise"]) == list(cap["op_wise"])


def test_saved_model_and_tf_function_give_the_same_ops(keras_model, saved_model_dir, tf_function):
    cfg = make_config()
    keras_ops = list(TensorFlowAdaptor(cfg).query_fw_capability(keras_model)["op_wise"])
    assert list(TensorFlowAdaptor(cfg).query_fw_capability(saved_model_dir)["op_wise"]) == keras_ops
    assert list(TensorFlowAdaptor(cfg).query_fw_capability(tf_function)["op_wise"]) == keras_ops


@pytest.mark.parametrize("kind", ["keras", "saved_model", "function"])
def test_static_quantization_is_real_int8_and_accurate(kind, keras_model, saved_model_dir, tf_function,
                                                         calib_loader, test_loader):
    model = {"keras": keras_model, "saved_model": saved_model_dir, "function": tf_function}[kind]
    cfg = make_config()
    adaptor = TensorFlowAdaptor(cfg)
    space = space_for(adaptor, model, cfg)
    q = adaptor.quantize(minmax_cfg(space), model, calib_loader)
    assert isinstance(q, TFLiteModel)
    types = interpreter_tensor_types(q)
    for name in space.ops:
        op = q.op(name)
        assert types[op.outputs[0]] == np.int8, name          # int8 activations
        if op.type in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
            assert types[op.inputs[1]] == np.int8, name       # int8 weights
            assert types[op.inputs[2]] == np.int32, name      # int32 bias
    fp32 = accuracy(adaptor, model, test_loader)
    assert fp32 > 0.9
    assert accuracy(adaptor, q, test_loader) >= fp32 - 0.02
    float_size = len(adaptor._prepare(model).float_content)
    assert q.size < float_size / 2.5


def test_fallback_ops_stay_float_in_the_flatbuffer(keras_model, calib_loader, test_loader):
    cfg = make_config()
    adaptor = TensorFlowAdaptor(cfg)
    space = space_for(adaptor, model := keras_model, cfg)
    dw, fc = space.ops[1], space.ops[6]
    tune_cfg = space.with_fallback(minmax_cfg(space), [dw, fc])
    assert ilit.fallback_ops(tune_cfg) == [dw, fc]
    q = adaptor.quantize(tune_cfg, model, calib_loader)
    types = interpreter_tensor_types(q)
    for name in space.ops:
        op = q.op(name)
        io = [types[t] for t in op.inputs + op.outputs if t >= 0 and types[t] != np.int32]
        if name in (dw, fc):
            assert op.is_float and all(t == np.float32 for t in io), (name, io)
        else:
            assert types[op.outputs[0]] == np.int8, name
    # the float ops are fed through DEQUANTIZE and feed QUANTIZE ops the quantizer inserted
    assert sum(o.type == "DEQUANTIZE" for o in q.ops) >= 3
    assert accuracy(adaptor, q, test_loader) >= accuracy(adaptor, model, test_loader) - 0.02


def test_granularity_reaches_the_weights(keras_model, calib_loader):
    cfg = make_config()
    adaptor = TensorFlowAdaptor(cfg)
    space = space_for(adaptor, keras_model, cfg)
    from ai_edge_litert.interpreter import Interpreter

    def weight_scales(q, name):
        d = {t["index"]: t for t in Interpreter(model_content=q.content).get_tensor_details()}
        return len(d[q.op(name).inputs[1]]["quantization_parameters"]["scales"])

    pc = adaptor.quantize(minmax_cfg(space, "per_channel"), keras_model, calib_loader)
    pt = adaptor.quantize(minmax_cfg(space, "per_tensor"), keras_model, calib_loader)
    conv, fc = space.ops[0], space.ops[6]
    assert weight_scales(pc, conv) == 16 and weight_scales(pc, fc) == 64
    assert weight_scales(pt, conv) == 1 and weight_scales(pt, fc) == 1
    mixed = minmax_cfg(space, "per_channel")
    mixed["ops"][conv]["weight"]["granularity"] = "per_tensor"
    with pytest.raises(ValueError, match="all conv ops at once"):
        adaptor.quantize(mixed, keras_model, calib_loader)


def test_calibration_is_collected_once_per_setting(keras_model, calib_loader):
    cfg = make_config(iterations=(3, 5))
    adaptor = TensorFlowAdaptor(cfg)
    space = space_for(adaptor, keras_model, cfg)
    base = minmax_cfg(space, iterations=3)
    adaptor.quantize(base, keras_model, calib_loader)
    assert adaptor.calibration_batches == 3
    # same calibration key: other granularity, fallback -> no batch run again
    adaptor.quantize(minmax_cfg(space, "per_tensor", iterations=3), keras_model, calib_loader)
    adaptor.quantize(space.with_fallback(base, [space.ops[0]]), keras_model, calib_loader)
    assert adaptor.calibration_batches == 3
    # kl needs the activations themselves: collected once, from the same 3 batches
    kl = minmax_cfg(space, algorithm="kl", iterations=3)
    adaptor.quantize(kl, keras_model, calib_loader)
    assert adaptor.calibration_batches == 6
    adaptor.quantize(space.with_fallback(kl, [space.ops[-1]]), keras_model, calib_loader)
    adaptor.quantize(minmax_cfg(space, algorithm="percentile", iterations=3), keras_model, calib_loader)
    assert adaptor.calibration_batches == 6
    # a new batch count is a new calibration
    adaptor.quantize(minmax_cfg(space, iterations=5), keras_model, calib_loader)
    assert adaptor.calibration_batches == 11
    assert len(adaptor._stats) == 4 and len(adaptor._calibrated) == 2


def test_kl_and_percentile_write_their_ranges_into_the_model(keras_model, calib_loader, test_loader):
    cfg = make_config()
    adaptor = TensorFlowAdaptor(cfg)
    space = space_for(adaptor, keras_model, cfg)
    from ai_edge_litert.interpreter import Interpreter

    def out_scales(q):
        d = {t["index"]: t for t in Interpreter(model_content=q.content).get_tensor_details()}
        return np.array([d[q.op(n).outputs[0]]["quantization_parameters"]["scales"][0] for n in space.ops])

    models = {a: adaptor.quantize(minmax_cfg(space, algorithm=a), keras_model, calib_loader)
              for a in ("minmax", "kl", "percentile")}
    mm, kl, pct = (out_scales(models[a]) for a in ("minmax", "kl", "percentile"))
    # clipping algorithms never widen a range and narrow at least some
    assert np.all(kl <= mm * (1 + 1e-5)) and np.any(kl < mm * 0.99)
    assert np.all(pct <= mm * (1 + 1e-5)) and np.any(pct < mm * 0.999)
    fp32 = accuracy(adaptor, keras_model, test_loader)
    for q in models.values():
        assert accuracy(adaptor, q, test_loader) >= fp32 - 0.05


def test_inspect_tensor_from_float_and_quantized(keras_model, calib_loader):
    cfg = make_config()
    adaptor = TensorFlowAdaptor(cfg)
    space = space_for(adaptor, keras_model, cfg)
    fc = space.ops[6]
    q = adaptor.quantize(space.with_fallback(minmax_cfg(space), [fc]), keras_model, calib_loader)
    ops = space.ops
    f32 = adaptor.inspect_tensor(keras_model, calib_loader, ops, [0, 2])
    i8 = adaptor.inspect_tensor(q, calib_loader, ops, [0, 2])
    x0 = calib_loader[0][0]
    for name in ops:
        assert len(f32[name]) == len(i8[name]) == 2
        a, b = f32[name][0], i8[name][0]
        assert a.shape == b.shape and a.shape[0] == len(x0) and b.dtype == np.float32
        err = np.abs(a - b).max() / (np.abs(a).max() + 1e-6)
        assert err < 0.2, (name, err)             # dequantized int8 values track the float ones
        assert not np.array_equal(f32[name][0], f32[name][1])  # batches 0 and 2 really differ
    # the first op's float output matches what Keras computes for it
    conv = keras_model.get_layer("conv")
    import tensorflow as tf

    probe = tf.keras.Model(keras_model.inputs, conv.output)
    np.testing.assert_allclose(f32[ops[0]][0], probe([x0]).numpy(), rtol=1e-4, atol=1e-4)
    # the last op's output is the model's output (the reference kernels used for inspection may round
    # one step differently from XNNPACK's)
    from ai_edge_litert.interpreter import Interpreter

    details = {t["index"]: t for t in Interpreter(model_content=q.content).get_tensor_details()}
    step = details[q.op(ops[-1]).outputs[0]]["quantization_parameters"]["scales"][0]
    assert np.abs(i8[ops[-1]][0] - q(x0)).max() <= step * 1.01
    assert TensorFlowAdaptor.supports_inspect_tensor()


def test_save_and_load_round_trip(keras_model, calib_loader, test_loader, tmp_path):
    cfg = make_config()
    adaptor = TensorFlowAdaptor(cfg)
    space = space_for(adaptor, keras_model, cfg)
    tune_cfg = space.with_fallback(minmax_cfg(space), [space.ops[-1]])
    q = adaptor.quantize(tune_cfg, keras_model, calib_loader)
    adaptor.save(q, str(tmp_path / "best"))
    file = tmp_path / "best" / "model.tflite"
    assert file.read_bytes() == q.content
    loaded = TensorFlowAdaptor(cfg).load(str(tmp_path / "best"))
    assert loaded.tune_cfg == tune_cfg and loaded.op_index == q.op_index
    x = test_loader[0][0]
    np.testing.assert_array_equal(loaded(x), q(x))
    metric = ilit_topk()
    assert adaptor.evaluate(loaded, test_loader, metric) == pytest.approx(accuracy(adaptor, q, test_loader))
    # a bare .tflite file loads too, and the FP32 model saves as its float conversion
    assert TFLiteModel.load(str(file)).content == q.content
    adaptor.save(keras_model, str(tmp_path / "fp32"))
    fp32 = TFLiteModel.load(str(tmp_path / "fp32"))
    np.testing.assert_allclose(fp32(x), keras_model(x).numpy(), rtol=1e-4, atol=1e-4)


def ilit_topk():
    from ilit import registry

    return registry.load("metric", "topk")(1)


def test_dynamic_range_quantization_and_fallback(keras_model, calib_loader, test_loader):
    cfg = make_config(DYNAMIC)
    adaptor = TensorFlowAdaptor(cfg)
    space = space_for(adaptor, keras_model, cfg)
    # the converter quantizes only weights of >= 1024 elements: here only fc (512x64); the convs and logits are small
    assert [adaptor._prepare(keras_model).names[n].type for n in space.ops] == ["FULLY_CONNECTED"]
    q = adaptor.quantize(space.model_wise_configs()[0], keras_model, calib_loader)
    assert adaptor.calibration_batches == 0
    assert all(q.op(n).weight_type == "INT8" for n in space.ops)
    assert all(q.op(n).output_types[0] == "FLOAT32" for n in space.ops)   # activations stay float between ops
    fb_cfg = space.with_fallback(space.model_wise_configs()[0], [space.ops[-1]])
    q2 = adaptor.quantize(fb_cfg, keras_model, calib_loader)
    assert q2.op(space.ops[-1]).weight_type == "FLOAT32" and q2.size > 2 * q.size
    x = test_loader[0][0]
    np.testing.assert_allclose(q2(x), keras_model(x).numpy(), rtol=1e-3, atol=1e-3)  # all float again
    fp32 = accuracy(adaptor, keras_model, test_loader)
    assert accuracy(adaptor, q, test_loader) >= fp32 - 0.02
    assert accuracy(adaptor, q2, test_loader) >= fp32 - 0.02


def test_quant_aware_training_says_what_to_use_instead(keras_model, calib_loader):
    adaptor = TensorFlowAdaptor(make_config("quant_aware_training"))
    with pytest.raises(NotImplementedError, match="post_training_static_quant"):
        adaptor.query_fw_capability(keras_model)
    with pytest.raises(NotImplementedError, match="Keras 3"):
        adaptor.quantize({"approach": "quant_aware_training", "calibration": {"iterations": 1}, "ops": {}},
                         keras_model, calib_loader)
    assert "tensorflow-model-optimization" in QAT_MESSAGE


def test_detection_and_bad_inputs(keras_model, saved_model_dir, tmp_path):
    assert TensorFlowAdaptor.accepts(keras_model)
    assert TensorFlowAdaptor.accepts(saved_model_dir)
    assert not TensorFlowAdaptor.accepts(np.zeros(3))
    adaptor = TensorFlowAdaptor(make_config())
    with pytest.raises(ValueError, match="not a SavedModel directory"):
        adaptor.query_fw_capability(str(tmp_path))
    with pytest.raises(TypeError, match="Keras model, a SavedModel directory or a tf.function"):
        adaptor.query_fw_capability(object())
    import tensorflow as tf

    with pytest.raises(ValueError, match="input_signature"):
        adaptor.query_fw_capability(tf.function(lambda x: x))


def test_missing_tensorflow_names_the_install_command(monkeypatch):
    import sys

    from ilit_tensorflow import _deps

    monkeypatch.setitem(sys.modules, "tensorflow", None)
    with pytest.raises(ImportError, match=r"pip install 'ilit-tensorflow\[tensorflow\]'"):
        _deps.tf()


def test_opinfo_is_float_ignores_integer_shape_tensors():
    op = OpInfo(0, "RESHAPE", (1, 2), (3,), ("r",), ("FLOAT32", "INT32"), ("FLOAT32",), (False, True))
    assert op.is_float
    assert not OpInfo(0, "ADD", (1, 2), (3,), ("a",), ("INT8", "INT8"), ("INT8",), (False, False)).is_float


def test_several_inputs_are_matched_by_name(tmp_path):
    """TFLite orders a model's inputs its own way; lists of inputs follow the model's order, by signature name."""
    import tensorflow as tf

    keras = tf.keras
    a, b = keras.Input((4,), name="a"), keras.Input((6,), name="b")
    x = keras.layers.Concatenate(name="cat")([keras.layers.Dense(8, name="da")(a), keras.layers.Dense(8, name="db")(b)])
    model = keras.Model([a, b], keras.layers.Dense(3, name="out")(x))
    rng = np.random.default_rng(0)
    loader = [((rng.random((8, 4), dtype=np.float32), rng.random((8, 6), dtype=np.float32)), np.zeros(8))
              for _ in range(4)]
    path = str(tmp_path / "two_inputs")
    model.export(path, verbose=False)
    x0 = list(loader[0][0])
    ref = model(x0).numpy()
    for source in (model, path):
        cfg = make_config()
        adaptor = TensorFlowAdaptor(cfg)
        space = space_for(adaptor, source, cfg)
        assert space.ops == ["da", "db", "cat", "out"]
        q = adaptor.quantize(minmax_cfg(space, algorithm="percentile"), source, loader)
        assert np.abs(q(x0) - ref).max() < 0.05 * np.abs(ref).max()
        assert np.allclose(np.asarray(adaptor.infer(source, x0)), ref, atol=1e-5)
        inspected = adaptor.inspect_tensor(q, loader, ["da", "db"], [0])
        assert inspected["da"][0].shape == (8, 8) and inspected["db"][0].shape == (8, 8)
        q.save(str(tmp_path / "q"))
        np.testing.assert_array_equal(TFLiteModel.load(str(tmp_path / "q"))(x0), q(x0))
