"""The pytorch adaptor's reliability: models it does not take, untrusted saved models, the user's model
left exactly as it was by ``tune``, and failing user code (eval_func, q_func) with the real adaptor."""

import copy
import json
import os
import pickle
import sys
import zipfile

import numpy as np
import pytest
import torch
from torch import nn

from typing import Tuple

from conftest import UnscriptableNet, accuracy, make_adaptor, train, uniform_cfg

import ilit
from ilit.testing import AdaptorContract, ContractSpec
from ilit.tune_cfg import fallback_ops
from ilit_pytorch import PyTorchAdaptor
from ilit_pytorch.serialize import (MAX_BYTES_ENV, META_FILE, MODEL_FILE, STATE_FILE, ModelFileError,
                                    export_torchscript, load_limit, load_torchscript_executing_code)

FRAMEWORKS = ("mxnet", "tensorflow", "keras", "jax", "onnxruntime")


def _conf(tmp_path, approach="post_training_static_quant", **tuning):
    """Two calibration batches, minmax only, an easy goal (half the baseline), stop at the first pass."""
    return {
        "framework": {"name": "pytorch"},
        "calibration": {"iterations": [2]},
        "quantization": {"approach": approach, "activation": {"algorithm": "minmax"}},
        "tuning": {"strategy": "basic", "accuracy_criterion": {"relative": 0.5}, "max_trials": 4,
                   "workspace": {"path": str(tmp_path / "ws")}, **tuning},
    }


# ------------------------------------------------------------------ 1. models of another framework
def _foreign_models():
    hybrid = type("HybridSequential", (), {"__module__": "mxnet.gluon.nn.basic_layers"})  # mxnet is not installed
    keras = type("Sequential", (), {"__module__": "keras.src.models.sequential"})
    return {
        "mxnet-block": hybrid(),
        "keras-model": keras(),
        "plain-object": object(),
        "numpy-array": np.zeros((2, 64), dtype=np.float32),
        "torch-tensor": torch.zeros(2, 64),  # from torch, but not a model
        "torchscript": torch.jit.script(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).eval()),
        "model-class": nn.Linear,  # the class, not an instance
    }


@pytest.mark.parametrize("kind", list(_foreign_models()))
def test_tune_refuses_a_model_the_pytorch_adaptor_does_not_take_before_any_calibration(kind, digits, tmp_path,
                                                                                       monkeypatch):
    model = _foreign_models()[kind]
    calls = []
    for hook in ("__init__", "query_fw_capability", "quantize", "infer"):
        real = getattr(PyTorchAdaptor, hook)

        def record(*a, _hook=hook, _real=real, **k):
            calls.append(_hook)
            return _real(*a, **k)
        monkeypatch.setattr(PyTorchAdaptor, hook, record)
    imported = {m for m in FRAMEWORKS if m in sys.modules}
    tuner = ilit.Tuner(_conf(tmp_path, metric={"topk": 1}))
    with pytest.raises(ilit.ConfigError) as info:
        tuner.tune(model, q_dataloader=digits[0], eval_dataloader=digits[1])
    message = str(info.value)
    assert info.value.path == "framework.name" and message.startswith("framework.name:")
    assert type(model).__qualname__ in message and type(model).__module__ in message
    hint = {"torchscript": "scripted from", "torch-tensor": "not a model", "model-class": "an instance"}.get(kind)
    assert hint is None or hint in message  # the adaptor's reject_reason says what to pass instead
    assert calls == [] and tuner.adaptor is None  # refused before the adaptor existed: nothing calibrated
    assert {m for m in FRAMEWORKS if m in sys.modules} == imported  # and no other framework was imported
    assert not os.path.exists(tmp_path / "ws" / "history.json")


