"""Post-training static quantization: capability, per-op choices, fallback and calibration reuse."""

import copy

import pytest
import torch
from torch.ao.nn import quantized as nnq
from torch.ao.nn.intrinsic import quantized as nniq

from conftest import ResidualNet, accuracy, make_adaptor, uniform_cfg

from ilit_pytorch import backend
from ilit_pytorch.observers import PercentileObserver


def _qconv(model, name):
    return model.get_submodule(name)


def test_capability_lists_fused_and_functional_ops_with_their_choices():
    model = ResidualNet().eval()
    cap = make_adaptor().query_fw_capability(model)
    ops = cap["op_wise"]
    assert list(ops) == [("stem.0", "ConvReLU2d"), ("conv_a", "Conv2d"), ("add", "add"), ("conv_b", "Conv2d"),
                         ("cat", "cat"), ("fc", "Linear")]
    conv = ops[("conv_a", "Conv2d")]
    assert conv["weight"] == {"dtype": ["int8", "fp32"], "scheme": ["sym", "asym"],
                              "granularity": ["per_channel", "per_tensor"], "algorithm": ["minmax"]}
    assert conv["activation"]["algorithm"] == ["minmax", "kl", "percentile"]
    assert conv["activation"]["scheme"] == ["asym", "sym"]
    assert "weight" not in ops[("add", "add")] and "fp32" in ops[("add", "add")]["activation"]["dtype"]
    assert set(cap["approaches"]) == {backend.STATIC, backend.DYNAMIC, backend.QAT}


def test_int8_model_runs_real_quantized_kernels(trained_cnn, digits):
    adaptor = make_adaptor()
    q = adaptor.quantize(uniform_cfg(adaptor, trained_cnn), trained_cnn, digits[0])
    kinds = {type(m) for m in q.modules()}
    assert nniq.ConvReLU2d in kinds and nnq.Linear in kinds or nniq.LinearReLU in kinds
    assert "torch.quantize_per_tensor" in q.code
    out = q(digits[1][0][0])
    assert out.dtype == torch.float32
    assert accuracy(q, digits[1]) >= accuracy(trained_cnn, digits[1]) - 0.03


def test_weight_granularity_changes_the_converted_weights(trained_cnn, digits):
    adaptor = make_adaptor()
    per_channel = uniform_cfg(adaptor, trained_cnn, weight={"granularity": "per_channel"})
    per_tensor = uniform_cfg(adaptor, trained_cnn, weight={"granularity": "per_tensor"})
    pc = adaptor.quantize(per_channel, trained_cnn, digits[0])
    pt = adaptor.quantize(per_tensor, trained_cnn, digits[0])
    assert _qconv(pc, "features.0").weight().qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric)
    assert _qconv(pt, "features.0").weight().qscheme() in (torch.per_tensor_affine, torch.per_tensor_symmetric)


def test_weight_scheme_changes_zero_points(trained_cnn, digits):
    adaptor = make_adaptor()
    for gran, zps in (("per_channel", lambda w: w.q_per_channel_zero_points()),
                      ("per_tensor", lambda w: torch.tensor([w.q_zero_point()]))):
        sym = adaptor.quantize(uniform_cfg(adaptor, trained_cnn, weight={"scheme": "sym", "granularity": gran}),
                               trained_cnn, digits[0])
        asym = adaptor.quantize(uniform_cfg(adaptor, trained_cnn, weight={"scheme": "asym", "granularity": gran}),
                                trained_cnn, digits[0])
        for name in ("features.0", "features.3", "fc1"):
            assert torch.all(zps(_qconv(sym, name).weight()) == 0), (gran, name)
        layers = ("features.0", "features.3", "fc1")
        assert any(torch.any(zps(_qconv(asym, name).weight()) != 0) for name in layers), gran


def test_activation_scheme_changes_output_zero_point(trained_cnn, digits):
    adaptor = make_adaptor()
    lo, hi = backend.activation_range()
    sym = adaptor.quantize(uniform_cfg(adaptor, trained_cnn, activation={"scheme": "sym"}), trained_cnn, digits[0])
    asym = adaptor.quantize(uniform_cfg(adaptor, trained_cnn, activation={"scheme": "asym"}), trained_cnn, digits[0])
    # conv+bn+relu outputs are >= 0: asymmetric uses zero point 0, symmetric the middle of the range
    assert int(_qconv(asym, "features.0").zero_point) == 0
    assert int(_qconv(sym, "features.0").zero_point) == (lo + hi) // 2
    assert float(_qconv(sym, "features.0").scale) > float(_qconv(asym, "features.0").scale)


def test_calibration_algorithm_changes_the_activation_ranges(trained_cnn, digits):
    adaptor = make_adaptor()
    scales = {}
    for algo in ("minmax", "kl", "percentile"):
        q = adaptor.quantize(uniform_cfg(adaptor, trained_cnn, activation={"algorithm": algo}), trained_cnn, digits[0])
        scales[algo] = [float(_qconv(q, n).scale) for n in ("features.0", "features.3", "features.7", "fc1", "fc2")]
    assert scales["kl"] != scales["minmax"]
    assert scales["percentile"] != scales["minmax"]
    # clipping outliers never widens a range
    assert all(p <= m * 1.0001 for p, m in zip(scales["percentile"], scales["minmax"]))
    qc = backend.make_qconfig({"activation": {"dtype": "uint8", "scheme": "asym", "granularity": "per_tensor",
                                              "algorithm": "percentile"}}, backend.STATIC)
    assert isinstance(qc.activation(), PercentileObserver)


