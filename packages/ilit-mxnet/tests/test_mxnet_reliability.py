"""The MXNet adaptor's reliability: models of another framework refused up front, saved models that never run code, the
user's FP32 model left exactly as it was, and failing user code with the real adaptor."""

from __future__ import annotations

import json
import os
import pickle
from typing import Any, Dict

import numpy as np
import pytest

import ilit
from ilit.testing import AdaptorContract, ContractSpec
import mxnet as mx
from conftest import accuracy, first_config, make_adaptor, make_gluon_net
from ilit_mxnet import MXNetAdaptor, ModelFileError, SymbolModel
from mxnet import autograd


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
    with pytest.raises(ilit.ModelFileError) as err:  # the core type every adaptor raises a subclass of
        make_adaptor().load(str(model_dir))
    assert isinstance(err.value, ModelFileError) and err.value.file == str(model_dir / target)
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


def _with_custom_op(saved_dir) -> bytes:
    """The saved graph with its first operator node turned into a ``Custom`` op naming a registered Python op."""
    doc = json.loads((saved_dir / "model-symbol.json").read_text())
    node = next(n for n in doc["nodes"] if n["op"] != "null")
    node["op"] = "Custom"
    node.setdefault("attrs", {})["op_type"] = "ilit_test_probe"
    return json.dumps(doc).encode()


def test_a_custom_python_operator_in_a_saved_model_is_refused_before_mxnet_reads_it(saved_dir, tmp_path,
                                                                                   monkeypatch):
    calls = []

    @mx.operator.register("ilit_test_probe")
    class _ProbeProp(mx.operator.CustomOpProp):  # what a process may have registered: Python run by the graph
        def __init__(self):
            calls.append("prop")
            super().__init__(need_top_grad=False)

    model_dir = tmp_path / "m"
    _copy(saved_dir, model_dir)
    (model_dir / "model-symbol.json").write_bytes(_with_custom_op(saved_dir))
    parsed = []
    monkeypatch.setattr(mx.sym, "load_json", lambda text: parsed.append(text))
    with pytest.raises(ModelFileError, match="call Python code \\(Custom\\)"):
        make_adaptor().load(str(model_dir))
    assert parsed == [] and calls == []


def test_deeply_nested_saved_json_is_a_model_file_error(saved_dir, tmp_path):
    model_dir = tmp_path / "m"
    _copy(saved_dir, model_dir)
    (model_dir / "ilit_mxnet.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ModelFileError, match="nested too deeply"):
        make_adaptor().load(str(model_dir))


def test_loading_a_good_saved_model_unpickles_nothing(saved_dir, module_model, evalset, monkeypatch):
    def refuse(*_a: Any, **_k: Any) -> Any:
        raise AssertionError("a saved model was unpickled")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)
    monkeypatch.setattr(np, "load", refuse)
    back = make_adaptor().load(str(saved_dir))
    x = evalset[0][0]
    np.testing.assert_array_equal(back(x).asnumpy(), SymbolModel.from_module(module_model)(x).asnumpy())


# ---------------------------------------------------------------------------------------------- the FP32 model
def _block_state(net: mx.gluon.Block) -> Dict[str, Any]:
    """Every parameter's bytes, dtype, shape and grad_req, and each block's hybridization flags."""
    state: Dict[str, Any] = {}
    for name, p in net.collect_params().items():
        arr = p.data().asnumpy()
        state[name] = (arr.dtype.str, arr.shape, arr.tobytes(), p.grad_req)

    def walk(block: mx.gluon.Block, path: str) -> None:
        state[f"{path}:hybrid"] = (getattr(block, "_active", None), tuple(sorted(getattr(block, "_flags", {}))))
        for key, child in block._children.items():
            walk(child, f"{path}/{key}")

    walk(net, "")
    return state


def _symbolic_state(symbol: mx.sym.Symbol, args: Dict[str, Any], auxs: Dict[str, Any]) -> Dict[str, Any]:
    return {"symbol": symbol.tojson(),
            "args": {k: (v.dtype, v.shape, v.asnumpy().tobytes()) for k, v in args.items()},
            "auxs": {k: (v.dtype, v.shape, v.asnumpy().tobytes()) for k, v in auxs.items()}}


@pytest.fixture
def gluon_copy(gluon_net, calib):
    """A not hybridized copy of the trained net, with a frozen layer (grad_req null) and one accumulating."""
    net = make_gluon_net()
    net.initialize()
    net(mx.nd.array(calib[0][0]))  # finish the deferred initialization
    for (_name, dst), src in zip(net.collect_params().items(), gluon_net.collect_params().values()):
        dst.set_data(src.data())
    net.collect_params()["digits_conv0_weight"].grad_req = "null"
    net.collect_params()["digits_dense0_weight"].grad_req = "add"
    return net


def _eval_func(evalset):
    ad = make_adaptor()
    return lambda model: accuracy(ad, model, evalset)


def _usage(how: str, evalset) -> Dict[str, Any]:
    return {"eval_dataloader": evalset} if how == "dataloader" else {"eval_func": _eval_func(evalset)}