def test_accepts_every_module_form_the_adaptor_tunes(trained_cnn):
    assert PyTorchAdaptor.accepts(trained_cnn)
    assert PyTorchAdaptor.accepts(torch.fx.symbolic_trace(trained_cnn))
    assert PyTorchAdaptor.accepts(nn.Linear(2, 2)) and PyTorchAdaptor.accepts(nn.Sequential())
    assert not any(PyTorchAdaptor.accepts(m) for m in _foreign_models().values())
    with pytest.raises(TypeError, match="scripted from"):  # called directly, the adaptor says so too
        make_adaptor().query_fw_capability(_foreign_models()["torchscript"])


# ------------------------------------------------------------------ 2. untrusted saved models
class _Payload:
    """Unpickled by a plain pickle loader, this runs ``exec``: it writes ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


class _ShellPayload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


def _torchscript_with(archive, payload, into):
    """A real TorchScript archive whose data.pkl and constants.pkl are replaced by ``payload``."""
    src = zipfile.ZipFile(archive)
    with zipfile.ZipFile(into, "w") as dst:
        for name in src.namelist():
            data = src.read(name)
            if name.endswith("/data.pkl") or name.endswith("/constants.pkl"):
                data = payload
            dst.writestr(name, data)


WHERE = ["meta-pickle", "state-pickle", "state-torch-save", "state-torchscript-archive"]


@pytest.mark.parametrize("payload_cls", [_Payload, _ShellPayload])
@pytest.mark.parametrize("where", WHERE)
def test_load_refuses_a_crafted_pickle_in_each_file_without_running_it(where, payload_cls, tmp_path):
    adaptor = make_adaptor()
    torch.manual_seed(0)
    fp32 = UnscriptableNet().eval()
    saved = tmp_path / "saved"
    adaptor.save(fp32, str(saved))
    assert (saved / STATE_FILE).exists() and (saved / META_FILE).exists()

    # the payload is live: a plain unpickler runs it
    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(payload_cls(probe), protocol=2))
    assert probe.exists()

    marker = tmp_path / "marker"
    payload = pickle.dumps(payload_cls(marker), protocol=2)
    target = saved / (META_FILE if where == "meta-pickle" else STATE_FILE)
    if where == "state-torch-save":
        torch.save(payload_cls(marker), str(target))  # torch's zip container, a pickle of the payload inside
    elif where == "state-torchscript-archive":
        archive = tmp_path / "scripted.pt"
        torch.jit.save(torch.jit.script(nn.Sequential(nn.Linear(4, 2)).eval()), str(archive))
        _torchscript_with(archive, payload, str(target))
    else:
        target.write_bytes(payload)
    with pytest.raises(ModelFileError) as info:
        adaptor.load(str(saved), model=fp32)
    assert str(target) in str(info.value) and "not" in str(info.value) and "nothing in it was run" in str(info.value)
    assert isinstance(info.value, ilit.ModelFileError) and info.value.file == str(target)
    assert not marker.exists()


class SetStatePayload(nn.Module):
    """The issue's attack: a TorchScript module whose ``__setstate__`` (run by ``torch.jit.load``) maps a file
    outside the model directory and overwrites its first 8 bytes."""

    def __init__(self, target: str) -> None:
        super().__init__()
        self.target = target
        self.hit = torch.zeros(8, dtype=torch.uint8)

    def forward(self, x):
        return x

    @torch.jit.export
    def __getstate__(self) -> Tuple[str, bool]:
        return (self.target, self.training)

    @torch.jit.export
    def __setstate__(self, state: Tuple[str, bool]) -> None:
        self.target = state[0]
        self.training = state[1]
        self.hit = torch.from_file(self.target, shared=True, size=8, dtype=torch.uint8).fill_(88)


@pytest.mark.parametrize("meta", [{"format": "torchscript"}, {"format": "torchscript-trace"},
                                  {"format": "state_dict", "build": None}])
def test_load_never_runs_a_torchscript_setstate_payload(meta, tmp_path):
    victim = tmp_path / "outside.bin"
    victim.write_bytes(b"\0" * 16)
    evil = torch.jit.script(SetStatePayload(str(victim)))
    saved = tmp_path / "saved"
    saved.mkdir()
    torch.jit.save(evil, str(saved / MODEL_FILE))
    torch.jit.save(evil, str(saved / STATE_FILE))  # the same program where the tensors belong
    (saved / META_FILE).write_text(json.dumps(meta))
    assert victim.read_bytes() == b"\0" * 16
    with pytest.raises(ModelFileError) as info:
        make_adaptor().load(str(saved), model=nn.Sequential(nn.Linear(4, 2)))
    assert victim.read_bytes() == b"\0" * 16  # nothing ran
    if meta["format"].startswith("torchscript"):
        assert "load_torchscript_executing_code" in str(info.value)  # says how to opt in, for a file you trust
    # the payload is live: the explicit opt-in, named for what it does, runs it
    load_torchscript_executing_code(str(saved / MODEL_FILE))
    assert victim.read_bytes() == b"X" * 8 + b"\0" * 8


def _deflated_state(src, into, extra_bytes):
    """A copy of the zip ``src`` whose members are deflated and that gains a member of ``extra_bytes`` zeros."""
    with zipfile.ZipFile(src) as z, zipfile.ZipFile(into, "w", zipfile.ZIP_DEFLATED) as out:
        for name in z.namelist():
            out.writestr(name, z.read(name))
        prefix = z.namelist()[0].split("/")[0]
        with out.open(f"{prefix}/data/99", "w", force_zip64=True) as f:
            chunk = b"\0" * (1 << 20)
            for _ in range(extra_bytes >> 20):
                f.write(chunk)


def test_load_refuses_a_zip_bomb_before_inflating_it(tmp_path, monkeypatch):
    """A 300 MB deflated member in a file of ~0.3 MB: its declared size is refused before torch reads it."""
    fp32 = nn.Sequential(nn.Linear(4, 2)).eval()
    adaptor = make_adaptor()
    adaptor.save(fp32, str(tmp_path / "m"))
    bomb = tmp_path / "bomb.pt"
    _deflated_state(tmp_path / "m" / STATE_FILE, bomb, 300 << 20)
    assert bomb.stat().st_size < 2 << 20
    os.replace(bomb, tmp_path / "m" / STATE_FILE)
    reads = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: reads.append(a))
    with pytest.raises(ModelFileError, match="compressed"):
        adaptor.load(str(tmp_path / "m"), model=fp32)
    assert reads == []  # refused before torch saw it


def test_load_refuses_a_state_file_over_the_size_limit(trained_cnn, digits, tmp_path, monkeypatch):
    adaptor = make_adaptor()
    q = adaptor.quantize(uniform_cfg(adaptor, trained_cnn), trained_cnn, digits[0])
    adaptor.save(q, str(tmp_path / "q"))
    size = (tmp_path / "q" / STATE_FILE).stat().st_size
    assert load_limit(trained_cnn) > size  # the default (from the fp32 model's size) takes a genuine save
    with pytest.raises(ModelFileError, match="over the limit"):
        adaptor.load(str(tmp_path / "q"), model=trained_cnn, max_bytes=size // 2)
    monkeypatch.setenv(MAX_BYTES_ENV, str(size // 2))
    with pytest.raises(ModelFileError, match="over the limit"):
        adaptor.load(str(tmp_path / "q"), model=trained_cnn)
    assert adaptor.load(str(tmp_path / "q"), model=trained_cnn, max_bytes=2 * size) is not None
    # a small fp32 model gets a small limit: a state file of 64 MiB of declared tensors more is refused
    tiny = nn.Linear(4, 2)
    assert load_limit(tiny) < (64 << 20) + 1024


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "deep-json", "directory", "symlink"])
@pytest.mark.parametrize("which", [META_FILE, STATE_FILE])
def test_load_refuses_special_files_and_deep_json_at_once(kind, which, tmp_path):
    """A FIFO (which would block ``open``), a device, a directory, a symlink (even to a genuine file) or JSON
    nested 100,000 deep: a ModelFileError naming the file, at once (an alarm fails the test if load blocks)."""
    import shutil
    import signal

    fp32 = nn.Sequential(nn.Linear(4, 2)).eval()
    make_adaptor().save(fp32, str(tmp_path / "m"))
    target = tmp_path / "m" / which
    shutil.copy(target, tmp_path / "genuine")
    target.unlink()
    if kind == "fifo":
        os.mkfifo(target)
    elif kind == "dev-zero":
        os.symlink("/dev/zero", target)
    elif kind == "directory":
        target.mkdir()
    elif kind == "symlink":
        os.symlink(tmp_path / "genuine", target)
    else:
        target.write_text("[" * 100_000 + "]" * 100_000)
    before = signal.signal(signal.SIGALRM, lambda *a: (_ for _ in ()).throw(TimeoutError("load hung")))
    signal.alarm(20)
    try:
        with pytest.raises(ModelFileError) as info:
            make_adaptor().load(str(tmp_path / "m"), model=fp32)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, before)
    assert info.value.file == str(target) and str(info.value).count(str(target)) == 1  # one clear message
    if kind in ("symlink", "dev-zero"):
        assert "symbolic link" in str(info.value)


@pytest.mark.parametrize("meta", ["[]", "{}", '{"format": "pickle"}', '{"format": 1}', "not json", "",
                                  '{"format": "state_dict", "build": {"how": "fx"}}',
                                  '{"format": "state_dict", "build": []}'])
def test_load_refuses_metadata_of_the_wrong_shape(meta, tmp_path):
    adaptor = make_adaptor()
    fp32 = nn.Sequential(nn.Linear(4, 2)).eval()
    adaptor.save(fp32, str(tmp_path / "m"))
    (tmp_path / "m" / META_FILE).write_text(meta)
    with pytest.raises(ModelFileError, match=META_FILE):
        adaptor.load(str(tmp_path / "m"), model=fp32)


def test_load_refuses_a_recipe_that_does_not_fit_the_model(tmp_path):
    adaptor = make_adaptor()
    fp32 = nn.Sequential(nn.Linear(4, 2)).eval()
    adaptor.save(fp32, str(tmp_path / "m"))
    meta = json.loads((tmp_path / "m" / META_FILE).read_text())
    meta["build"] = {"how": "fx", "tune_cfg": {"approach": "post_training_static_quant", "ops": {"nope": {}},
                                               "calibration": {"iterations": 1}}}
    (tmp_path / "m" / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(ModelFileError, match="cannot be applied"):
        adaptor.load(str(tmp_path / "m"), model=fp32)


def test_load_refuses_a_weights_only_file_that_is_not_a_state_dict(tmp_path):
    adaptor = make_adaptor()
    fp32 = UnscriptableNet().eval()
    adaptor.save(fp32, str(tmp_path / "m"))
    torch.save([torch.zeros(2), 3], str(tmp_path / "m" / STATE_FILE))  # loads weights-only, but is a list
    with pytest.raises(ModelFileError, match="not a dict"):
        adaptor.load(str(tmp_path / "m"), model=fp32)
    os.remove(tmp_path / "m" / STATE_FILE)
    with pytest.raises(FileNotFoundError, match=STATE_FILE):
        adaptor.load(str(tmp_path / "m"), model=fp32)


# ------------------------------------------------------------------ 3. the user's model is never changed
class BnDropNet(nn.Module):
    """Conv-bn-relu, dropout, then two linears: training-mode evaluation would update the batch-norm
    running statistics and drop activations. ``head`` is frozen (``requires_grad`` False)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.relu = nn.ReLU()
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(8 * 64, 32)
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        x = self.drop(torch.flatten(self.relu(self.bn(self.conv(x))), 1))
        return self.head(self.relu(self.fc(x)))