def test_a_fallback_op_really_runs_in_fp32(trained_cnn, digits):
    adaptor = make_adaptor()
    cfg = uniform_cfg(adaptor, trained_cnn, fallback=["features.3"])
    q = adaptor.quantize(cfg, trained_cnn, digits[0])
    conv = q.get_submodule("features.3")
    # a float conv (its batch-norm folded in, its relu fused), no quantized module
    assert isinstance(conv, torch.ao.nn.intrinsic.ConvReLU2d) and conv[0].weight.dtype == torch.float32
    seen = {}
    h = conv.register_forward_hook(lambda m, i, o: seen.update(inp=i[0], out=o))
    q(digits[1][0][0])
    h.remove()
    assert not seen["inp"].is_quantized and not seen["out"].is_quantized
    assert isinstance(q.get_submodule("features.0"), nniq.ConvReLU2d)  # its neighbours stay int8
    assert isinstance(q.get_submodule("features.7"), nniq.ConvReLU2d)


def test_functional_ops_are_tunable_too():
    model = ResidualNet().eval()
    data = [(torch.rand(8, 1, 8, 8), torch.zeros(8, dtype=torch.long)) for _ in range(2)]
    adaptor = make_adaptor()
    both = adaptor.quantize(uniform_cfg(adaptor, model), model, data)
    assert "quantized.add" in both.code and "torch.cat" in both.code
    no_add = adaptor.quantize(uniform_cfg(adaptor, model, fallback=["add"]), model, data)
    assert "quantized.add" not in no_add.code
    assert isinstance(no_add.get_submodule("conv_a"), nnq.Conv2d)


def test_calibration_statistics_are_reused_not_rerun(trained_cnn, digits):
    adaptor = make_adaptor({"calibration": {"iterations": 3}})
    cfgs = [uniform_cfg(adaptor, trained_cnn, iterations=3),
            uniform_cfg(adaptor, trained_cnn, iterations=3, weight={"scheme": "asym", "granularity": "per_tensor"}),
            uniform_cfg(adaptor, trained_cnn, iterations=3, activation={"scheme": "sym"}),
            uniform_cfg(adaptor, trained_cnn, iterations=3, fallback=["features.3", "fc2"]),
            uniform_cfg(adaptor, trained_cnn, iterations=3, activation={"algorithm": "kl"}),
            uniform_cfg(adaptor, trained_cnn, iterations=3, activation={"algorithm": "percentile"})]
    models = [adaptor.quantize(c, trained_cnn, digits[0]) for c in cfgs[:4]]
    assert adaptor.calibration_batches == 3  # one pass served the four minmax configs
    models += [adaptor.quantize(c, trained_cnn, digits[0]) for c in cfgs[4:]]
    assert adaptor.calibration_batches == 6  # histograms are recorded once a config needs them, then shared
    adaptor.quantize(uniform_cfg(adaptor, trained_cnn, iterations=2), trained_cnn, digits[0])
    assert adaptor.calibration_batches == 8  # another batch count needs its own pass
    adaptor.quantize(cfgs[1], trained_cnn, digits[0])
    assert adaptor.calibration_batches == 8

    # the reused statistics give exactly the model a calibration for that config alone gives
    x = digits[1][0][0]
    for cfg, cached in zip(cfgs[2:], models[2:]):
        alone = make_adaptor({"calibration": {"iterations": 3}})
        assert torch.equal(alone.quantize(cfg, trained_cnn, digits[0])(x), cached(x))


@pytest.mark.parametrize("approach", ["post_training_static_quant", "quant_aware_training"])
def test_analysis_and_calibration_leave_the_model_alone(digits, approach):
    torch.manual_seed(0)
    model = ResidualNet().eval()
    children = {n: (id(m), type(m), m.training) for n, m in model.named_modules()}
    state = copy.deepcopy(model.state_dict())
    adaptor = make_adaptor({"quantization": {"approach": approach}})
    adaptor.quantize(uniform_cfg(adaptor, model), model, digits[0], q_func=lambda m: m(digits[0][0][0]))
    adaptor.inspect_tensor(model, digits[1], ["conv_a", "add"], [0])
    assert {n: (id(m), type(m), m.training) for n, m in model.named_modules()} == children
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_the_users_model_is_never_modified(trained_cnn, digits):
    before = copy.deepcopy(trained_cnn.state_dict())
    types = [type(m) for m in trained_cnn.modules()]
    adaptor = make_adaptor()
    adaptor.quantize(uniform_cfg(adaptor, trained_cnn, fallback=["fc1"]), trained_cnn, digits[0])
    assert [type(m) for m in trained_cnn.modules()] == types
    assert not trained_cnn.training
    for k, v in trained_cnn.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_percentile_observer_clips_rare_outliers():
    torch.manual_seed(0)
    x = torch.rand(100_000)  # uniform in [0, 1)
    x[0] = 50.0  # one outlier
    mm = torch.ao.quantization.MinMaxObserver(quant_min=0, quant_max=255)
    pc = PercentileObserver(quant_min=0, quant_max=255, percentile=99.9)
    mm(x)
    pc(x)
    lo, hi = pc._non_linear_param_search()
    assert float(lo) == 0.0 or float(lo) == pytest.approx(0.0, abs=0.05)
    assert 0.95 <= float(hi) <= 1.1  # the outlier no longer sets the range
    assert float(pc.calculate_qparams()[0]) < float(mm.calculate_qparams()[0]) / 20
