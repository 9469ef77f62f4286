"""bf16 fallback (issue 15 §3): offered where the CPU has AMX or AVX512-BF16, and really run in bfloat16.

The capability follows :func:`ilit_pytorch.bf16.bf16_enabled` (detection, unit-tested on fake cpuinfo texts,
or ``ILIT_PYTORCH_BF16``). The numeric tests run twice: on the machine's own ISA (skipped, with the reason,
where it has no native bf16) and with ``ILIT_PYTORCH_BF16=1``, which forces the same path on any CPU
(torch emulates bf16 there: slower, the same numbers), so something always asserts.
"""

import copy

import pytest
import torch
import yaml
from torch import nn

from conftest import TinyTransformer, accuracy, make_adaptor, space_for, uniform_cfg

import ilit
from ilit.tune_cfg import bf16_ops, describe, fallback_ops
from ilit_pytorch import backend, bf16
from ilit_pytorch.bf16 import BF16Module

AMX = ("processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: fpu sse2 avx2 avx512f avx512bw avx512_vnni "
       "avx512_bf16 amx_bf16 amx_tile amx_int8 avx_vnni\n\nprocessor\t: 1\nflags\t\t: fpu\n")
AMX_ONLY = "flags\t\t: fpu avx2 avx512f amx_bf16 amx_tile\n"
AVX512_BF16 = "flags\t\t: fpu avx2 avx512f avx512_vnni avx512_bf16\n"  # Cooper Lake, Zen 4
VNNI = "vendor_id\t: GenuineIntel\nflags\t\t: fpu sse2 avx2 avx512f avx512bw avx512_vnni\n"
AVX2_AMD = "vendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 avx avx2 fma bmi2\nbugs\t\t: sysret_ss_attrs\n"


@pytest.fixture
def detect(monkeypatch):
    """bf16 as the machine's ISA says (the autouse fixture of conftest turns it off for the other tests)."""
    monkeypatch.delenv(bf16.ENV, raising=False)


@pytest.fixture(params=["native", "forced"])
def bf16_on(request, monkeypatch):
    """bf16 fallback offered: on this CPU's own ISA (skipped where it has none), or forced with the env var."""
    if request.param == "native":
        if not bf16.cpu_has_bf16():
            pytest.skip("CPU has no AMX/AVX512-BF16: no native bf16 kernels to fall back to (the 'forced' case "
                        "runs the same path with torch's emulated bf16)")
        monkeypatch.delenv(bf16.ENV, raising=False)
    else:
        monkeypatch.setenv(bf16.ENV, "1")
    return request.param


# ----------------------------------------------------------------------------- detection and capability
def test_detection_reads_amx_or_avx512_bf16_flags_from_cpuinfo():
    assert bf16.isa_has_bf16(AMX) and bf16.isa_has_bf16(AMX_ONLY) and bf16.isa_has_bf16(AVX512_BF16)
    assert not bf16.isa_has_bf16(VNNI) and not bf16.isa_has_bf16(AVX2_AMD)
    assert not bf16.isa_has_bf16("") and not bf16.isa_has_bf16("processor\t: 0\nmodel name\t: x\n")
    assert not bf16.isa_has_bf16("flags\t\t: fpu avx2 amx_bf16_like\n")  # whole flags only
    assert "avx512_bf16" in bf16.cpu_flags(AMX) and "fpu" in bf16.cpu_flags(AMX)
    assert bf16.cpu_flags(AMX) != {"fpu"}  # the first CPU's flags line, not the last one
    with open("/proc/cpuinfo", encoding="utf-8") as f:  # this machine: the cached answer is the text's answer
        assert bf16.cpu_has_bf16() == bf16.isa_has_bf16(f.read())


def test_the_env_var_forces_bf16_on_or_off_and_refuses_other_values(monkeypatch):
    monkeypatch.setenv(bf16.ENV, "1")
    assert bf16.bf16_enabled()
    monkeypatch.setenv(bf16.ENV, "0")
    assert not bf16.bf16_enabled()
    monkeypatch.delenv(bf16.ENV)
    assert bf16.bf16_enabled() == bf16.cpu_has_bf16()
    monkeypatch.setenv(bf16.ENV, "yes")
    with pytest.raises(ValueError, match="ILIT_PYTORCH_BF16='yes': use 1"):
        bf16.bf16_enabled()


