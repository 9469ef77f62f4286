"""SmoothQuant as a tunable recipe: FP32-equivalent migration, the capability, tuning and resume with it."""

from __future__ import annotations

import copy
import json
import operator

import pytest
import torch

from conftest import make_adaptor, space_for, uniform_cfg

import ilit
from ilit.tune_cfg import calibration_key, describe
from ilit_pytorch import backend, smoothquant


def _flat_inputs(digits):
    return digits[0][:4]


def test_migration_keeps_the_fp32_function_and_flattens_the_outliers(outlier_transformer, digits):
    model = outlier_transformer
    adaptor = make_adaptor()
    groups = smoothquant.find_groups(model, adaptor.analysis(model, False))
    by_producer = {g.producer: g for g in groups}
    # ln1 feeds q/k/v only and ln2 fc1 only; the final norm feeds a mean, not a Linear
    assert by_producer["blocks.0.ln1"].linears == ["blocks.0.q", "blocks.0.k", "blocks.0.v"]
    assert by_producer["blocks.1.ln2"].linears == ["blocks.1.fc1"]
    assert "norm" not in by_producer
    before = copy.deepcopy(model.state_dict())
    smoothed = adaptor.smoothed_model(model, 0.5, digits[0], 4)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the user's model untouched
    assert not torch.equal(smoothed.blocks[0].ln1.weight, model.blocks[0].ln1.weight)
    x = torch.cat([xb for xb, _ in digits[1][:3]])
    with torch.no_grad():
        torch.testing.assert_close(smoothed(x), model(x), rtol=1e-4, atol=1e-4)
    # the input of q: its largest channel over its median channel shrinks (outliers moved into the weights)
    stats = {}
    for name, m in (("fp32", model), ("smoothed", smoothed)):
        absmax, _ = smoothquant.input_absmax(m, ["blocks.0.q"], digits[0], 4)
        a = absmax["blocks.0.q"]
        stats[name] = float(a.max() / a.median())
    assert stats["smoothed"] < stats["fp32"] / 3
    # by hand: s = max|x|^a / max|W|^(1-a) over q, k, v; q's weight is multiplied by s column-wise
    absmax, _ = smoothquant.input_absmax(model, ["blocks.0.q"], digits[0], 4)
    w = torch.stack([getattr(model.blocks[0], n).weight.abs().amax(0) for n in "qkv"]).amax(0)
    s = absmax["blocks.0.q"] ** 0.5 / w ** 0.5
    torch.testing.assert_close(smoothed.blocks[0].q.weight, model.blocks[0].q.weight * s, rtol=1e-5, atol=1e-6)


def test_capability_offers_the_recipe_for_layernorm_models_only(outlier_transformer, trained_cnn):
    adaptor = make_adaptor()
    cap = adaptor.query_fw_capability(outlier_transformer)
    assert cap["recipes"] == {"smooth_quant": {"alpha": list(smoothquant.ALPHAS)}}
    assert "recipes" not in adaptor.query_fw_capability(trained_cnn)
    assert "recipes" not in make_adaptor({"quantization": {"approach": "post_training_dynamic_quant"}}) \
        .query_fw_capability(outlier_transformer)
    space = space_for(adaptor, outlier_transformer)
    configs = space.model_wise_configs()
    # each plain config is followed by the same config with each alpha
    assert "recipes" not in configs[0]
    alphas = [c["recipes"]["smooth_quant"]["alpha"] for c in configs[1:1 + len(smoothquant.ALPHAS)]]
    assert alphas == list(smoothquant.ALPHAS)
    assert {k: v for k, v in configs[1].items() if k != "recipes"} == configs[0]
    assert calibration_key(configs[0]) != calibration_key(configs[1])
    assert "smooth_quant(alpha=0.5)" in describe(configs[1])
    # fallback keeps the recipe
    assert space.with_fallback(configs[1], ["blocks.0.q"])["recipes"] == configs[1]["recipes"]


def test_smoothquant_model_is_int8_and_closer_to_fp32(outlier_transformer, digits):
    adaptor = make_adaptor()
    plain = uniform_cfg(adaptor, outlier_transformer, iterations=4)
    sq = {**plain, "recipes": {"smooth_quant": {"alpha": 0.5}}}
    x = torch.cat([xb for xb, _ in digits[1]])
    with torch.no_grad():
        ref = outlier_transformer(x)
        err = {name: float((adaptor.quantize(cfg, outlier_transformer, digits[0])(x) - ref).pow(2).mean())
               for name, cfg in (("plain", plain), ("sq", sq))}
    assert err["sq"] < err["plain"] / 4