@pytest.fixture(scope="module")
def bn_drop_net(digits):
    torch.manual_seed(0)
    net = train(BnDropNet(), digits[0][:8], epochs=2)
    net.head.requires_grad_(False)
    return net


def _bits(t):
    """A tensor's raw bytes (floats) or values: equal means bit for bit, -0.0 and NaN payloads included."""
    t = t.detach().contiguous().reshape(-1)
    return t.view(torch.uint8) if t.is_floating_point() else t


def snapshot(model):
    """Everything ``tune`` must give back as it was: tensors bit for bit, grads, flags, modes, the objects."""
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "grad": {k: None if p.grad is None else p.grad.clone() for k, p in model.named_parameters()},
        "requires_grad": {k: p.requires_grad for k, p in model.named_parameters()},
        "training": {k: m.training for k, m in model.named_modules()},
        "ids": [id(t) for t in model.state_dict(keep_vars=True).values()],
    }


def assert_unchanged(model, before):
    after = snapshot(model)
    for key in ("state", "grad"):
        assert after[key].keys() == before[key].keys(), key
        for name, v in before[key].items():
            w = after[key][name]
            assert (v is None) == (w is None), name
            if v is not None:
                assert v.dtype == w.dtype and v.shape == w.shape and torch.equal(_bits(v), _bits(w)), name
    for key in ("requires_grad", "training", "ids"):
        assert after[key] == before[key], key