def _offered(cap):
    return {name for (name, _t), op in cap["op_wise"].items() if "bf16" in op["activation"]["dtype"]}


def test_capability_offers_bf16_exactly_when_the_isa_has_it(trained_cnn, detect):
    from conftest import ResidualNet

    ops = make_adaptor().query_fw_capability(trained_cnn)["op_wise"]
    expected = {"features.0", "features.3", "features.7", "fc1", "fc2"} if bf16.cpu_has_bf16() else set()
    assert _offered({"op_wise": ops}) == expected
    for op in ops.values():  # in both tensors or neither, always just before fp32
        assert ("bf16" in op["weight"]["dtype"]) == ("bf16" in op["activation"]["dtype"])
        for part in ("weight", "activation"):
            dtypes = op[part]["dtype"]
            assert dtypes[-2:] == ["bf16", "fp32"] if "bf16" in dtypes else dtypes[-1] == "fp32"
    res = make_adaptor().query_fw_capability(ResidualNet().eval())
    assert _offered(res) == ({"stem.0", "conv_a", "conv_b", "fc"} if bf16.cpu_has_bf16() else set())  # not add/cat


def test_bf16_is_offered_for_static_and_dynamic_linear_convs_only(trained_cnn, monkeypatch):
    monkeypatch.setenv(bf16.ENV, "1")
    from conftest import RecurrentNet

    static = make_adaptor().query_fw_capability(trained_cnn)
    assert _offered(static) == {"features.0", "features.3", "features.7", "fc1", "fc2"}
    dynamic = make_adaptor({"quantization": {"approach": "post_training_dynamic_quant"}})
    cap = dynamic.query_fw_capability(RecurrentNet().eval())
    assert _offered(cap) == {name for name, t in cap["op_wise"] if t == "Linear"} and _offered(cap)
    qat = make_adaptor({"quantization": {"approach": "quant_aware_training"}}).query_fw_capability(trained_cnn)
    assert not _offered(qat)
    emb = nn.Sequential(nn.Embedding(20, 8), nn.Linear(8, 4)).eval()
    assert _offered(make_adaptor().query_fw_capability(emb)) == {"1"}  # not the embedding


# ----------------------------------------------------------------------------- the bf16 ops really run in bf16
def _inputs_of(model, name, x):
    seen = {}
    handle = model.get_submodule(name).register_forward_hook(lambda m, i, o: seen.update(i=i[0], o=o))
    with torch.no_grad():
        model(x)
    handle.remove()
    return seen["i"], seen["o"]


def test_a_bf16_fallback_op_has_bf16_weights_and_matches_fp32_by_hand(trained_cnn, digits, bf16_on):
    adaptor = make_adaptor()
    space = space_for(adaptor, trained_cnn)
    cfg = space.with_fallback(uniform_cfg(adaptor, trained_cnn), ["features.0", "fc2"], dtype="bf16")
    assert bf16_ops(cfg) == ["features.0", "fc2"] and "bf16 fallback=2" in describe(cfg)
    q = adaptor.quantize(cfg, trained_cnn, digits[0])
    for name in ("features.0", "fc2"):
        wrapper = q.get_submodule(name)
        assert isinstance(wrapper, BF16Module)
        assert all(p.dtype == torch.bfloat16 for p in wrapper.parameters())
    ref_fc2 = trained_cnn.fc2
    assert torch.equal(q.get_submodule("fc2.m").weight, ref_fc2.weight.detach().to(torch.bfloat16))
    assert any(isinstance(m, torch.ao.nn.quantized.Conv2d) for m in q.modules())  # the rest is int8
    for p in trained_cnn.parameters():  # the user's model is untouched
        assert p.dtype == torch.float32
    x = digits[1][0][0]
    inp, out = _inputs_of(q, "fc2", x)
    assert inp.dtype == torch.float32 and out.dtype == torch.float32  # the graph around it stays fp32
    w, b = ref_fc2.weight.detach(), ref_fc2.bias.detach()
    by_hand = nn.functional.linear(inp.to(torch.bfloat16), w.to(torch.bfloat16), b.to(torch.bfloat16)).float()
    assert torch.allclose(out, by_hand, rtol=1e-2, atol=1e-2 * by_hand.abs().max().item())
    fp32 = nn.functional.linear(inp, w, b)
    err = (out - fp32).abs().max().item()
    assert 0 < err <= 2 ** -6 * fp32.abs().max().item()  # bf16 rounding (8 significant bits), not exact fp32
    # the same config with fp32 fallback: its first conv (conv + folded batch-norm + relu) is the fp32 reference
    q32 = adaptor.quantize(space.with_fallback(uniform_cfg(adaptor, trained_cnn), ["features.0", "fc2"]),
                           trained_cnn, digits[0])
    assert type(q32.get_submodule("features.0")) is type(q.get_submodule("features.0.m"))
    inp0, out0 = _inputs_of(q, "features.0", x)
    with torch.no_grad():
        expect = q32.get_submodule("features.0")(inp0)
    err0 = (out0 - expect).abs().max().item()
    assert 0 < err0 <= 2 ** -6 * expect.abs().max().item()
    assert abs(accuracy(q, digits[1]) - accuracy(q32, digits[1])) <= 0.02