def _conf(tmp_path, ws, max_trials):
    return {"framework": {"name": "pytorch"}, "calibration": {"iterations": [4]},
            "quantization": {"approach": "post_training_static_quant",
                             "weight": {"granularity": "per_channel", "scheme": "sym"},
                             "activation": {"scheme": "asym", "algorithm": "minmax"}},
            "tuning": {"metric": {"topk": 1}, "accuracy_criterion": {"relative": 0.01}, "objective": "performance",
                       "max_trials": max_trials, "workspace": {"path": str(tmp_path / ws)}}}


def test_tune_with_smoothquant_and_resume(outlier_transformer, digits, tmp_path):
    model = outlier_transformer
    first = ilit.Tuner(_conf(tmp_path, "a", 1))
    first.tune(model, q_dataloader=digits[0], eval_dataloader=digits[1])
    assert len(first.history.trials) == 1 and "recipes" not in first.history.trials[0].tune_cfg
    # resume: the plain trial is replayed, not run again; the next one is the same config with SmoothQuant
    second = ilit.Tuner(_conf(tmp_path, "b", 3))
    second.tune(model, q_dataloader=digits[0], eval_dataloader=digits[1], resume_file=first.history_path)
    trials = second.history.trials
    assert trials[0].tune_cfg == first.history.trials[0].tune_cfg
    assert trials[1].tune_cfg["recipes"] == {"smooth_quant": {"alpha": 0.5}}
    assert trials[1].accuracy > trials[0].accuracy  # the outliers cost plain INT8 accuracy; SmoothQuant recovers it
    saved = json.loads(open(second.history_path).read())
    assert saved["trials"][1]["tune_cfg"]["recipes"] == {"smooth_quant": {"alpha": 0.5}}
    # resuming a history whose best trial has the recipe rebuilds that model with the recipe applied
    third = ilit.Tuner(_conf(tmp_path, "c", 3))
    q = third.tune(model, q_dataloader=digits[0], eval_dataloader=digits[1], resume_file=second.history_path)
    assert [t.tune_cfg for t in third.history.trials[:2]] == [t.tune_cfg for t in trials[:2]]
    assert third.adaptor.quantize_calls <= len(third.history.trials) - 2 + 1  # at most the best, rebuilt
    if second.best_trial is not None and second.best_trial.tune_cfg.get("recipes"):
        assert q is not None
        assert not torch.equal(q.get_submodule("blocks.0.ln1").weight, model.blocks[0].ln1.weight)


# ----------------------------------------------------------------------------- explicit scales (post-LN blocks)
needs_torchao = pytest.mark.skipif(backend.pt2e_missing() is not None,
                                   reason="torchao is not installed (pip install 'ilit-pytorch[pt2e]')")


@pytest.fixture
def fx(monkeypatch):
    """The FX backend, whatever the default: these tests read FX's converted graph and modules."""
    monkeypatch.setenv("ILIT_PYTORCH_BACKEND", "fx")


def _max_over_median(model, name, data):
    absmax, _ = smoothquant.input_absmax(model, [name], data, 4)
    return float(absmax[name].max() / absmax[name].median())