def _set_mode(model, mode):
    if mode == "train":
        model.train()
    elif mode == "graph-module-train":  # FX's own module form, also taken as a model
        model = torch.fx.symbolic_trace(model).train()
    elif mode == "mixed":  # training, but with the batch-norm frozen in eval mode
        model.train()
        model.bn.eval()
    else:
        model.eval()
    return model


def _in_eval_mode(model, fn):
    """What a well-behaved eval_func does: run ``fn(model)`` in eval mode, give the model back in its modes."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        return fn(model)
    finally:
        for m, training in modes.items():
            m.training = training


@pytest.mark.parametrize("usage", ["eval_dataloader", "eval_func"])
@pytest.mark.parametrize("mode", ["eval", "train", "mixed", "graph-module-train"])
def test_tune_leaves_the_fp32_model_exactly_as_it_was(mode, usage, bn_drop_net, digits, tmp_path):
    model = _set_mode(copy.deepcopy(bn_drop_net), mode)
    before = snapshot(model)
    expected = accuracy(copy.deepcopy(model).eval(), digits[1])
    seen = []

    def eval_func(m):  # the usual user code: it calls m.eval() and leaves the model so
        seen.append((m, {k: s.training for k, s in m.named_modules()}))
        return accuracy(m.eval(), digits[1])

    if usage == "eval_func":
        tuner = ilit.Tuner(_conf(tmp_path, max_trials=2))
        q = tuner.tune(model, q_dataloader=digits[0], eval_func=eval_func)
        # the user's model itself, run in eval mode (fp32_context), its own modes restored afterwards
        assert seen[0][0] is model and not any(seen[0][1].values())
        assert tuner.baseline_accuracy == pytest.approx(expected)
    else:
        tuner = ilit.Tuner(_conf(tmp_path, max_trials=2, metric={"topk": 1}))
        q = tuner.tune(model, q_dataloader=digits[0], eval_dataloader=digits[1])
        assert tuner.baseline_accuracy == pytest.approx(expected)  # evaluated in eval mode, whatever its mode
    assert q is not None and not q.training and tuner.best_trial.meets
    assert tuner.history.baseline_objective > 0  # the performance objective ran the fp32 model too
    assert_unchanged(model, before)


def test_mse_strategy_and_footprint_objective_leave_a_training_model_unchanged(bn_drop_net, digits, tmp_path):
    """The MSE strategy inspects the fp32 model's activations; footprint saves it and times it."""
    model = _set_mode(copy.deepcopy(bn_drop_net), "train")
    before = snapshot(model)
    x = torch.cat([xb for xb, _ in digits[1][:2]])
    with torch.no_grad():
        ref = copy.deepcopy(model).eval()(x)

    def eval_func(m):  # minus the distance to the fp32 logits: only fp32 itself meets an absolute 0 loss
        with torch.no_grad():
            return _in_eval_mode(m, lambda e: -float(((e(x) - ref) ** 2).mean()))

    conf = _conf(tmp_path, strategy="mse", objective="footprint", max_trials=2, accuracy_criterion={"absolute": 0.0})
    conf["quantization"].update(weight={"scheme": "sym", "granularity": "per_channel"},
                                activation={"scheme": "asym", "algorithm": "minmax"})  # one model-wise config
    tuner = ilit.Tuner(conf)
    assert tuner.tune(model, q_dataloader=digits[0], eval_func=eval_func) is None
    first, second = tuner.history.trials
    assert fallback_ops(first.tune_cfg) == [] and len(fallback_ops(second.tune_cfg)) == 1  # ranked by inspect_tensor
    assert tuner.history.baseline_objective > 0
    assert_unchanged(model, before)


