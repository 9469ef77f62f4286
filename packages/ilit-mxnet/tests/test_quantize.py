"""Real INT8 graphs from Gluon and symbolic models: settings, fallback, calibration modes and reuse."""

from __future__ import annotations

import json

import mxnet as mx
import numpy as np
import pytest
from mxnet.contrib import quantization as mxq

import ilit
from conftest import accuracy, first_config, make_adaptor, tracks_fp32
from ilit_mxnet import SymbolModel, node_precisions


def nodes(model):
    return {n["name"]: n for n in json.loads(model.symbol.tojson())["nodes"] if n["op"] != "null"}


def calib_ranges(symbol):
    out = {}
    for n in json.loads(symbol.tojson())["nodes"]:
        attrs = n.get("attrs", {})
        if "min_calib_range" in attrs:
            out[n["name"]] = (float(attrs["min_calib_range"]), float(attrs["max_calib_range"]))
    return out


def test_gluon_model_becomes_int8_and_keeps_accuracy(gluon_net, calib, evalset):
    ad = make_adaptor()
    _space, cfg = first_config(ad, gluon_net)
    before = {k: v.data().asnumpy().copy() for k, v in gluon_net.collect_params().items()}
    q = ad.quantize(cfg, gluon_net, calib)
    assert isinstance(q, SymbolModel)
    assert set(node_precisions(q).values()) == {"int8"}
    graph = nodes(q)
    assert graph["data_quantize"]["op"] == "_contrib_quantize_v2"
    assert graph["quantized_sg_mkldnn_conv_bn_act_0"]["attrs"]["quantized"] == "true"
    base, acc = accuracy(ad, gluon_net, evalset), accuracy(ad, q, evalset)
    assert base > 0.9
    assert acc >= base * 0.99
    for k, v in gluon_net.collect_params().items():  # the FP32 model is untouched
        np.testing.assert_array_equal(v.data().asnumpy(), before[k])


@pytest.mark.parametrize("form", ["module", "tuple", "prefix", "json"])
def test_symbolic_inputs(form, module_model, calib, evalset, tmp_path):
    arg, aux = module_model.get_params()
    prefix = str(tmp_path / "digits")
    module_model.save_checkpoint(prefix, 0)
    model = {"module": module_model, "tuple": (module_model.symbol, arg, aux), "prefix": prefix,
             "json": f"{prefix}-symbol.json"}[form]
    ad = make_adaptor()
    _space, cfg = first_config(ad, model)
    q = ad.quantize(cfg, model, calib)
    assert node_precisions(q) == {"conv1": "int8", "conv2": "int8", "pool1": "int8", "flat": "int8", "fc1": "int8"}
    assert q.label_names == ["softmax_label"]
    base, acc = accuracy(ad, model, evalset), accuracy(ad, q, evalset)
    assert base > 0.9
    assert acc >= base * 0.99


def test_fallback_layers_stay_fp32_in_the_graph(gluon_net, calib, evalset):
    ad = make_adaptor()
    space, cfg = first_config(ad, gluon_net)
    fb = space.with_fallback(cfg, ["digits_conv0_fwd", "digits_dense1_fwd"])
    q = ad.quantize(fb, gluon_net, calib)
    prec = node_precisions(q)
    assert prec["digits_conv0_fwd"] == "fp32" and prec["digits_dense1_fwd"] == "fp32"
    assert [op for op, p in prec.items() if p == "int8"] == ["digits_conv1_fwd", "digits_pool0_fwd",
                                                             "digits_flatten0_flatten0", "digits_dense0_fwd"]
    graph = nodes(q)
    conv0 = q.meta["op_nodes"]["digits_conv0_fwd"]
    assert graph[conv0]["op"] == "_sg_mkldnn_conv" and "quantized" not in graph[conv0].get("attrs", {})
    assert f"quantized_{conv0}" not in graph
    fc = q.meta["op_nodes"]["digits_dense1_fwd"]
    assert graph[fc]["op"] == "_sg_mkldnn_fully_connected" and "quantized" not in graph[fc].get("attrs", {})
    assert q.arg_params["digits_dense1_weight"].dtype == np.float32
    assert accuracy(ad, q, evalset) >= accuracy(ad, gluon_net, evalset) * 0.99


