"""The environment errors: too-new numpy, missing mxnet, missing scipy for kl; the entry point."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

import ilit
from ilit import registry


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120)


def test_too_new_numpy_names_the_numpy_to_install_before_importing_mxnet():
    res = _run("""
        import sys, numpy
        numpy.__version__ = "1.26.4"   # what a default pip install brings in beside MXNet
        try:
            import ilit_mxnet
        except ImportError as exc:
            print("ERROR:", exc)
        print("MXNET_IMPORTED:", "mxnet" in sys.modules)
    """)
    assert "ERROR:" in res.stdout, res.stdout + res.stderr
    assert "pip install 'numpy==1.23.5'" in res.stdout
    assert "1.26.4" in res.stdout
    assert "MXNET_IMPORTED: False" in res.stdout  # checked before MXNet's own AttributeError could happen


def test_missing_mxnet_names_the_extra():
    res = _run("""
        import sys
        sys.modules["mxnet"] = None   # as if MXNet were not installed
        try:
            import ilit_mxnet
        except ImportError as exc:
            print("ERROR:", exc)
    """)
    assert "pip install 'ilit-mxnet[mxnet]'" in res.stdout, res.stdout + res.stderr


def test_entry_point_loads_the_adaptor():
    from ilit_mxnet import MXNetAdaptor

    assert registry.load("adaptor", "mxnet") is MXNetAdaptor
    assert MXNetAdaptor.name == "mxnet"


def test_missing_scipy_drops_kl_and_kl_names_the_extra(monkeypatch, gluon_net, calib):
    from conftest import first_config, make_adaptor

    ad = make_adaptor()
    _space, cfg = first_config(ad, gluon_net, {"calibration": {"algorithm": {"activation": "kl"}}})
    monkeypatch.setitem(sys.modules, "scipy", None)
    monkeypatch.setitem(sys.modules, "scipy.stats", None)
    with pytest.warns(RuntimeWarning, match=r"ilit-mxnet\[kl\]"):
        cap = ad.query_fw_capability(gluon_net)
    algos = {tuple(c["activation"]["algorithm"]) for c in cap["op_wise"].values()}
    assert algos == {("minmax",)}
    with pytest.raises(ImportError, match=r"pip install 'ilit-mxnet\[kl\]'"):
        ad.quantize(cfg, gluon_net, calib)
    assert ad.calibration_batches == 0  # failed before running any batch


def test_unsupported_model_type_says_what_is_accepted():
    from conftest import make_adaptor

    with pytest.raises(TypeError, match="HybridBlock"):
        make_adaptor().query_fw_capability(object())
    assert isinstance(ilit.load_config({}), ilit.Config)