def test_infer_runs_a_training_model_in_eval_mode_and_restores_each_submodule(bn_drop_net, digits, caplog):
    model = _set_mode(copy.deepcopy(bn_drop_net), "mixed")
    before = snapshot(model)
    adaptor = make_adaptor()
    x = digits[1][0][0]
    with torch.no_grad():
        ref = copy.deepcopy(model).eval()(x)
    modes_inside = []
    model.drop.register_forward_pre_hook(lambda m, a: modes_inside.append(m.training))
    out1, out2 = adaptor.infer(model, x), adaptor.infer(model, x)
    assert torch.equal(out1, ref) and torch.equal(out2, ref)  # no dropout, running statistics used
    assert modes_inside == [False, False]
    assert_unchanged(model, before)
    assert sum("training mode" in r.getMessage() for r in caplog.records) == 1  # said once


def test_exporting_by_trace_leaves_a_training_model_unchanged(digits, tmp_path):
    class Traced(BnDropNet):  # a lambda attribute: not scriptable, so export traces it
        def __init__(self):
            super().__init__()
            self.scale = lambda t: t * 1.0

        def forward(self, x):
            return self.scale(super().forward(x))

    torch.manual_seed(0)
    model = Traced().train()
    before = snapshot(model)
    assert export_torchscript(model, str(tmp_path / "m.pt"), example=digits[1][0][0]) == "torchscript-trace"
    assert_unchanged(model, before)