def test_calibration_is_collected_once_per_setting_and_reused(gluon_net, calib):
    ad = make_adaptor()
    space, cfg = first_config(ad, gluon_net, {"calibration": {"iterations": [3, 5]}})
    it = cfg["calibration"]["iterations"]
    assert it == 3
    ad.quantize(cfg, gluon_net, calib)
    assert (ad.calibration_batches, ad.calibration_runs) == (3, 1)
    # fallback, scheme/dtype and granularity changes: no new calibration
    ad.quantize(space.with_fallback(cfg, ["digits_conv0_fwd"]), gluon_net, calib)
    ad.quantize(space.with_fallback(cfg, ["digits_pool0_fwd", "digits_dense1_fwd"]), gluon_net, calib)
    for choice in space.global_choices:
        if choice["activation"]["algorithm"] == "minmax":
            ad.quantize(space.make_config(choice, 3), gluon_net, calib)
    assert (ad.calibration_batches, ad.calibration_runs) == (3, 1)
    # kl is another calibration setting: collected once, then reused across its own fallbacks
    kl = next(c for c in space.model_wise_configs() if ilit.calibration_key(c)[2] == ("kl",))
    ad.quantize(kl, gluon_net, calib)
    ad.quantize(space.with_fallback(kl, ["digits_dense0_fwd"]), gluon_net, calib)
    assert (ad.calibration_batches, ad.calibration_runs) == (6, 2)
    # another batch count is another setting
    ad.quantize(space.make_config(space.global_choices[0], 5), gluon_net, calib)
    assert (ad.calibration_batches, ad.calibration_runs) == (11, 3)


@pytest.mark.parametrize("algo,mode", [("minmax", "naive"), ("kl", "entropy")])
def test_calibration_matches_mxnet_quantize_net_v2(algo, mode, gluon_net, calib):
    """Both algorithms give exactly the calibration table MXNet's own quantize_net_v2 computes."""
    ad = make_adaptor()
    _space, cfg = first_config(ad, gluon_net, {
        "calibration": {"iterations": 4, "algorithm": {"activation": algo}},
        "quantization": {"weight": {"granularity": "per_tensor"}, "activation": {"scheme": "asym"}}})
    q = ad.quantize(cfg, gluon_net, calib)
    assert q.meta["calibration"] == algo and q.meta["quantized_dtype"] == "auto"
    ref = mxq.quantize_net_v2(gluon_net, quantized_dtype="auto", quantize_granularity="tensor-wise",
                              calib_data=[[mx.nd.array(x)] for x, _y in calib[:4]], calib_mode=mode)
    ref_sym = ref._cached_graph[1]
    mine, theirs = calib_ranges(q.symbol), calib_ranges(ref_sym)
    assert mine.keys() == theirs.keys() and len(mine) >= 4
    for node in mine:
        np.testing.assert_allclose(mine[node], theirs[node], rtol=1e-5, atol=1e-6, err_msg=node)
    # in fact the whole INT8 graph is MXNet's, node for node
    graph = [(n["op"], n["name"], n.get("attrs")) for n in json.loads(q.symbol.tojson())["nodes"]]
    assert graph == [(n["op"], n["name"], n.get("attrs")) for n in json.loads(ref_sym.tojson())["nodes"]]


def test_kl_and_minmax_differ_and_both_hold_accuracy(gluon_net, calib, evalset):
    ad = make_adaptor()
    base = accuracy(ad, gluon_net, evalset)
    ranges = {}
    for algo in ("minmax", "kl"):
        _space, cfg = first_config(ad, gluon_net, {"calibration": {"algorithm": {"activation": algo}}})
        q = ad.quantize(cfg, gluon_net, calib)
        ranges[algo] = calib_ranges(q.symbol)
        assert accuracy(ad, q, evalset) >= base * 0.99, algo
    assert ranges["minmax"].keys() == ranges["kl"].keys()
    assert any(ranges["kl"][k][1] < ranges["minmax"][k][1] for k in ranges["kl"])  # kl clips outliers


@pytest.mark.parametrize("dtype,scheme,expected", [("int8", "sym", "int8"), ("uint8", "sym", "uint8"),
                                                   ("int8", "asym", "auto"), ("uint8", "asym", "auto")])
def test_activation_dtype_maps_to_mxnet(dtype, scheme, expected, gluon_net, calib, evalset):
    ad = make_adaptor()
    _space, cfg = first_config(ad, gluon_net, {"quantization": {"activation": {"dtype": dtype, "scheme": scheme}}})
    q = ad.quantize(cfg, gluon_net, calib)
    assert q.meta["quantized_dtype"] == expected
    assert nodes(q)["data_quantize"]["attrs"]["out_type"] == expected
    assert accuracy(ad, q, evalset) >= accuracy(ad, gluon_net, evalset) * 0.99  # digits pixels are >= 0


