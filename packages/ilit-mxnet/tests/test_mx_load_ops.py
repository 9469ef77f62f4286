"""ilit.load and ilit.list_ops with the MXNet adaptor."""

from __future__ import annotations

import json

import numpy as np
import pytest

import ilit
from conftest import first_config, make_adaptor
from ilit_mxnet import SymbolModel, node_precisions


def test_ilit_load_reads_what_the_mxnet_adaptor_saved(gluon_net, calib, evalset, tmp_path):
    ad = make_adaptor()
    space, cfg = first_config(ad, gluon_net)
    q = ad.quantize(space.with_fallback(cfg, ["digits_dense1_fwd"]), gluon_net, calib)
    ad.save(q, str(tmp_path / "q"))
    assert json.loads((tmp_path / "q" / "ilit_mxnet.json").read_text())["adaptor"] == "mxnet"
    back = ilit.load(str(tmp_path / "q"))
    assert isinstance(back, SymbolModel) and node_precisions(back) == node_precisions(q)
    x = evalset[1][0]
    np.testing.assert_array_equal(ad.infer(back, x).asnumpy(), ad.infer(q, x).asnumpy())
    again = ilit.load(str(tmp_path / "q"), model=gluon_net)  # the FP32 model is not needed, and is accepted
    np.testing.assert_array_equal(ad.infer(again, x).asnumpy(), ad.infer(q, x).asnumpy())


def test_list_ops_gives_the_names_and_types_tuning_ops_takes(gluon_net):
    ops = ilit.list_ops(gluon_net)
    assert ops == [(str(n), str(t)) for n, t in make_adaptor().query_fw_capability(gluon_net)["op_wise"]]
    assert ("digits_dense1_fwd", "FullyConnected") in ops and ("digits_conv1_fwd", "Convolution") in ops
    assert ilit.list_ops(gluon_net, framework="mxnet") == ops
    with pytest.raises(ilit.ConfigError, match="framework.name"):
        ilit.list_ops(gluon_net, framework="mxnet_nope")
