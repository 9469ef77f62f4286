"""Capability: every quantizable layer by name and type, and the choices MXNet supports."""

from __future__ import annotations

import mxnet as mx
import numpy as np
from mxnet.contrib import quantization as mxq
from mxnet.gluon import nn

import ilit
from conftest import GLUON_OPS, make_adaptor, tracks_fp32
from ilit_mxnet import node_precisions


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
    assert first["activation"] == {"dtype": "uint8", "scheme": "asym", "granularity": "per_tensor",
                                   "algorithm": "minmax"}
    assert first["weight"]["dtype"] == "int8"
    # 2 weight granularities x (2 dtypes x 2 schemes x 2 algorithms) activation choices
    assert len(space.model_wise_configs()) == 16
    # asym is MXNet's auto whatever the dtype: the tuner sees 12 distinct models, not 16
    canonical = {ilit.cfg_fingerprint(ad.canonical_cfg(c)) for c in space.model_wise_configs()}
    assert len(canonical) == 12
    assert ad.canonical_cfg(space.model_wise_configs()[0])["ops"]["digits_conv0_fwd"]["activation"]["dtype"] == "int8"


class _ResidualConcat(nn.HybridBlock):
    """A residual add (fused into the conv by oneDNN), a concat and an elementwise add, then pooling and FC."""

    def __init__(self, **kw):
        super().__init__(**kw)
        with self.name_scope():
            self.c0, self.c1 = nn.Conv2D(8, 3, padding=1), nn.Conv2D(8, 3, padding=1)
            self.c2, self.c3 = nn.Conv2D(8, 3, padding=1), nn.Conv2D(8, 1)
            self.fc = nn.Dense(10)

    def hybrid_forward(self, F, x):
        a = F.relu(self.c0(x))
        b = self.c1(a) + a
        c = F.concat(F.relu(b), F.relu(self.c2(a)), dim=1)
        e = F.elemwise_add(self.c3(c), b)
        return self.fc(F.Pooling(e, kernel=(2, 2), stride=(2, 2), pool_type="avg"))


def test_residual_add_and_concat_are_quantized(calib):
    mx.random.seed(3)
    net = _ResidualConcat(prefix="res_")
    net.initialize(mx.init.Xavier())
    ad = make_adaptor()
    cap = ad.query_fw_capability(net)
    assert list(cap["op_wise"]) == [("res_conv0_fwd", "Convolution"), ("res_conv1_fwd", "Convolution"),
                                    ("res_conv2_fwd", "Convolution"), ("res_concat0", "Concat"),
                                    ("res_conv3_fwd", "Convolution"), ("res_pooling0", "Pooling"),
                                    ("res_dense0_fwd", "FullyConnected")]
    graph = ad._graph(ad._source(net))
    assert "add" in graph.op("res_conv1_fwd").node and "add" in graph.op("res_conv3_fwd").node  # adds fused
    conf = {"quantization": {"weight": {"granularity": "per_tensor"}, "activation": {"scheme": "asym"}}}
    space = ilit.TuningSpace.build(cap, ilit.load_config(conf))
    q = ad.quantize(space.model_wise_configs()[0], net, calib[:2])
    assert set(node_precisions(q).values()) == {"int8"}
    x = calib[5][0]
    # the same graph as MXNet's own quantize_net_v2 with the same settings: identical outputs
    hand = mxq.quantize_net_v2(net, quantized_dtype="auto", quantize_granularity="tensor-wise", calib_mode="naive",
                               calib_data=[[mx.nd.array(b)] for b, _ in calib[:2]])
    np.testing.assert_array_equal(q(x).asnumpy(), hand(mx.nd.array(x)).asnumpy())
    # auto (uint8 where calibration saw no negatives) loses a lot on this untrained net; int8 does not
    int8_sym = {"quantization": {"activation": {"dtype": "int8", "scheme": "sym"}}}
    sym = ilit.TuningSpace.build(cap, ilit.load_config(int8_sym))
    q8 = ad.quantize(sym.model_wise_configs()[0], net, calib[:2])
    ref, out = net(mx.nd.array(x)).asnumpy(), q8(x).asnumpy()
    assert tracks_fp32(out, ref)
    assert not np.array_equal(out, ref)
    assert ad.calibration_runs == 1  # one collection served both