# ------------------------------------------------------------------ 4. failing user code, real adaptor
@pytest.mark.parametrize("failure", ["string"])  # raise and nan: the contract kit below
def test_an_eval_func_failing_on_one_trial_is_recorded_and_tuning_goes_on(failure, trained_cnn, digits, tmp_path):
    calls = []

    def eval_func(model):
        calls.append(model)
        if len(calls) == 2:  # the first quantized trial (call 1 is the fp32 baseline)
            if failure == "raise":
                raise RuntimeError("eval broke on trial 1")
            return float("nan") if failure == "nan" else "not a number"
        return accuracy(model, digits[1])

    tuner = ilit.Tuner(_conf(tmp_path))
    q = tuner.tune(trained_cnn, q_dataloader=digits[0], eval_func=eval_func)
    first, second = tuner.history.trials
    expected = {"raise": "RuntimeError: eval broke on trial 1", "nan": "nan", "string": "'not a number'"}[failure]
    assert first.error is not None and expected in first.error and not first.meets
    assert second.error is None and second.meets and tuner.best_trial is second
    assert q is not None and calls[0] is trained_cnn
    saved = json.loads((tmp_path / "ws" / "history.json").read_text())
    assert expected in json.dumps(saved)  # the message is in the history file too


def test_a_q_func_failing_on_one_qat_trial_is_recorded_and_tuning_goes_on(trained_cnn, digits, tmp_path):
    before = snapshot(trained_cnn)
    calls = []

    def q_func(model):
        calls.append(model)
        if len(calls) == 1:
            raise FloatingPointError("loss diverged")
        train(model, digits[0][:3], epochs=1, lr=1e-4)

    tuner = ilit.Tuner(_conf(tmp_path, approach="quant_aware_training", metric={"topk": 1}))
    q = tuner.tune(trained_cnn, q_dataloader=digits[0], q_func=q_func, eval_dataloader=digits[1])
    first, second = tuner.history.trials
    assert first.error == "FloatingPointError: loss diverged" and not first.meets
    assert second.error is None and second.meets and q is not None
    assert len(calls) == 2 and all(m is not trained_cnn for m in calls)  # q_func trains copies
    assert_unchanged(trained_cnn, before)


