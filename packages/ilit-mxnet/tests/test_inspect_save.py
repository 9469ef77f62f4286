"""inspect_tensor through the executor monitor, and save/load of symbol + params."""

from __future__ import annotations

import os

import numpy as np
import pytest

from conftest import accuracy, first_config, make_adaptor
from ilit_mxnet import SymbolModel, node_precisions

OPS = ["digits_conv1_fwd", "digits_pool0_fwd", "digits_dense0_fwd", "digits_dense1_fwd"]


def _nmse(a, b):
    lo, hi = min(a.min(), b.min()), max(a.max(), b.max())
    a, b = (a - lo) / (hi - lo), (b - lo) / (hi - lo)
    return float(((a - b) ** 2).mean())


def test_inspect_tensor_fp32_and_int8(gluon_net, calib, evalset):
    ad = make_adaptor()
    space, cfg = first_config(ad, gluon_net)
    q = ad.quantize(space.with_fallback(cfg, ["digits_dense1_fwd"]), gluon_net, calib)
    assert ad.supports_inspect_tensor()
    ref = ad.inspect_tensor(gluon_net, evalset, OPS, [0, 2])
    got = ad.inspect_tensor(q, evalset, OPS, [0, 2])
    assert list(ref) == OPS and list(got) == OPS
    shapes = {"digits_conv1_fwd": (64, 32, 8, 8), "digits_pool0_fwd": (64, 32, 4, 4),
              "digits_dense0_fwd": (64, 64), "digits_dense1_fwd": (64, 10)}
    for op in OPS:
        assert [a.shape for a in ref[op]] == [shapes[op]] * 2
        assert [a.shape for a in got[op]] == [shapes[op]] * 2
        for r, g in zip(ref[op], got[op]):
            assert r.dtype == np.float32 and g.dtype == np.float32
            assert not np.array_equal(r, g)      # real INT8 upstream changes every value a little
            assert _nmse(r, g) < 1e-3, op        # ... and dequantized they are close
    # the FP32 reference is the model's own output: the last op's tensor is the logits
    np.testing.assert_allclose(ref["digits_dense1_fwd"][0], ad.infer(gluon_net, evalset[0][0]).asnumpy(),
                               rtol=1e-4, atol=1e-4)
    # batches 0 and 2 really are different batches
    assert not np.array_equal(ref["digits_conv1_fwd"][0], ref["digits_conv1_fwd"][1])
    with pytest.raises(ValueError, match="no quantizable op"):
        ad.inspect_tensor(q, evalset, ["nope"], [0])


def test_save_and_load_int8(gluon_net, calib, evalset, tmp_path):
    ad = make_adaptor()
    space, cfg = first_config(ad, gluon_net, {"quantization": {"weight": {"granularity": "per_tensor"}}})
    q = ad.quantize(space.with_fallback(cfg, ["digits_conv0_fwd"]), gluon_net, calib)
    target = tmp_path / "int8"
    ad.save(q, str(target))
    assert sorted(os.listdir(target)) == ["ilit_mxnet.json", "model-0000.params", "model-symbol.json"]
    back = ad.load(str(target))
    assert isinstance(back, SymbolModel)
    assert node_precisions(back) == node_precisions(q)
    assert back.arg_params["digits_dense0_weight_quantize"].dtype == np.int8
    x = evalset[1][0]
    np.testing.assert_array_equal(ad.infer(back, x).asnumpy(), ad.infer(q, x).asnumpy())
    assert accuracy(ad, back, evalset) == accuracy(ad, q, evalset)
    # the checkpoint is plain MXNet: SymbolModel.load reads the prefix, as MXNet's tools would
    again = SymbolModel.load(str(target / "model"))
    np.testing.assert_array_equal(again(x).asnumpy(), ad.infer(q, x).asnumpy())


def test_save_fp32_gluon_and_sizes(gluon_net, calib, evalset, tmp_path):
    ad = make_adaptor()
    ad.save(gluon_net, str(tmp_path / "fp32"))
    back = ad.load(str(tmp_path / "fp32"))
    x = evalset[0][0]
    np.testing.assert_allclose(ad.infer(back, x).asnumpy(), ad.infer(gluon_net, x).asnumpy(), rtol=1e-5, atol=1e-5)
    _space, cfg = first_config(ad, gluon_net, {"quantization": {"weight": {"granularity": "per_tensor"}}})
    ad.save(ad.quantize(cfg, gluon_net, calib), str(tmp_path / "int8"))
    size = {k: os.path.getsize(tmp_path / k / "model-0000.params") for k in ("fp32", "int8")}
    assert size["int8"] < 0.5 * size["fp32"]  # the FC weights, most of this net, are stored as int8


def test_fingerprint_is_stable_and_sees_weights(gluon_net, module_model):
    ad = make_adaptor()
    assert ad.fingerprint(gluon_net) == make_adaptor().fingerprint(gluon_net)
    assert ad.fingerprint(gluon_net) != ad.fingerprint(module_model)


def test_int8_model_does_not_share_weights_with_the_gluon_block(calib, evalset, tmp_path):
    import mxnet as mx
    from conftest import make_gluon_net

    mx.random.seed(4)
    net = make_gluon_net()
    net.initialize(mx.init.Xavier())
    net(mx.nd.array(calib[0][0]))
    ad = make_adaptor()
    _space, cfg = first_config(ad, net)
    q = ad.quantize(cfg, net, calib)
    ad.save(q, str(tmp_path / "a"))
    net.collect_params()["digits_conv0_weight"].data()[:] = 0  # the user keeps training the FP32 block
    ad.save(q, str(tmp_path / "b"))
    a = open(tmp_path / "a" / "model-0000.params", "rb").read()
    assert a == open(tmp_path / "b" / "model-0000.params", "rb").read()
