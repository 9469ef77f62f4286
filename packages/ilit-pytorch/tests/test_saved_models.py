"""A saved model is data: every backend path rebuilds bit for bit from the FP32 model, PT2E's graph literals
included; the recorded recipe is checked; saved bytes (``objective: modelsize``) are one number per model."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from conftest import TinyTransformer, UntraceableNet, make_adaptor, uniform_cfg

import ilit
import ilit_pytorch.adaptor as adaptor_module
from ilit_pytorch import backend
from ilit_pytorch.serialize import META_FILE, STATE_FILE, ModelFileError

needs_torchao = pytest.mark.skipif(backend.pt2e_missing() is not None,
                                   reason="torchao is not installed (pip install 'ilit-pytorch[pt2e]')")


@pytest.fixture(autouse=True)
def _fx(monkeypatch):
    """FX unless a test asks for PT2E: each test names the backend path whose rebuild it checks."""
    monkeypatch.setenv("ILIT_PYTORCH_BACKEND", "fx")


def _runner(model):
    """What to compare: a PT2E model's reference graph (calling the wrapper would compile it)."""
    return model.graph_module if isinstance(model, backend.PT2EModel) else model


def _round_trip(conf, cfg, model, data, tmp_path, q=None):
    """Quantize (unless given), save, load with a fresh adaptor (no cache, as in another process); both models."""
    adaptor = make_adaptor(conf)
    if q is None:
        q = adaptor.quantize(cfg, model, data[0])
    adaptor.save(q, str(tmp_path / "q"))
    assert sorted(p.name for p in (tmp_path / "q").iterdir()) == [META_FILE, STATE_FILE]
    loaded = make_adaptor(conf).load(str(tmp_path / "q"), model=model)
    assert type(loaded).__name__ == type(q).__name__  # GraphModules: a class each
    assert isinstance(loaded, backend.PT2EModel) or not loaded.training
    return q, loaded


def _assert_same_outputs(q, loaded, batches):
    with torch.no_grad():
        for x, _ in batches:
            a, b = _runner(q)(x), _runner(loaded)(x)
            assert torch.equal(a, b), float((a - b).abs().max())


def _assert_same_state(q, loaded):
    want, got = _runner(q).state_dict(), _runner(loaded).state_dict()
    assert list(want) == list(got)
    for k in want:
        a, b = want[k], got[k]
        if isinstance(a, torch.Tensor):
            a = a.int_repr() if a.is_quantized else a
            b = b.int_repr() if b.is_quantized else b
            assert torch.equal(a, b), k


def test_smoothquant_recipe_round_trip_is_exact(outlier_transformer, digits, tmp_path):
    adaptor = make_adaptor()
    cfg = {**uniform_cfg(adaptor, outlier_transformer, iterations=4), "recipes": {"smooth_quant": {"alpha": 0.75}}}
    q, loaded = _round_trip(None, cfg, outlier_transformer, digits, tmp_path)
    # the migrated LayerNorm weights came from the saved state, not from the placeholder migration
    assert not torch.equal(loaded.get_submodule("blocks.0.ln1").weight, outlier_transformer.blocks[0].ln1.weight)
    _assert_same_state(q, loaded)
    _assert_same_outputs(q, loaded, digits[1][:4])


@pytest.mark.parametrize("approach", ["post_training_static_quant", "post_training_dynamic_quant"])
def test_int8_embeddings_round_trip_is_exact(approach, digits, tmp_path):
    from test_embeddings import _model, _tokens

    model = _model(digits)
    data = (_tokens(digits[0]), _tokens(digits[1]))
    conf = {"quantization": {"approach": approach}}
    adaptor = make_adaptor(conf)
    cfg = uniform_cfg(adaptor, model, activation={"algorithm": "minmax"}, fallback=["bag"])
    q, loaded = _round_trip(conf, cfg, model, data, tmp_path)
    assert isinstance(loaded.emb, torch.ao.nn.quantized.Embedding) and type(loaded.bag) is torch.nn.EmbeddingBag
    _assert_same_state(q, loaded)
    _assert_same_outputs(q, loaded, data[1][:4])


