"""Capability: every quantizable layer by name and type, and the choices MXNet supports."""

from __future__ import annotations

import ilit
from conftest import GLUON_OPS, make_adaptor


def test_gluon_capability_lists_every_quantizable_layer_in_order(gluon_net):
    cap = make_adaptor().query_fw_capability(gluon_net)
    assert list(cap["op_wise"]) == GLUON_OPS
    assert cap["approaches"] == ["post_training_static_quant", "post_training_dynamic_quant"]
    for (name, op_type), c in cap["op_wise"].items():
        assert ("weight" in c) == (op_type in ("Convolution", "FullyConnected")), name
        act = c["activation"]
        assert act["algorithm"] == ["minmax", "kl"]
        assert set(act["dtype"]) == {"int8", "uint8", "fp32"}
        assert set(act["scheme"]) == {"sym", "asym"}
        if "weight" in c:
            assert set(c["weight"]["granularity"]) == {"per_channel", "per_tensor"}
            assert c["weight"]["scheme"] == ["sym"]


def test_symbolic_capability_uses_layer_names(module_model):
    cap = make_adaptor().query_fw_capability(module_model)
    assert list(cap["op_wise"]) == [("conv1", "Convolution"), ("conv2", "Convolution"), ("pool1", "Pooling"),
                                    ("flat", "Flatten"), ("fc1", "FullyConnected")]


def test_space_builds_and_orders_model_wise_configs(gluon_net):
    ad = make_adaptor()
    cfg = ilit.load_config({"framework": {"name": "mxnet"}})
    space = ilit.TuningSpace.build(ad.query_fw_capability(gluon_net), cfg)
    first = space.model_wise_configs()[0]["ops"]["digits_conv0_fwd"]
    assert first["activation"] == {"dtype": "uint8", "scheme": "asym", "granularity": "per_tensor", "algorithm": "minmax"}
    assert first["weight"]["dtype"] == "int8"
    # 2 weight granularities x (2 dtypes x 2 schemes x 2 algorithms) activation choices
    assert len(space.model_wise_configs()) == 16
