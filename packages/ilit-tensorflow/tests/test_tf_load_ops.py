"""ilit.load and ilit.list_ops with the TensorFlow adaptor."""

from __future__ import annotations

import json

import numpy as np

import ilit
from ilit_tensorflow import TensorFlowAdaptor, TFLiteModel

from conftest import make_config


def test_ilit_load_reads_what_the_tensorflow_adaptor_saved(keras_model, calib_loader, test_loader, tmp_path):
    cfg = make_config()
    adaptor = TensorFlowAdaptor(cfg)
    space = ilit.TuningSpace.build(adaptor.query_fw_capability(keras_model), cfg)
    q = adaptor.quantize(space.model_wise_configs()[0], keras_model, calib_loader)
    adaptor.save(q, str(tmp_path / "q"))
    assert json.loads((tmp_path / "q" / "ilit_tensorflow.json").read_text())["adaptor"] == "tensorflow"
    loaded = ilit.load(str(tmp_path / "q"))
    assert isinstance(loaded, TFLiteModel) and loaded.content == q.content and loaded.tune_cfg == q.tune_cfg
    x = test_loader[0][0]
    np.testing.assert_array_equal(loaded(x), q(x))
    assert ilit.load(str(tmp_path / "q"), model=keras_model).content == q.content  # the FP32 model is not needed


def test_list_ops_gives_the_names_tuning_ops_takes(keras_model):
    ops = ilit.list_ops(keras_model)
    assert ops == [("conv", "CONV_2D"), ("dwconv", "DEPTHWISE_CONV_2D"), ("pointwise", "CONV_2D"), ("residual", "ADD"),
                   ("pool", "MAX_POOL_2D"), ("concat", "CONCATENATION"), ("fc", "FULLY_CONNECTED"),
                   ("logits", "FULLY_CONNECTED")]
    assert ilit.list_ops(keras_model, framework="tensorflow") == ops
    # a name from the list keeps that op in FP32 through tuning.ops
    cfg = ilit.load_config({"framework": {"name": "tensorflow"},
                            "tuning": {"ops": {ops[0][0]: {"activation": {"dtype": "fp32"}}}}})
    space = ilit.TuningSpace.build(TensorFlowAdaptor(cfg).query_fw_capability(keras_model), cfg)
    assert ilit.fallback_ops(space.model_wise_configs()[0]) == ["conv"]