def test_split_model_dynamic_linear_fallback_round_trip_is_exact(digits, tmp_path, monkeypatch):
    """A split model whose FX-quantized parts fail to run falls back to dynamic Linears; load takes that path too."""
    torch.manual_seed(0)
    model = UntraceableNet().eval()
    adaptor = make_adaptor()
    real = adaptor_module.call_model

    def fails_once(m, inputs):
        monkeypatch.setattr(adaptor_module, "call_model", real)
        raise RuntimeError("the split model does not run")
    monkeypatch.setattr(adaptor_module, "call_model", fails_once)
    q = adaptor.quantize(uniform_cfg(adaptor, model), model, digits[0])
    assert q._ilit_build["how"] == "dynamic-linear"
    assert any(isinstance(m, torch.ao.nn.quantized.dynamic.Linear) for m in q.modules())
    q, loaded = _round_trip(None, None, model, digits, tmp_path, q=q)
    _assert_same_outputs(q, loaded, digits[1][:4])


@pytest.mark.parametrize("backend_name", ["fx", pytest.param("pt2e", marks=needs_torchao)])
def test_keyword_inputs_round_trip_is_exact(backend_name, digits, tmp_path, monkeypatch):
    """PT2E exports again on zeros of the recorded keyword inputs' shapes."""
    from test_inputs import KeywordModel

    monkeypatch.setenv("ILIT_PYTORCH_BACKEND", backend_name)
    torch.manual_seed(0)
    model = KeywordModel().eval()
    data = [[({"pixels": x.flatten(1), "mask": torch.ones(x.shape[0], 64)}, y) for x, y in d] for d in digits]
    adaptor = make_adaptor()
    q, loaded = _round_trip(None, uniform_cfg(adaptor, model), model, data, tmp_path)
    assert isinstance(q, backend.PT2EModel) == (backend_name == "pt2e")
    if backend_name == "pt2e":
        inputs = json.loads((tmp_path / "q" / META_FILE).read_text())["build"]["inputs"]
        assert [k for k, _ in inputs["kwargs"]] == ["pixels", "mask"] and inputs["args"] == []
    with torch.no_grad():
        for x, _ in data[1][:3]:
            assert torch.equal(_runner(q)(**x), _runner(loaded)(**x))


def test_load_without_the_fp32_model_says_what_to_pass(trained_cnn, digits, tmp_path):
    adaptor = make_adaptor()
    adaptor.save(adaptor.quantize(uniform_cfg(adaptor, trained_cnn), trained_cnn, digits[0]), str(tmp_path / "q"))
    for call in (lambda: adaptor.load(str(tmp_path / "q")), lambda: ilit.load(str(tmp_path / "q"))):
        with pytest.raises(ValueError, match=r"pass the FP32 model .*load\(path, model=fp32_model\)"):
            call()
    assert ilit.load(str(tmp_path / "q"), model=trained_cnn) is not None


