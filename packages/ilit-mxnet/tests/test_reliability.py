"""Issue 8 for MXNet: models of another framework refused up front, saved models that never run code."""

from __future__ import annotations

import os
import pickle
from typing import Any, Dict

import numpy as np
import pytest

import ilit
import mxnet as mx
from conftest import make_adaptor
from ilit_mxnet import MXNetAdaptor, ModelFileError, SymbolModel


def _conf(tmp_path, **tuning: Any) -> Dict[str, Any]:
    """framework mxnet, 2 calibration batches, a goal any INT8 model meets: one trial, then stop."""
    return {"framework": {"name": "mxnet"}, "calibration": {"iterations": [2]},
            "quantization": {"weight": {"granularity": "per_tensor"}, "activation": {"scheme": "asym"}},
            "tuning": {"metric": {"topk": 1}, "accuracy_criterion": {"relative": 0.5}, "max_trials": 3,
                       "workspace": {"path": str(tmp_path / "ws")}, **tuning}}


class _Untouchable:
    """Patches the adaptor so that quantizing, calibrating or reading the model fails the test."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list = []
        for name in ("quantize", "_calibrate", "query_fw_capability"):
            monkeypatch.setattr(MXNetAdaptor, name, self._recorder(name))

    def _recorder(self, name: str):
        def record(_self: Any, *args: Any, **kwargs: Any) -> Any:
            self.calls.append(name)
            raise AssertionError(f"MXNetAdaptor.{name} ran for a model tune() should have refused")
        return record


# ---------------------------------------------------------------------------------------------- wrong framework
def _foreign(module: str, name: str) -> Any:
    return type(name, (), {"__module__": module})()


WRONG_MODELS = {
    "torch Sequential": (lambda tmp: _foreign("torch.nn.modules.container", "Sequential"),
                         "torch.nn.modules.container.Sequential"),
    "keras Sequential": (lambda tmp: _foreign("keras.src.models.sequential", "Sequential"),
                         "keras.src.models.sequential.Sequential"),
    "plain object": (lambda tmp: object(), "builtins.object"),
    "numpy array": (lambda tmp: np.zeros((2, 3), np.float32), "numpy.ndarray"),
    "NDArray": (lambda tmp: mx.nd.zeros((2, 3)), "mxnet.ndarray.ndarray.NDArray"),
    "Symbol without params": (lambda tmp: mx.sym.var("data") * 2, "mxnet.symbol.symbol.Symbol"),
    "no checkpoint path": (lambda tmp: str(tmp / "nothing-here"), "builtins.str"),
    "params file but no symbol": (lambda tmp: _only_params(tmp), "builtins.str"),
    "tuple of arrays": (lambda tmp: (np.zeros(2), {}, {}), "builtins.tuple"),
    "tuple without aux": (lambda tmp: (mx.sym.var("data"), {"w": mx.nd.zeros(2)}), "builtins.tuple"),
    "tuple with numpy params": (lambda tmp: (mx.sym.var("data"), {"w": np.zeros(2)}, {}), "builtins.tuple"),
    "dict of params": (lambda tmp: {"w": mx.nd.zeros(2)}, "builtins.dict"),
}


def _only_params(tmp) -> str:
    mx.nd.save(str(tmp / "m-0000.params"), {"arg:w": mx.nd.zeros(2)})
    return str(tmp / "m")


@pytest.mark.parametrize("case", list(WRONG_MODELS))
def test_a_model_the_adaptor_does_not_take_is_refused_before_anything_runs(case, calib, evalset, tmp_path,
                                                                           monkeypatch):
    make, kind = WRONG_MODELS[case]
    model = make(tmp_path)
    spy = _Untouchable(monkeypatch)
    assert not MXNetAdaptor.accepts(model)
    with pytest.raises(ilit.ConfigError) as err:
        ilit.Tuner(_conf(tmp_path)).tune(model, calib, eval_dataloader=evalset)
    assert err.value.path == "framework.name"
    assert str(err.value).startswith("framework.name: ") and kind in str(err.value)
    assert spy.calls == []


def test_a_foreign_model_without_framework_name_is_not_taken_for_mxnet(calib, evalset, tmp_path, monkeypatch):
    spy = _Untouchable(monkeypatch)
    conf = _conf(tmp_path)
    del conf["framework"]
    with pytest.raises(ilit.ConfigError, match="torch.nn.modules.container.Sequential"):
        ilit.Tuner(conf).tune(_foreign("torch.nn.modules.container", "Sequential"), calib, eval_dataloader=evalset)
    assert spy.calls == []


def test_every_supported_model_form_is_accepted(gluon_net, module_model, tmp_path):
    sm = SymbolModel.from_module(module_model)
    make_adaptor().save(module_model, str(tmp_path / "saved"))
    prefix = str(tmp_path / "ckpt")
    sm.save(prefix)
    block = mx.gluon.SymbolBlock.imports(f"{prefix}-symbol.json", ["data", "softmax_label"], f"{prefix}-0000.params")
    forms = {
        "HybridBlock": gluon_net, "SymbolBlock": block, "Module": module_model, "SymbolModel": sm,
        "tuple": (sm.symbol, sm.arg_params, sm.aux_params), "list": [sm.symbol, sm.arg_params, sm.aux_params],
        "tuple, aux None": (sm.symbol, sm.arg_params, None), "prefix": prefix,
        "symbol json": f"{prefix}-symbol.json", "saved dir": str(tmp_path / "saved"),
        "PathLike prefix": tmp_path / "ckpt",
    }
    assert {name: MXNetAdaptor.accepts(m) for name, m in forms.items()} == {name: True for name in forms}


def test_a_gluon_block_that_cannot_be_traced_gets_its_own_error_before_calibration(calib, evalset, tmp_path,
                                                                                 monkeypatch):
    """A plain (not hybridizable) Gluon Block is an MXNet model: the error says to use HybridBlocks."""
    net = mx.gluon.nn.Sequential()
    net.add(mx.gluon.nn.Dense(10))
    net.initialize()
    calls = []
    monkeypatch.setattr(MXNetAdaptor, "_calibrate", lambda *a, **k: calls.append(a))
    with pytest.raises(TypeError, match="not a HybridBlock"):
        ilit.Tuner(_conf(tmp_path)).tune(net, calib, eval_dataloader=evalset)
    unbound = mx.mod.Module(mx.sym.FullyConnected(mx.sym.var("data"), num_hidden=10, name="fc"), label_names=None)
    with pytest.raises(ValueError, match="not bound"):
        ilit.Tuner(_conf(tmp_path)).tune(unbound, calib, eval_dataloader=evalset)
    assert calls == []


# ---------------------------------------------------------------------------------------------- untrusted files
class _Evil:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture(scope="module")
def saved_dir(module_model, tmp_path_factory):
    """A directory the adaptor saved (the FP32 symbolic model: the same three files as an INT8 one)."""
    path = tmp_path_factory.mktemp("saved") / "model"
    make_adaptor().save(module_model, str(path))
    return path


def _copy(src, dst) -> None:
    dst.mkdir()
    for f in os.listdir(src):
        (dst / f).write_bytes((src / f).read_bytes())


@pytest.mark.parametrize("protocol", [0, pickle.HIGHEST_PROTOCOL])
@pytest.mark.parametrize("target", ["model-0000.params", "model-symbol.json", "ilit_mxnet.json"])
def test_a_crafted_pickle_in_a_saved_model_never_runs(saved_dir, tmp_path, target, protocol):
    marker = tmp_path / "PWNED"
    evil = pickle.dumps(_Evil(str(marker)), protocol=protocol)
    model_dir = tmp_path / "m"
    _copy(saved_dir, model_dir)
    (model_dir / target).write_bytes(evil)
    with pytest.raises(ModelFileError) as err:
        make_adaptor().load(str(model_dir))
    assert err.value.file == str(model_dir / target)
    assert f"{model_dir / target} is not a model ilit saved" in str(err.value)
    assert "Traceback" not in str(err.value) and ".cc" not in str(err.value)  # not MXNet's C++ error
    if target != "ilit_mxnet.json":  # the checkpoint prefix path reads the same two files
        with pytest.raises(ModelFileError, match="is not a model ilit saved"):
            SymbolModel.load(str(model_dir / "model"))
    assert not marker.exists()
    # the pickle itself is real: unpickling it would have run the command
    pickle.loads(evil)
    assert marker.exists()


def test_a_crafted_pickle_as_the_model_given_to_tune_never_runs(saved_dir, calib, evalset, tmp_path):
    marker = tmp_path / "PWNED"
    model_dir = tmp_path / "m"
    _copy(saved_dir, model_dir)
    (model_dir / "model-0000.params").write_bytes(pickle.dumps(_Evil(str(marker))))
    with pytest.raises(ModelFileError, match="model-0000.params is not a model ilit saved"):
        ilit.Tuner(_conf(tmp_path)).tune(str(model_dir / "model"), calib, eval_dataloader=evalset)
    assert not marker.exists()


def _params_bytes(saved_dir) -> bytes:
    return (saved_dir / "model-0000.params").read_bytes()


BAD_FILES = {  # file -> (contents from the good saved model's files, what the error says)
    "random bytes": ("model-0000.params", lambda d: np.random.default_rng(0).bytes(300), "header"),
    "empty params": ("model-0000.params", lambda d: b"", "header"),
    "truncated params": ("model-0000.params", lambda d: _params_bytes(d)[:len(_params_bytes(d)) // 2], "truncated"),
    "header then garbage": ("model-0000.params", lambda d: _params_bytes(d)[:16] + b"\xff" * 64, "damaged"),
    "numpy npz": ("model-0000.params", lambda d: _npz(), "header"),
    "unnamed arrays": ("model-0000.params", lambda d: _nd_bytes([mx.nd.zeros(3)]), "without names"),
    "a weight missing": ("model-0000.params", lambda d: _nd_bytes({"aux:none": mx.nd.zeros(1)}), "lacks"),
    "symbol not json": ("model-symbol.json", lambda d: b"conv1 -> relu1 -> fc1", "not valid JSON"),
    "json not a symbol": ("model-symbol.json", lambda d: b'{"layers": []}', "not an MXNet symbol"),
    "symbol MXNet refuses": ("model-symbol.json", lambda d: b'{"nodes": [{"op": "NoSuchOp", "name": "x", '
                             b'"inputs": []}], "heads": [[0, 0, 0]], "arg_nodes": []}', "cannot read it as a symbol"),
    "metadata a list": ("ilit_mxnet.json", lambda d: b"[1, 2]", '"format": 1'),
    "metadata format 2": ("ilit_mxnet.json", lambda d: b'{"format": 2}', '"format": 1'),
    "metadata bad names": ("ilit_mxnet.json", lambda d: b'{"format": 1, "data_names": "data"}', "data_names"),
    "metadata unknown input": ("ilit_mxnet.json", lambda d: b'{"format": 1, "data_names": ["x"]}', "fit together"),
}


def _nd_bytes(value: Any) -> bytes:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        mx.nd.save(os.path.join(tmp, "p"), value)
        with open(os.path.join(tmp, "p"), "rb") as f:
            return f.read()


def _npz() -> bytes:
    import io

    buf = io.BytesIO()
    np.savez(buf, w=np.ones(3))
    return buf.getvalue()


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_a_damaged_saved_model_gets_a_clear_error(saved_dir, tmp_path, case):
    target, contents, says = BAD_FILES[case]
    model_dir = tmp_path / "m"
    _copy(saved_dir, model_dir)
    (model_dir / target).write_bytes(contents(saved_dir))
    with pytest.raises(ModelFileError) as err:
        make_adaptor().load(str(model_dir))
    assert "is not a model ilit saved" in str(err.value) and says in str(err.value)
    assert target in str(err.value) and "Traceback" not in str(err.value)


def test_loading_a_good_saved_model_unpickles_nothing(saved_dir, module_model, evalset, monkeypatch):
    def refuse(*_a: Any, **_k: Any) -> Any:
        raise AssertionError("a saved model was unpickled")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)
    monkeypatch.setattr(np, "load", refuse)
    back = make_adaptor().load(str(saved_dir))
    x = evalset[0][0]
    np.testing.assert_array_equal(back(x).asnumpy(), SymbolModel.from_module(module_model)(x).asnumpy())
