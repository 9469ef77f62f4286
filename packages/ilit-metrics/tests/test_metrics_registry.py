"""The metrics by their YAML names: through ilit-core's entry-point registry and a real ilit.Tuner run."""

import subprocess
import sys

import numpy as np
import pytest
from sklearn.metrics import f1_score, log_loss, top_k_accuracy_score

import ilit
import ilit_metrics
from ilit import registry

NAMES = {"topk": (ilit_metrics.Topk, True), "accuracy": (ilit_metrics.Accuracy, True),
         "loss": (ilit_metrics.Loss, False), "mae": (ilit_metrics.MAE, False), "mse": (ilit_metrics.MSE, False),
         "rmse": (ilit_metrics.RMSE, False), "f1": (ilit_metrics.F1, True),
         "squad_f1": (ilit_metrics.SquadF1, True), "cocomap": (ilit_metrics.CocoMAP, True)}


def test_every_metric_is_registered_under_its_yaml_name():
    assert set(NAMES) <= set(registry.installed("metric"))
    for name, (cls, higher) in NAMES.items():
        loaded = registry.load("metric", name)
        assert loaded is cls and issubclass(loaded, ilit.Metric) and loaded.higher_is_better is higher
        assert registry.load("metric", name.upper()) is cls  # names are case-insensitive


def test_topk_by_name_through_the_registry():
    rng = np.random.default_rng(5)
    scores, labels = rng.normal(size=(300, 10)), rng.integers(0, 10, 300)
    metric = registry.load("metric", "topk")(5)  # what `tuning.metric: {topk: 5}` builds
    for i in range(0, 300, 64):
        metric.update(scores[i:i + 64], labels[i:i + 64])
    assert metric.result() == top_k_accuracy_score(labels, scores, k=5, labels=np.arange(10))


def test_yaml_arguments_build_each_metric():
    # the Tuner builds cls(scalar), cls(**mapping) or cls()
    assert registry.load("metric", "topk")(5).k == 5
    assert registry.load("metric", "f1")(**{"average": "macro"}).average == "macro"
    assert registry.load("metric", "loss")(**{"from_logits": True}).from_logits is True
    m = registry.load("metric", "cocomap")(**{"iou_thresholds": [0.5, 0.75], "box_format": "xywh"})
    assert m.iou_thresholds.tolist() == [0.5, 0.75] and m.box_format == "xywh"