def test_a_recipe_naming_ops_the_model_lacks_is_refused(trained_cnn, digits, tmp_path):
    adaptor = make_adaptor()
    adaptor.save(adaptor.quantize(uniform_cfg(adaptor, trained_cnn), trained_cnn, digits[0]), str(tmp_path / "q"))
    meta = json.loads((tmp_path / "q" / META_FILE).read_text())
    meta["build"]["tune_cfg"]["ops"]["no.such\nop"] = {"op_type": "Linear"}
    (tmp_path / "q" / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(ModelFileError, match=r"does not have, e.g. no.such\\nop"):
        adaptor.load(str(tmp_path / "q"), model=trained_cnn)


# ----------------------------------------------------------------------------- PT2E
@needs_torchao
@pytest.mark.parametrize("algorithm, granularity", [("minmax", "per_channel"), ("kl", "per_channel"),
                                                    ("kl", "per_tensor")])
def test_pt2e_round_trip_restores_the_baked_activation_qparams(algorithm, granularity, digits, tmp_path,
                                                                monkeypatch):
    monkeypatch.setenv("ILIT_PYTORCH_BACKEND", "pt2e")
    torch.manual_seed(0)
    model = TinyTransformer().eval()
    adaptor = make_adaptor()
    cfg = uniform_cfg(adaptor, model, weight={"granularity": granularity}, activation={"algorithm": algorithm},
                      fallback=["head"])
    q, loaded = _round_trip(None, cfg, model, digits, tmp_path)
    assert isinstance(loaded, backend.PT2EModel) and loaded._compiled is None
    # the graph literals (activation scales, zero points) are the tuned ones, not the rebuild's placeholders
    build = json.loads((tmp_path / "q" / META_FILE).read_text())["build"]
    assert build["how"] == "pt2e" and len(build["qparams"]) > 0
    assert all(s != 1.0 for s, _ in build["qparams"])  # 1.0 is an uncalibrated observer's scale
    assert loaded.graph_module.code == q.graph_module.code
    _assert_same_state(q, loaded)
    _assert_same_outputs(q, loaded, digits[1][:4])


@needs_torchao
def test_export_torchscript_refuses_a_pt2e_model_and_says_how_to_deploy_it(digits, tmp_path, monkeypatch):
    from ilit_pytorch import export_torchscript

    monkeypatch.setenv("ILIT_PYTORCH_BACKEND", "pt2e")
    torch.manual_seed(0)
    model = TinyTransformer().eval()
    adaptor = make_adaptor()
    q = adaptor.quantize(uniform_cfg(adaptor, model), model, digits[0])
    with pytest.raises(TypeError, match="torch.export.save"):
        export_torchscript(q, str(tmp_path / "q.pt"), example=digits[1][0][0])
    assert q._compiled is None and not (tmp_path / "q.pt").exists()


@needs_torchao
def test_pt2e_smoothquant_round_trip_is_exact(outlier_transformer, digits, tmp_path, monkeypatch):
    monkeypatch.setenv("ILIT_PYTORCH_BACKEND", "pt2e")
    adaptor = make_adaptor()
    cfg = {**uniform_cfg(adaptor, outlier_transformer, iterations=4), "recipes": {"smooth_quant": {"alpha": 0.5}}}
    q, loaded = _round_trip(None, cfg, outlier_transformer, digits, tmp_path)
    assert isinstance(q, backend.PT2EModel) and loaded.graph_module.code == q.graph_module.code
    _assert_same_outputs(q, loaded, digits[1][:4])


@needs_torchao
@pytest.mark.parametrize("edit, match", [
    (lambda b: b["qparams"].pop(), "do not match"),
    (lambda b: b["qparams"][0].__setitem__(0, -1.0), "scale > 0"),
    (lambda b: b["inputs"]["args"][0].__setitem__("tensor", [1 << 20, 1 << 20]), "elements"),
    (lambda b: b["inputs"]["args"][0].__setitem__("dtype", "os.system"), "dtype"),
])
def test_pt2e_recipe_edits_are_refused(edit, match, digits, tmp_path, monkeypatch):
    monkeypatch.setenv("ILIT_PYTORCH_BACKEND", "pt2e")
    torch.manual_seed(0)
    model = TinyTransformer().eval()
    adaptor = make_adaptor()
    adaptor.save(adaptor.quantize(uniform_cfg(adaptor, model), model, digits[0]), str(tmp_path / "q"))
    meta = json.loads((tmp_path / "q" / META_FILE).read_text())
    edit(meta["build"])
    (tmp_path / "q" / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(ModelFileError, match=match):
        make_adaptor().load(str(tmp_path / "q"), model=model)


# ----------------------------------------------------------------------------- determinism (objective: modelsize)
@pytest.mark.parametrize("backend_name", ["fx", pytest.param("pt2e", marks=needs_torchao)])
def test_saving_and_reloading_gives_the_same_bytes(backend_name, digits, tmp_path, monkeypatch):
    """The issue's case: saving one model 4 times gave 2 sizes (TorchScript's ``___torch_mangle_N`` names)."""
    monkeypatch.setenv("ILIT_PYTORCH_BACKEND", backend_name)
    torch.manual_seed(0)
    model = TinyTransformer().eval()
    adaptor = make_adaptor()
    q = adaptor.quantize(uniform_cfg(adaptor, model), model, digits[0])
    blobs = []
    for i in range(4):
        adaptor.save(q if i % 2 else copy.deepcopy(q), str(tmp_path / str(i)))
        blobs.append(b"".join(p.read_bytes() for p in sorted((tmp_path / str(i)).iterdir())))
    loaded = make_adaptor().load(str(tmp_path / "0"), model=model)  # saved again after a load: the same bytes
    adaptor.save(loaded, str(tmp_path / "again"))
    blobs.append(b"".join(p.read_bytes() for p in sorted((tmp_path / "again").iterdir())))
    assert len(set(blobs)) == 1


def _size_conf(tmp_path, ws, max_trials):
    return {"framework": {"name": "pytorch"}, "calibration": {"iterations": [2]},
            "quantization": {"approach": "post_training_static_quant",
                             "activation": {"algorithm": ["minmax", "kl"]}},
            "tuning": {"strategy": "basic", "metric": {"topk": 1}, "accuracy_criterion": {"relative": 0.5},
                       "objective": "modelsize", "timeout": 60, "max_trials": max_trials,
                       "workspace": {"path": str(tmp_path / ws)}}}


def test_resume_under_modelsize_measures_and_chooses_as_one_run(trained_cnn, digits, tmp_path):
    """Stopped after 2 trials and resumed in new tuners, the run measures each trial's size as the uninterrupted
    run did, and ends with the same best trial and the same saved model."""
    whole = ilit.Tuner(_size_conf(tmp_path, "whole", 4))
    whole.tune(trained_cnn, q_dataloader=digits[0], eval_dataloader=digits[1])
    first = ilit.Tuner(_size_conf(tmp_path, "part", 2))
    first.tune(trained_cnn, q_dataloader=digits[0], eval_dataloader=digits[1])
    rest = ilit.Tuner(_size_conf(tmp_path, "rest", 4))
    rest.tune(trained_cnn, q_dataloader=digits[0], eval_dataloader=digits[1], resume_file=first.history_path)
    got = [(t.tune_cfg, t.objective) for t in rest.history.trials]
    want = [(t.tune_cfg, t.objective) for t in whole.history.trials]
    assert len(want) == 4 and got == want
    assert rest.best_trial is not None and rest.best_trial.trial == whole.best_trial.trial
    files = {ws: b"".join(p.read_bytes() for p in sorted((tmp_path / ws / "best_model").iterdir()))
             for ws in ("whole", "rest")}
    assert files["whole"] == files["rest"]


@needs_torchao
def test_loading_a_pt2e_model_without_torchao_says_what_to_install(digits, tmp_path, monkeypatch):
    monkeypatch.setenv("ILIT_PYTORCH_BACKEND", "pt2e")
    torch.manual_seed(0)
    model = TinyTransformer().eval()
    adaptor = make_adaptor()
    adaptor.save(adaptor.quantize(uniform_cfg(adaptor, model), model, digits[0]), str(tmp_path / "q"))
    monkeypatch.setenv("ILIT_PYTORCH_BACKEND", "fx")  # the recorded build decides, not the environment
    monkeypatch.setattr(backend, "pt2e_missing", lambda: "torchao is not importable (test)")
    with pytest.raises(ImportError, match="PT2E backend; loading it needs torchao: torchao is not importable"):
        make_adaptor().load(str(tmp_path / "q"), model=model)