@pytest.mark.parametrize("gran", ["per_channel", "per_tensor"])
def test_weight_granularity(gran, gluon_net, calib):
    ad = make_adaptor()
    _space, cfg = first_config(ad, gluon_net, {"quantization": {"weight": {"granularity": gran}}})
    q = ad.quantize(cfg, gluon_net, calib)
    fc = nodes(q)[f"quantized_{q.meta['op_nodes']['digits_dense0_fwd']}"]
    assert (fc["attrs"].get("channel_wise_quantize") == "True") == (gran == "per_channel")
    assert q.meta["granularity"] == {"per_channel": "channel-wise", "per_tensor": "tensor-wise"}[gran]
    if gran == "per_tensor":  # FC weights are stored as int8 (oneDNN quantizes channel-wise ones at load time)
        assert q.arg_params["digits_dense0_weight_quantize"].dtype == np.int8
        assert "digits_dense0_weight" not in q.arg_params


def test_mixed_granularity_is_refused_with_a_reason(gluon_net, calib):
    ad = make_adaptor()
    _space, cfg = first_config(ad, gluon_net)
    cfg["ops"]["digits_conv0_fwd"]["weight"]["granularity"] = "per_tensor"
    cfg["ops"]["digits_dense0_fwd"]["weight"]["granularity"] = "per_channel"
    with pytest.raises(ValueError, match="one weight granularity"):
        ad.quantize(cfg, gluon_net, calib)


def test_approaches(gluon_net, calib, evalset):
    ad = make_adaptor()
    _space, cfg = first_config(ad, gluon_net, {"quantization": {"weight": {"granularity": "per_tensor"}}})
    with pytest.raises(NotImplementedError, match="quant_aware_training"):
        ad.quantize(dict(cfg, approach="quant_aware_training"), gluon_net, calib)
    dyn = ad.quantize(dict(cfg, approach="post_training_dynamic_quant"), gluon_net, calib)
    assert ad.calibration_batches == 0  # ranges are computed at run time
    assert "min_calib_range" not in nodes(dyn)["data_quantize"].get("attrs", {})
    assert set(node_precisions(dyn).values()) == {"int8"}
    assert accuracy(ad, dyn, evalset) >= accuracy(ad, gluon_net, evalset) * 0.99
    _space, pc = first_config(ad, gluon_net, {"quantization": {"weight": {"granularity": "per_channel"}}})
    with pytest.raises(ValueError, match="per_tensor"):
        ad.quantize(dict(pc, approach="post_training_dynamic_quant"), gluon_net, calib)
    with pytest.raises(ilit.ConfigError, match="quant_aware_training"):
        ilit.TuningSpace.build(ad.query_fw_capability(gluon_net), ilit.load_config(
            {"quantization": {"approach": "quant_aware_training"}}))


class _TwoInputs(mx.gluon.HybridBlock):
    def __init__(self, **kw):
        super().__init__(**kw)
        with self.name_scope():
            self.a = mx.gluon.nn.Conv2D(8, 3, padding=1, activation="relu")
            self.b = mx.gluon.nn.Conv2D(8, 3, padding=1, activation="relu")
            self.fc = mx.gluon.nn.Dense(10)

    def hybrid_forward(self, F, x, y):
        return self.fc(F.concat(self.a(x), self.b(y), dim=1))


def test_multi_input_gluon_model(calib):
    mx.random.seed(5)
    net = _TwoInputs(prefix="two_")
    net.initialize(mx.init.Xavier())
    loader = [((x, x[:, :, ::-1].copy()), y) for x, y in calib[:3]]  # batches of ((input0, input1), labels)
    ad = make_adaptor()
    _space, cfg = first_config(ad, net)
    q = ad.quantize(cfg, net, loader)
    assert q.data_names == ["data0", "data1"]
    assert node_precisions(q) == {"two_conv0_fwd": "int8", "two_conv1_fwd": "int8", "two_concat0": "int8",
                                  "two_dense0_fwd": "int8"}
    inputs = loader[1][0]
    ref = net(*[mx.nd.array(a) for a in inputs]).asnumpy()
    out = ad.infer(q, inputs).asnumpy()
    assert tracks_fp32(out, ref) and not np.array_equal(out, ref)


def test_uint8_sym_on_signed_data_is_refused_clearly(gluon_net, calib):
    ad = make_adaptor()
    _space, cfg = first_config(ad, gluon_net, {"quantization": {"activation": {"dtype": "uint8", "scheme": "sym"}}})
    signed = [(x - 0.5, y) for x, y in calib[:4]]
    with pytest.raises(ValueError, match=r"\['data'\] take negative values.*asym"):
        ad.quantize(cfg, gluon_net, signed)
