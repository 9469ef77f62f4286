"""Bad configurations: each is an ilit.ConfigError naming the key path, what was given and what is allowed."""

import os
import re

import pytest

import ilit

TEMPLATE = os.path.join(os.path.dirname(ilit.__file__), "template.yaml")


def error_for(source):
    """The ConfigError Tuner(source) raises; any other exception fails the test."""
    with pytest.raises(ilit.ConfigError) as e:
        ilit.Tuner(source)
    return e.value


def write(tmp_path, text, name="c.yaml", mode="w"):
    p = tmp_path / name
    if mode == "wb":
        p.write_bytes(text)
    else:
        p.write_text(text)
    return str(p)


def test_yaml_syntax_error_names_the_line(tmp_path):
    path = write(tmp_path, "framework:\n  name: toy\ntuning:\n  timeout: [1, 2\n  max_trials: 3\n")
    msg = str(error_for(path))
    assert "not valid YAML at line 5" in msg and path in msg
    bad_indent = write(tmp_path, "tuning:\n  timeout: 1\n    max_trials: 3\n", "b.yaml")
    assert "at line 3" in str(error_for(bad_indent))


def test_empty_file_and_files_that_are_no_yaml_config(tmp_path):
    assert "is empty" in str(error_for(write(tmp_path, "")))
    assert "is empty" in str(error_for(write(tmp_path, "# only a comment\n", "comment.yaml")))
    assert "not UTF-8" in str(error_for(write(tmp_path, b"\x80\x81\xfe tuning: 1", "bin.yaml", "wb")))
    assert "is not a file" in str(error_for(str(tmp_path)))
    assert "does not exist" in str(error_for(str(tmp_path / "missing.yaml")))
    top = str(error_for(write(tmp_path, "- framework\n- tuning\n", "list.yaml")))
    assert "a config is a mapping with the sections framework, device" in top and "got list" in top
    assert "got int" in str(error_for(42))


def test_python_tags_are_refused_and_never_run(tmp_path):
    marker = tmp_path / "ran"
    path = write(tmp_path, f"tuning: !!python/object/apply:os.system ['touch {marker}']\n")
    assert "not valid YAML" in str(error_for(path))
    assert not marker.exists()


@pytest.mark.parametrize("data, path, given, allowed", [
    ({"framework": "toy"}, "framework", "'toy'", "a mapping"),
    ({"framework": {"name": 3}}, "framework.name", "3", "adaptor name"),
    ({"framework": {"inputs": {"x": 1}}}, "framework.inputs", "{'x': 1}", "list of names"),
    ({"calibration": {"iterations": [10, 2.5]}}, "calibration.iterations", "2.5", "integer >= 1"),
    ({"calibration": {"iterations": True}}, "calibration.iterations", "True", "positive batch count"),
    ({"quantization": {"weight": {"dtype": 8}}}, "quantization.weight.dtype", "8", "'int8', 'uint8'"),
    ({"quantization": {"weight": {"scheme": []}}}, "quantization.weight.scheme", "[]", "non-empty list"),
    ({"quantization": {"weight": {"scheme": [["sym"]]}}}, "quantization.weight.scheme", "['sym']", "'asym'"),
    ({"tuning": {"timeout": "1h"}}, "tuning.timeout", "'1h'", "finite number >= 0"),
    ({"tuning": {"timeout": True}}, "tuning.timeout", "True", "finite number"),
    ({"tuning": {"max_trials": 2.0}}, "tuning.max_trials", "2.0", "integer >= 1"),
    ({"tuning": {"random_seed": "x"}}, "tuning.random_seed", "'x'", "integer from 0"),
    ({"tuning": {"strategy": ["basic"]}}, "tuning.strategy", "['basic']", "strategy name"),
    ({"tuning": {"objective": {"performance": 1}}}, "tuning.objective", "{'performance': 1}", "performance"),
    ({"tuning": {"metric": ["toy_accuracy"]}}, "tuning.metric", "['toy_accuracy']", "one-key mapping"),
    ({"tuning": {"workspace": {"path": 5}}}, "tuning.workspace.path", "5", "directory path"),
    ({"tuning": {"workspace": {"path": " "}}}, "tuning.workspace.path", "' '", "directory path"),
    ({"tuning": {"ops": ["fc1"]}}, "tuning.ops", "['fc1']", "a mapping"),
    ({"tuning": {"accuracy_criterion": 0.01}}, "tuning.accuracy_criterion", "0.01", "a mapping"),
])
def test_wrong_types(data, path, given, allowed):
    msg = str(error_for(data))
    assert msg.startswith(path + ":"), msg
    assert given in msg and allowed in msg, msg


@pytest.mark.parametrize("data, path, given", [
    ({"tuning": {"timeout": -1}}, "tuning.timeout", "-1"),
    ({"tuning": {"timeout": float("nan")}}, "tuning.timeout", "nan"),
    ({"tuning": {"timeout": float("inf")}}, "tuning.timeout", "inf"),
    ({"tuning": {"max_trials": 0}}, "tuning.max_trials", "0"),
    ({"tuning": {"random_seed": -5}}, "tuning.random_seed", "-5"),
    ({"tuning": {"random_seed": 2**32}}, "tuning.random_seed", str(2**32)),
    ({"tuning": {"accuracy_criterion": {"relative": 1}}}, "tuning.accuracy_criterion.relative", "1"),
    ({"tuning": {"accuracy_criterion": {"relative": 1.5}}}, "tuning.accuracy_criterion.relative", "1.5"),
    ({"tuning": {"accuracy_criterion": {"relative": -0.01}}}, "tuning.accuracy_criterion.relative", "-0.01"),
    ({"tuning": {"accuracy_criterion": {"relative": float("nan")}}}, "tuning.accuracy_criterion.relative", "nan"),
    ({"tuning": {"accuracy_criterion": {"absolute": -1}}}, "tuning.accuracy_criterion.absolute", "-1"),
    ({"calibration": {"iterations": [0]}}, "calibration.iterations", "0"),
])
def test_out_of_range_numbers(data, path, given):
    msg = str(error_for(data))
    assert msg.startswith(path + ":") and given in msg, msg