def test_a_torchscript_module_without_framework_name_is_explained_without_loading_other_adaptors(
        trained_cnn, digits, tmp_path):
    scripted = torch.jit.script(copy.deepcopy(trained_cnn).eval())
    conf = _conf(tmp_path, max_trials=1)
    del conf["framework"]
    with pytest.raises(ilit.ConfigError,
                       match="belongs to the pytorch adaptor, which does not take it .*scripted from"):
        ilit.Tuner(conf).tune(scripted, q_dataloader=digits[0], eval_func=lambda m: 1.0)
    assert "tensorflow" not in sys.modules and "mxnet" not in sys.modules


def test_ctrl_c_during_the_analysis_reaches_the_tuner(trained_cnn, digits, tmp_path, monkeypatch):
    """The issue's case: SIGINT inside torch's lazy imports during FX tracing came back as an AttributeError
    (a half-initialised sympy / torch._dynamo), which the analysis took for "not traceable". Now the run stops
    with KeyboardInterrupt, whatever error the interrupted import left behind."""
    import signal

    import ilit_pytorch.graph as graph

    real, calls = graph._unit, []

    def unit(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            try:
                # to this thread (os.kill to the process may land on one of torch's threads, and Python then
                # runs the handler only later, after this except clause: the test was flaky under load)
                signal.raise_signal(signal.SIGINT)
                signal.pthread_sigmask(signal.SIG_BLOCK, [])  # a syscall, so the handler runs here
            except KeyboardInterrupt:  # what an interrupted lazy import left behind
                raise AttributeError("module 'torch._dynamo' has no attribute 'config'") from None
        return real(*args, **kwargs)
    monkeypatch.setattr(graph, "_unit", unit)
    tuner = ilit.Tuner(_conf(tmp_path, metric={"topk": 1}))
    # Python's own SIGINT handler (KeyboardInterrupt), whatever an earlier test (torch.compile's workers) left
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            tuner.tune(trained_cnn, q_dataloader=digits[0], eval_dataloader=digits[1])
    finally:
        signal.signal(signal.SIGINT, previous)
    assert len(calls) == 1  # not retried unit by unit as a model FX cannot trace


# ------------------------------------------------------------------ 5. the adaptor contract kit
def numpy_snapshot(model):
    """``snapshot`` as numpy and plain values, the form ilit.testing compares."""
    snap = snapshot(model)
    return {**snap,
            "state": {k: _bits(v).numpy() for k, v in snap["state"].items()},
            "grad": {k: None if g is None else _bits(g).numpy() for k, g in snap["grad"].items()}}


class TestPyTorchAdaptorContract(AdaptorContract):
    """ilit.testing's conformance suite, the one every adaptor runs, on the digits CNN."""

    @pytest.fixture(scope="class")
    @classmethod
    def spec(cls, trained_cnn, digits):
        return ContractSpec(
            framework="pytorch", make_model=lambda: copy.deepcopy(trained_cnn), batches=digits[1][:4],
            state=numpy_snapshot, metric={"topk": 1},
            config={"quantization": {"activation": {"algorithm": "minmax"}}},
            foreign_models={"torch_tensor": lambda: torch.zeros(2, 64),
                            "torchscript": lambda: torch.jit.script(copy.deepcopy(trained_cnn).eval())},
            load=lambda adaptor, path, fp32: adaptor.load(path, model=fp32))  # data only: rebuilt from the FP32 model