def test_dynamic_quantization_runs_a_bf16_fallback_linear_in_bf16(digits, bf16_on, tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)).eval()
    adaptor = make_adaptor({"quantization": {"approach": "post_training_dynamic_quant"}})
    space = space_for(adaptor, model)
    cfg = space.with_fallback(uniform_cfg(adaptor, model), ["3"], dtype="bf16")
    q = adaptor.quantize(cfg, model, digits[0])
    assert isinstance(q.get_submodule("1"), torch.ao.nn.quantized.dynamic.Linear)
    assert isinstance(q.get_submodule("3"), BF16Module) and q.get_submodule("3.m").weight.dtype == torch.bfloat16
    x = digits[1][0][0]
    inp, out = _inputs_of(q, "3", x)
    w, b = model[3].weight.detach(), model[3].bias.detach()
    by_hand = nn.functional.linear(inp.bfloat16(), w.bfloat16(), b.bfloat16()).float()
    assert torch.allclose(out, by_hand, rtol=1e-2, atol=1e-2 * by_hand.abs().max().item())
    adaptor.save(q, str(tmp_path / "dyn"))
    loaded = adaptor.load(str(tmp_path / "dyn"), model=model)
    assert isinstance(loaded.get_submodule("3"), BF16Module)
    with torch.no_grad():
        assert torch.equal(loaded(x), q(x))


def test_bf16_module_dequantizes_a_quantized_input():
    """FX can leave a fallback Linear's input quantized (a LayerNorm shared with int8 q/k Linears): bf16 takes it."""
    torch.manual_seed(0)
    lin = nn.Linear(16, 4)
    x = torch.randn(8, 16)
    qx = torch.quantize_per_tensor(x, 0.05, 128, torch.quint8)
    with torch.no_grad():
        out = BF16Module(copy.deepcopy(lin))(qx)
        by_hand = nn.functional.linear(qx.dequantize().bfloat16(), lin.weight.bfloat16(), lin.bias.bfloat16()).float()
    assert out.dtype == torch.float32 and torch.equal(out, by_hand)


def _config(tmp_path, strategy):
    conf = {
        "framework": {"name": "pytorch"},
        "calibration": {"iterations": [2]},
        "quantization": {"approach": "post_training_static_quant",
                         "weight": {"granularity": "per_channel", "scheme": "sym"},
                         "activation": {"scheme": "asym", "algorithm": "minmax"}},
        "tuning": {"strategy": strategy, "accuracy_criterion": {"absolute": 0.1}, "objective": "modelsize",
                   "workspace": {"path": str(tmp_path / "ws")}},
    }
    path = tmp_path / "conf.yaml"
    path.write_text(yaml.safe_dump(conf))
    return str(path)