def test_importing_the_package_loads_no_framework_and_no_pycocotools():
    code = ("import sys, ilit_metrics; from ilit import registry; "
            "[registry.load('metric', n) for n in " + repr(sorted(NAMES)) + "]; "
            "bad = [m for m in sys.modules if m.split('.')[0] in "
            "('torch', 'tensorflow', 'keras', 'mxnet', 'sklearn', 'scipy', 'pycocotools', 'matplotlib')]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------------- a real tuning run (toy adaptor)
# the toy adaptor plugin, installed from packages/ilit-toy
import ilit_toy as toy  # noqa: E402


def conf(metric, tmp_path, relative=0.02):
    """A small space over the toy adaptor: 4 model-wise configs, then per-op fallbacks."""
    return {"framework": {"name": "toy"},
            "calibration": {"iterations": [2], "algorithm": {"activation": "minmax"}},
            "quantization": {"weight": {"granularity": ["per_channel", "per_tensor"], "scheme": ["sym", "asym"]},
                             "activation": {"dtype": "uint8", "scheme": "asym"}},
            "tuning": {"metric": metric, "accuracy_criterion": {"relative": relative}, "max_trials": 12,
                       "objective": "modelsize", "workspace": {"path": str(tmp_path / "ws")}}}


def outputs(model, data):
    return np.concatenate([model(x) for x, _ in data]).astype(np.float64), np.concatenate([y for _, y in data])


def tune(metric, tmp_path, fragile=(2,)):
    model = toy.make_model(n_layers=4, fragile=fragile, seed=3)
    data = toy.make_dataset(model)
    tuner = ilit.Tuner(conf(metric, tmp_path) if not isinstance(metric, str) else metric)
    q_model = tuner.tune(model, data, eval_dataloader=data)
    assert tuner.history.trials, "the run tried no config"
    return tuner, model, data, q_model


def check_trials(tuner, model, data, reference):
    """The baseline and every trial's accuracy are the reference metric on that model's outputs: the
    trials' models are rebuilt from their recorded tune_cfg with the same adaptor."""
    assert tuner.baseline_accuracy == pytest.approx(reference(*outputs(model, data)), rel=1e-12, abs=1e-15)
    for trial in tuner.history.trials:
        q = tuner.adaptor.quantize(trial.tune_cfg, model, data)
        assert trial.accuracy == pytest.approx(reference(*outputs(q, data)), rel=1e-12, abs=1e-15)


def argmax_accuracy(scores, labels):
    """Top-1 accuracy by hand: numpy's argmax, the first maximum."""
    return float(np.mean(scores.argmax(1) == labels))


def test_tuner_run_with_topk(tmp_path):
    tuner, model, data, q_model = tune({"topk": 1}, tmp_path)
    check_trials(tuner, model, data, argmax_accuracy)
    assert tuner.history.metric_higher_is_better is True
    assert any(t.meets for t in tuner.history.trials) == (q_model is not None)


def test_tuner_topk_1_equals_argmax_on_tied_int8_scores(tmp_path):
    """Classes 0 and 3 get the same last-layer column, so the toy's integer INT8 kernel scores them exactly
    alike on every row: inside tune, topk: 1 must still be the by-hand argmax (the lower class id wins)."""
    original = toy.make_model(n_layers=4, seed=3)
    data = toy.make_dataset(original)  # labels from the untied model: classes 0 and 3 both occur
    model = toy.make_model(n_layers=4, seed=3)
    last = model.layers[-1]
    last.W[:, 3], last.b[3] = last.W[:, 0], last.b[0]
    tuner = ilit.Tuner(conf({"topk": 1}, tmp_path, relative=0.5))
    tuner.tune(model, data, eval_dataloader=data)
    check_trials(tuner, model, data, argmax_accuracy)
    tied_and_decisive, sklearn_differs = 0, 0
    for trial in tuner.history.trials:
        scores, labels = outputs(tuner.adaptor.quantize(trial.tune_cfg, model, data), data)
        top = scores.max(1)
        tied = (scores[:, 0] == top) & (scores[:, 3] == top)
        tied_and_decisive += int(np.count_nonzero(tied & np.isin(labels, [0, 3])))
        # scikit-learn's rule (the higher class id wins a tie), which topk followed before, scores them differently
        sklearn_differs += trial.accuracy != top_k_accuracy_score(labels, scores, k=1, labels=np.arange(4))
    assert tied_and_decisive > 0 and sklearn_differs > 0, "no decisive INT8 tie: the test would not test the rule"


def test_tuner_run_with_lower_is_better_loss(tmp_path):
    tuner, model, data, _ = tune({"loss": {"from_logits": True}}, tmp_path)

    def reference(logits, labels):
        e = np.exp(logits - logits.max(1, keepdims=True))
        return log_loss(labels, e / e.sum(1, keepdims=True), labels=np.arange(logits.shape[1]))

    check_trials(tuner, model, data, reference)
    assert tuner.history.metric_higher_is_better is False
    limit = tuner.baseline_accuracy * 1.02  # a lower loss is better: the goal is loss <= baseline * (1 + 2%)
    for trial in tuner.history.trials:
        assert trial.meets == (trial.accuracy <= limit + 1e-12)


def test_tuner_run_with_macro_f1_from_a_yaml_file(tmp_path):
    path = tmp_path / "conf.yaml"
    path.write_text("framework: {name: toy}\n"
                    "calibration: {iterations: [2], algorithm: {activation: minmax}}\n"
                    "tuning:\n"
                    "  metric: {f1: {average: macro}}\n"
                    "  accuracy_criterion: {relative: 0.02}\n"
                    "  max_trials: 6\n"
                    "  objective: modelsize\n"
                    f"  workspace: {{path: '{tmp_path / 'ws'}'}}\n")
    tuner, model, data, _ = tune(str(path), tmp_path, fragile=())
    check_trials(tuner, model, data, lambda s, y: f1_score(y, s.argmax(1), average="macro"))


def test_tuner_reports_bad_metric_arguments(tmp_path):
    model = toy.make_model()
    data = toy.make_dataset(model)
    with pytest.raises(ilit.ConfigError, match="tuning.metric.topk: the topk metric does not take"):
        ilit.Tuner(conf({"topk": {"kk": 5}}, tmp_path)).tune(model, data, eval_dataloader=data)