@pytest.mark.parametrize("how", ["dataloader", "eval_func"])
@pytest.mark.parametrize("which", ["hybridized", "not hybridized"])
def test_tune_leaves_the_gluon_model_as_it_was(which, how, gluon_net, gluon_copy, calib, evalset, tmp_path):
    net = gluon_net if which == "hybridized" else gluon_copy
    before = _block_state(net)
    assert before[":hybrid"][0] is (which == "hybridized")
    # BatchNorm updates its running stats in train mode: tuning must not run the user's model that way
    with autograd.train_mode():
        best = ilit.Tuner(_conf(tmp_path)).tune(net, calib, **_usage(how, evalset))
    assert best is not None
    assert _block_state(net) == before


@pytest.mark.parametrize("how", ["dataloader", "eval_func"])
@pytest.mark.parametrize("form", ["Module", "SymbolModel", "tuple", "checkpoint"])
def test_tune_leaves_the_symbolic_model_as_it_was(form, how, module_model, calib, evalset, tmp_path):
    arg, aux = module_model.get_params()
    module_before = _symbolic_state(module_model.symbol, arg, aux)
    if form == "Module":
        model, state = module_model, lambda: _symbolic_state(module_model.symbol, *module_model.get_params())
    elif form == "checkpoint":
        SymbolModel.from_module(module_model).save(str(tmp_path / "ckpt"))
        files = [tmp_path / "ckpt-symbol.json", tmp_path / "ckpt-0000.params"]
        model, state = str(tmp_path / "ckpt"), lambda: [f.read_bytes() for f in files]
    else:
        sm = SymbolModel(module_model.symbol, {k: v.copy() for k, v in arg.items()},
                         {k: v.copy() for k, v in aux.items()})
        model = sm if form == "SymbolModel" else (sm.symbol, sm.arg_params, sm.aux_params)
        state = lambda: _symbolic_state(sm.symbol, sm.arg_params, sm.aux_params)  # noqa: E731
    before = state()
    with autograd.train_mode():
        best = ilit.Tuner(_conf(tmp_path)).tune(model, calib, **_usage(how, evalset))
    assert best is not None
    assert state() == before
    assert _symbolic_state(module_model.symbol, *module_model.get_params()) == module_before


def test_models_run_in_inference_mode_inside_the_callers_train_mode(gluon_net, calib, evalset):
    """Under train_mode BatchNorm would use batch statistics (a wrong baseline) and oneDNN's INT8 pooling fails."""
    ad = make_adaptor()
    _space, cfg = first_config(ad, gluon_net)
    q = ad.quantize(cfg, gluon_net, calib)
    x = evalset[0][0]
    want_fp32, want_int8 = ad.infer(gluon_net, x).asnumpy(), q(x).asnumpy()
    with autograd.train_mode():
        np.testing.assert_array_equal(ad.infer(gluon_net, x).asnumpy(), want_fp32)
        np.testing.assert_array_equal(ad.infer(q, x).asnumpy(), want_int8)
        np.testing.assert_array_equal(q(x).asnumpy(), want_int8)


def test_eval_func_on_the_fp32_model_runs_in_predict_mode_inside_the_callers_train_mode(gluon_net, calib, evalset,
                                                                                     tmp_path):
    """The user's own eval_func calls the Gluon block directly; fp32_context makes that predict mode too."""
    ad = make_adaptor()
    want = accuracy(ad, gluon_net, evalset)
    modes = []

    def eval_func(model: Any) -> float:
        if model is gluon_net:
            modes.append(autograd.is_training())
            x = np.concatenate([np.asarray(xb) for xb, _ in evalset])
            y = np.concatenate([np.asarray(yb) for _, yb in evalset])
            return float((model(mx.nd.array(x)).asnumpy().argmax(1) == y).mean())
        return accuracy(ad, model, evalset)

    conf = _conf(tmp_path)
    del conf["tuning"]["metric"]
    tuner = ilit.Tuner(conf)
    with autograd.train_mode():
        tuner.tune(gluon_net, calib, eval_func=eval_func)
    assert modes == [False] and tuner.baseline_accuracy == pytest.approx(want)


# ---------------------------------------------------------------------------------------------- the contract kit
class TestMXNetAdaptorContract(AdaptorContract):
    """ilit.testing's conformance suite, the one every adaptor runs, on the session's hybridized Gluon net:
    besides the checks above, failing user code (an eval_func failing on a trial or on the FP32 model)."""

    @pytest.fixture(scope="class")
    @classmethod
    def spec(cls, gluon_net, calib):
        return ContractSpec(framework="mxnet", make_model=lambda: gluon_net, batches=calib[:4], state=_block_state,
                            metric={"topk": 1},
                            config={"quantization": {"weight": {"granularity": "per_tensor"},
                                                     "activation": {"scheme": "asym"}}},
                            foreign_models={"ndarray": lambda: mx.nd.zeros((2, 64))})