def test_post_ln_gets_explicit_scales_with_the_same_fp32_function(post_ln_transformer, digits):
    model = post_ln_transformer
    adaptor = make_adaptor()
    groups = smoothquant.find_groups(model, adaptor.analysis(model, False))
    # every LayerNorm also feeds a residual add (or the head's mean): nothing can absorb 1/s
    assert {g.producer: (g.kind, g.linears) for g in groups} == {
        "norm": ("explicit", ["blocks.0.q", "blocks.0.k", "blocks.0.v"]),
        "blocks.0.ln1": ("explicit", ["blocks.0.fc1"]),
        "blocks.0.ln2": ("explicit", ["blocks.1.q", "blocks.1.k", "blocks.1.v"]),
        "blocks.1.ln1": ("explicit", ["blocks.1.fc1"]),
    }
    assert adaptor.query_fw_capability(model)["recipes"] == {"smooth_quant": {"alpha": list(smoothquant.ALPHAS)}}
    before = copy.deepcopy(model.state_dict())
    smoothed = adaptor.smoothed_model(model, 0.5, digits[0], 4)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the user's model untouched
    assert isinstance(smoothed.blocks[0].q, smoothquant.SmoothedLinear)
    assert type(smoothed.blocks[0].out) is torch.nn.Linear  # reads the attention context: not smoothed
    torch.testing.assert_close(smoothed.norm.weight, model.norm.weight)  # the LayerNorm is not changed
    x = torch.cat([xb for xb, _ in digits[1][:3]])
    with torch.no_grad():  # float rounding only (the outliers are cancelled against 300s: 1e-3 on logits ~10)
        torch.testing.assert_close(smoothed(x), model(x), rtol=1e-4, atol=1e-3)
    # the op names are the model's own (the Linear inside is reported under the name it had)
    assert set(adaptor.analysis(smoothed, False).ops) == set(adaptor.analysis(model, False).ops)
    # what the Linear sees: its largest input channel over its median shrinks
    for fp32_name in ("blocks.0.q", "blocks.1.fc1"):
        plain = _max_over_median(model, fp32_name, digits[0])
        assert _max_over_median(smoothed, f"{fp32_name}.m", digits[0]) < plain / 3
    # by hand: s = max|x|^a / max|W|^(1-a) over q, k, v; the weight is W * s, the InputScale holds 1 / s
    absmax, _ = smoothquant.input_absmax(model, ["blocks.0.q"], digits[0], 4)
    w = torch.stack([getattr(model.blocks[0], n).weight.abs().amax(0) for n in "qkv"]).amax(0)
    s = absmax["blocks.0.q"] ** 0.5 / w ** 0.5
    torch.testing.assert_close(smoothed.blocks[0].q.m.weight, model.blocks[0].q.weight * s, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(smoothed.blocks[0].k.scale.scale, 1 / s, rtol=1e-5, atol=1e-6)


def _quantize_input_of(gm, target):
    """The node the quantized Linear ``target`` reads (a quantize_per_tensor) and what that quantizes."""
    node = next(n for n in gm.graph.nodes if n.op == "call_module" and n.target == target)
    quant = node.args[0]
    return quant.target, quant.args[0]


def _plain_and_smoothed(model, digits):
    """The adaptor, the model quantized plain and with SmoothQuant (alpha 0.75) on the current backend, the test
    inputs and the FP32 outputs on them."""
    adaptor = make_adaptor()
    plain = uniform_cfg(adaptor, model, iterations=4)
    sq = {**plain, "recipes": {"smooth_quant": {"alpha": 0.75}}}
    x = torch.cat([xb for xb, _ in digits[1]])
    with torch.no_grad():
        ref = model(x)
        qs = {name: adaptor.quantize(cfg, model, digits[0]) for name, cfg in (("plain", plain), ("sq", sq))}
    return adaptor, qs, x, ref


def test_post_ln_int8_reads_the_smoothed_input_and_is_closer_to_fp32(post_ln_transformer, digits, fx):
    _, qs, x, ref = _plain_and_smoothed(post_ln_transformer, digits)
    with torch.no_grad():
        err = {name: float((q(x) - ref).pow(2).mean()) for name, q in qs.items()}
    # FX quantizes the InputScale's output: the INT8 activations are the smoothed ones
    target, src = _quantize_input_of(qs["sq"], "blocks.0.q.m")
    assert target is torch.quantize_per_tensor and src.target is operator.mul
    assert type(qs["sq"].get_submodule("blocks.0.q.m")).__name__ == "Linear" and \
        type(qs["sq"].get_submodule("blocks.0.q.m")).__module__.startswith("torch.ao.nn.quantized")
    assert err["sq"] < err["plain"] * 0.75, err


def test_post_ln_smoothquant_round_trip_is_exact(post_ln_transformer, digits, tmp_path, fx):
    model = post_ln_transformer
    adaptor = make_adaptor()
    cfg = {**uniform_cfg(adaptor, model, iterations=4), "recipes": {"smooth_quant": {"alpha": 0.5}}}
    q = adaptor.quantize(cfg, model, digits[0])
    adaptor.save(q, str(tmp_path / "q"))
    loaded = make_adaptor().load(str(tmp_path / "q"), model=model)  # a fresh adaptor: nothing cached
    scale = "blocks.0.q.scale.scale"
    assert scale in loaded.state_dict() and torch.equal(loaded.state_dict()[scale], q.state_dict()[scale])
    assert not torch.equal(loaded.state_dict()[scale], torch.ones_like(loaded.state_dict()[scale]))
    with torch.no_grad():
        for xb, _ in digits[1][:4]:
            assert torch.equal(q(xb), loaded(xb))


def test_post_ln_fallback_of_a_linear_reading_a_layernorm_runs(post_ln_transformer, digits, fx):
    """FX would lower the LayerNorm to int8 for the quantized residual add and hand the fp32 Linear an int8
    tensor; the LayerNorm stays float instead (plain and SmoothQuant configs)."""
    model = post_ln_transformer
    adaptor = make_adaptor()
    x = torch.cat([xb for xb, _ in digits[1]])
    with torch.no_grad():
        ref = model(x)
        for recipes in ({}, {"recipes": {"smooth_quant": {"alpha": 0.5}}}):
            cfg = {**uniform_cfg(adaptor, model, iterations=4, fallback=["blocks.0.q"]), **recipes}
            q = adaptor.quantize(cfg, model, digits[0])
            assert type(q.get_submodule("blocks.0.q" + (".m" if recipes else ""))) is torch.nn.Linear
            out = q(x)  # ran: before the fix, "mat1 and mat2 must have the same dtype" (QUInt8 and Float)
            assert out.dtype == torch.float32 and bool(torch.isfinite(out).all())
            assert float((out - ref).pow(2).mean()) < float(ref.pow(2).mean())


@needs_torchao
def test_post_ln_smoothquant_on_pt2e(post_ln_transformer, digits, tmp_path, monkeypatch):
    monkeypatch.setenv("ILIT_PYTORCH_BACKEND", "pt2e")
    model = post_ln_transformer
    adaptor, qs, x, ref = _plain_and_smoothed(model, digits)
    assert all(isinstance(q, backend.PT2EModel) for q in qs.values())
    with torch.no_grad():
        err = {name: float((q.graph_module(x) - ref).pow(2).mean()) for name, q in qs.items()}
    gm = qs["sq"].graph_module
    # the explicit scale is a float mul whose output is what gets quantized for q's linear
    muls = [n for n in gm.graph.nodes if n.op == "call_function" and n.target == torch.ops.aten.mul.Tensor
            and any(u.target == torch.ops.quantized_decomposed.quantize_per_tensor.default for u in n.users)]
    assert muls, gm.code
    assert err["sq"] < err["plain"] * 0.75, err
    adaptor.save(qs["sq"], str(tmp_path / "q"))
    loaded = make_adaptor().load(str(tmp_path / "q"), model=model)
    with torch.no_grad():
        for xb, _ in digits[1][:2]:
            assert torch.equal(qs["sq"].graph_module(xb), loaded.graph_module(xb))


def test_tune_tries_smoothquant_on_a_post_ln_model_at_trial_2(post_ln_transformer, digits, tmp_path, fx):
    tuner = ilit.Tuner(_conf(tmp_path, "post", 2))
    tuner.tune(post_ln_transformer, q_dataloader=digits[0], eval_dataloader=digits[1])
    plain, sq = tuner.history.trials
    assert "recipes" not in plain.tune_cfg and sq.tune_cfg["recipes"] == {"smooth_quant": {"alpha": 0.5}}
    # the outliers cost plain INT8 top-1 (0.68 against FP32 0.91 here); smoothing recovers part of it
    assert sq.accuracy > plain.accuracy


@pytest.mark.parametrize("backend_name", ["fx", pytest.param("pt2e", marks=needs_torchao)])
def test_a_smoothed_linear_falls_back_to_bf16(backend_name, post_ln_transformer, digits, monkeypatch):
    """The op keeps the Linear's name, so bf16 fallback finds the Linear inside the SmoothedLinear (forced on:
    bf16 runs, slowly, on CPUs without AMX too)."""
    monkeypatch.setenv("ILIT_PYTORCH_BACKEND", backend_name)
    monkeypatch.setenv("ILIT_PYTORCH_BF16", "1")
    model = post_ln_transformer
    adaptor = make_adaptor()
    cfg = {**uniform_cfg(adaptor, model, iterations=4), "recipes": {"smooth_quant": {"alpha": 0.5}}}
    cfg = space_for(adaptor, model).with_fallback(cfg, ["blocks.0.q"], dtype="bf16")
    assert cfg["ops"]["blocks.0.q"]["weight"]["dtype"] == "bf16"
    q = adaptor.quantize(cfg, model, digits[0])
    if backend_name == "fx":
        assert type(q.get_submodule("blocks.0.q.m")).__name__ == "BF16Module"
    else:
        weights = [t for name, t in q.graph_module.state_dict().items() if t.dtype == torch.bfloat16]
        assert weights, "no bf16 weight in the PT2E graph"
    with torch.no_grad():
        x = digits[1][0][0]
        assert bool(torch.isfinite(adaptor._runner(q)(x)).all())