def test_out_of_range_numbers_from_yaml_text(tmp_path):
    msg = str(error_for(write(tmp_path, "tuning:\n  timeout: .nan\n")))
    assert msg.startswith("tuning.timeout:") and "finite" in msg


@pytest.mark.parametrize("data, path, hint", [
    ({"tuning": {"accuracy_criterion": {"relative": 0.01, "absolute": 0.1}}}, "tuning.accuracy_criterion",
     "exactly one"),
    ({"tuning": {"accuracy_criterion": {"relative": None}}}, "tuning.accuracy_criterion", "exactly one"),
    ({"calibration": {"algorithm": {"activation": "kl"}}, "quantization": {"activation": {"algorithm": "minmax"}}},
     "quantization.activation.algorithm", "set it in one place"),
    ({"quantization": {"approach": "post_training_dynamic_quant"}, "calibration": {"algorithm": {"activation": "kl"}}},
     "calibration.algorithm.activation", "run time"),
    ({"quantization": {"weight": {"dtype": "fp32"}}}, "quantization.weight.dtype", "nothing to quantize"),
    ({"tuning": {"ops": {"fc": {"weight": {"dtype": "fp32"}, "activation": {"dtype": "uint8"}}}}}, "tuning.ops.fc",
     "as a whole"),
    ({"tuning": {"ops": {"fc": {"weight": {"dtype": ["fp32", "int8"]}}}}}, "tuning.ops.fc", "alone"),
])
def test_conflicting_options(data, path, hint):
    msg = str(error_for(data))
    assert msg.startswith(path + ":") and hint in msg, msg


@pytest.mark.parametrize("data, path, installed", [
    ({"tuning": {"strategy": "annealing"}}, "tuning.strategy", "basic, bayesian, mse"),
    ({"tuning": {"objective": "speed"}}, "tuning.objective", "footprint, modelsize, performance"),
    ({"tuning": {"metric": {"top1": None}}}, "tuning.metric", "toy_accuracy"),
    ({"framework": {"name": "onnxruntime"}}, "framework.name", "toy"),
])
def test_unknown_plugin_names_list_the_installed_ones(data, path, installed):
    err = error_for(data)
    assert isinstance(err, ilit.PluginNotFoundError)
    listed = re.search(r"\(installed: ([^)]*)\)", str(err)).group(1).split(", ")
    assert str(err).startswith(path + ":") and set(installed.split(", ")) <= set(listed)
    assert "did you mean" in str(err) or "entry-point group" in str(err), str(err)


@pytest.mark.parametrize("data, suggestion, command", [
    ({"tuning": {"metric": {"top1": None}}}, "'topk'", "pip install ilit-metrics"),
    ({"tuning": {"metric": {"topkk": None}}}, "'topk'", "pip install ilit-metrics"),
    ({"framework": {"name": "torch"}}, "'pytorch'", "pip install torch==2.13.0"),
    ({"framework": {"name": "tf"}}, "'tensorflow'", "pip install 'ilit-tensorflow[tensorflow]'"),
    ({"framework": {"name": "keras"}}, "'tensorflow'", "pip install 'ilit-tensorflow[tensorflow]'"),
    ({"tuning": {"strategy": "bayes"}}, "'bayesian'", None),
])
def test_unknown_plugin_names_suggest_the_real_name_and_a_real_package(data, suggestion, command):
    msg = str(error_for(data))
    assert f"did you mean {suggestion}" in msg or f"did you mean {suggestion} or" in msg, msg
    if command:
        assert command in msg, msg
    assert "ilit-torch" not in msg and "ilit-tf" not in msg and "ilit-keras" not in msg, msg


def test_metric_arguments_the_metric_does_not_take():
    msg = str(error_for({"tuning": {"metric": {"toy_accuracy": {"k": 5}}}}))
    assert msg.startswith("tuning.metric.toy_accuracy:") and "does not take" in msg


def test_unknown_keys_list_the_allowed_ones():
    msg = str(error_for({"tuning": {"max_trial": 3}}))
    assert msg.startswith("tuning.max_trial: unknown key") and "max_trials" in msg


def test_huge_or_deep_documents_are_refused(tmp_path):
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
        for p, c in zip("abcdefgh", "bcdefghi"))
    assert "too large" in str(error_for(write(tmp_path, "tuning:\n  metric:\n    toy_accuracy: null\n" + bomb)))
    deep = {"tuning": {"metric": {"toy_accuracy": None}}}
    d = deep["tuning"]
    for _ in range(60):
        d["x"] = {}
        d = d["x"]
    assert "nested more than" in str(error_for(deep))


def test_the_template_still_loads():
    conf = ilit.load_config(TEMPLATE)  # Tuner() would ask for the pytorch adaptor, not installed here
    assert conf.framework.name == "pytorch"