@pytest.mark.parametrize("strategy", ["basic", "mse"])
def test_tune_falls_an_op_that_cannot_stay_int8_back_to_bf16(trained_cnn, digits, tmp_path, bf16_on, strategy):
    """An eval_func that loses 0.3 whenever fc2 is int8 (on any CPU): fc2 must fall back, and goes to bf16."""
    def eval_func(model):
        fc2 = model.get_submodule("fc2")
        penalty = 0.0 if isinstance(fc2, (nn.Linear, BF16Module)) else 0.3
        return accuracy(model, digits[1]) - penalty

    tuner = ilit.Tuner(_config(tmp_path, strategy))
    q = tuner.tune(trained_cnn, q_dataloader=digits[0], eval_func=eval_func)
    assert q is not None
    best = tuner.best_trial.tune_cfg
    assert "fc2" in bf16_ops(best) and fallback_ops(best) == bf16_ops(best)  # bf16, no fp32 op
    assert isinstance(q.get_submodule("fc2"), BF16Module)
    assert "bf16 fallback" in tuner.summary()
    with open(tuner.history_path) as f:
        assert '"dtype": "bf16"' in f.read()
    loaded = tuner.adaptor.load(str(tmp_path / "ws" / "best_model"), model=trained_cnn)  # rebuilt, then filled
    assert isinstance(loaded.get_submodule("fc2"), BF16Module)
    assert loaded.get_submodule("fc2.m").weight.dtype == torch.bfloat16
    x = digits[1][0][0]
    with torch.no_grad():
        assert torch.equal(loaded(x), q(x))


# ----------------------------------------------------------------------------- PT2E
def _bf16_copy(model):
    """``model`` with every Linear run in bf16 by hand (eager, no graph): what an all-bf16 config must compute."""
    out = copy.deepcopy(model)
    for name, m in list(out.named_modules()):
        if type(m) is nn.Linear:
            parent, _, leaf = name.rpartition(".")
            setattr(out.get_submodule(parent) if parent else out, leaf, BF16Module(m))
    return out


@pytest.mark.skipif(backend.pt2e_missing() is not None,
                    reason="torchao is not installed (pip install 'ilit-pytorch[pt2e]')")
def test_pt2e_runs_bf16_fallback_linears_in_bf16(digits, bf16_on, monkeypatch, tmp_path):
    monkeypatch.setenv("ILIT_PYTORCH_BACKEND", "pt2e")
    torch.manual_seed(0)
    model = TinyTransformer().eval()
    adaptor = make_adaptor()
    assert adaptor.backend_name == "pt2e"
    linears = {n for n, m in model.named_modules() if type(m) is nn.Linear}
    assert _offered(adaptor.query_fw_capability(model)) == linears
    space = space_for(adaptor, model)
    cfg = space.with_fallback(uniform_cfg(adaptor, model), ["blocks.0.q", "head"], dtype="bf16")
    q = adaptor.quantize(cfg, model, digits[0])
    assert isinstance(q, backend.PT2EModel) and q._compiled is None
    gm = q.graph_module
    seen = {}
    for node in gm.graph.nodes:
        if node.op == "call_function" and node.target == torch.ops.aten.linear.default:
            path = list(node.meta["nn_module_stack"].values())[-1][0]
            w = node.args[1]
            if w.op == "get_attr":
                seen[path] = gm.get_submodule(w.target.rpartition(".")[0]).get_parameter(
                    w.target.rpartition(".")[2]).dtype
                cast_in, (cast_out,) = node.args[0], node.users
                assert cast_in.target == cast_out.target == torch.ops.aten._to_copy.default
                assert cast_in.kwargs["dtype"] == torch.bfloat16 and cast_out.kwargs["dtype"] == torch.float32
            else:
                seen[path] = "int8" if "dequantize" in str(w.target) else w.op
    assert seen == {n: (torch.bfloat16 if n in ("blocks.0.q", "head") else "int8") for n in linears}
    for p in model.parameters():
        assert p.dtype == torch.float32  # the user's model is untouched
    adaptor.save(q, str(tmp_path / "pt2e"))  # data only: rebuilt from the FP32 model, bf16 nodes included
    loaded = adaptor.load(str(tmp_path / "pt2e"), model=model)
    x = digits[1][0][0]
    with torch.no_grad():
        assert torch.equal(loaded.graph_module(x), gm(x))
    # every Linear in bf16: the graph computes the model run in bf16 by hand, close to but not exactly fp32
    all_bf16 = adaptor.quantize(space.with_fallback(cfg, sorted(linears), dtype="bf16"), model, digits[0])
    with torch.no_grad():
        got, by_hand, fp32 = all_bf16.graph_module(x), _bf16_copy(model)(x), model(x)
    scale = fp32.abs().max().item()
    assert torch.allclose(got, by_hand, atol=1e-2 * scale)
    assert 0 < (got - fp32).abs().max().item() <= 5e-2 * scale
