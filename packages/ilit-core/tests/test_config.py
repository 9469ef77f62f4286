"""The YAML config: validation into typed objects, defaults, and errors naming the key path."""

import os

import pytest
import yaml

import ilit
from ilit.config import parse_config

TEMPLATE = os.path.join(os.path.dirname(ilit.__file__), "template.yaml")


def test_template_loads_and_covers_every_section():
    c = ilit.load_config(TEMPLATE)
    assert c.framework.name == "pytorch"
    assert c.calibration.iterations == (10, 50)
    assert c.quantization.activation.algorithm == ("minmax", "kl", "percentile")
    assert c.quantization.weight.granularity == ("per_channel", "per_tensor")
    assert c.tuning.metric == ("topk", 1)
    assert c.tuning.accuracy_criterion.relative == 0.01
    assert c.tuning.objective == "performance" and c.tuning.timeout == 0 and c.tuning.max_trials == 100
    assert c.tuning.workspace_path == "./ilit_workspace"


def test_defaults_for_an_empty_config():
    c = parse_config({})
    assert c.framework.name is None
    assert c.quantization.approach == "post_training_static_quant"
    assert c.quantization.weight.scheme is None  # None = all the adaptor supports
    assert c.tuning.strategy == "basic" and c.tuning.random_seed == 1978
    assert c.tuning.accuracy_criterion.relative == 0.01


def test_tuner_accepts_a_path_or_a_dict(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump({"tuning": {"accuracy_criterion": {"absolute": 0.5}}}))
    assert ilit.Tuner(str(p)).config.tuning.accuracy_criterion.absolute == 0.5
    assert ilit.Tuner({"tuning": {"timeout": 3}}).config.tuning.timeout == 3.0


def test_config_error_is_a_value_error_naming_the_key_path():
    with pytest.raises(ValueError) as e:
        parse_config({"tuning": {"accuracy_criterion": {"relative": 0.01, "absolute": 0.1}}})
    assert isinstance(e.value, ilit.ConfigError)
    assert str(e.value) == "tuning.accuracy_criterion: give exactly one of 'relative' or 'absolute'"


@pytest.mark.parametrize("data, path", [
    ({"tunning": {}}, "tunning"),
    ({"tuning": {"max_trial": 3}}, "tuning.max_trial"),
    ({"quantization": {"weight": {"granularty": "per_tensor"}}}, "quantization.weight.granularty"),
    ({"tuning": {"workspace": {"resume": "x"}}}, "tuning.workspace.resume"),
])
def test_unknown_keys_are_errors(data, path):
    with pytest.raises(ilit.ConfigError, match="unknown key") as e:
        parse_config(data)
    assert str(e.value).startswith(path + ":")


@pytest.mark.parametrize("data, path, expected", [
    ({"quantization": {"weight": {"scheme": "symmetric"}}}, "quantization.weight.scheme", "'sym', 'asym'"),
    ({"quantization": {"approach": "ptq"}}, "quantization.approach", "post_training_static_quant"),
    ({"calibration": {"algorithm": {"activation": ["minmax", "entropy"]}}}, "calibration.algorithm.activation", "'kl'"),
    ({"calibration": {"iterations": 0}}, "calibration.iterations", ">= 1"),
    ({"tuning": {"accuracy_criterion": {"relative": 1.5}}}, "tuning.accuracy_criterion.relative", "fraction"),
    ({"tuning": {"max_trials": -1}}, "tuning.max_trials", "integer"),
    ({"tuning": {"timeout": "soon"}}, "tuning.timeout", "number"),
    ({"tuning": {"metric": {"topk": 1, "f1": None}}}, "tuning.metric", "one-key mapping"),
    ({"device": "gpu"}, "device", "cpu"),
    ({"tuning": {"ops": {"fc": {"activation": {"dtype": ["fp32", "uint8"]}}}}}, "tuning.ops.fc", "alone"),
])
def test_bad_values_name_path_and_expectation(data, path, expected):
    with pytest.raises(ilit.ConfigError) as e:
        parse_config(data)
    assert str(e.value).startswith(path + ":")
    assert expected in str(e.value)


def test_single_values_and_seed_iteration_string_are_normalized():
    c = parse_config({"calibration": {"iterations": "10, 50", "algorithm": {"activation": "kl"}},
                      "quantization": {"weight": {"scheme": "sym"}}})
    assert c.calibration.iterations == (10, 50)
    assert c.quantization.activation.algorithm == ("kl",)
    assert c.quantization.weight.scheme == ("sym",)


def test_op_override_with_fp32_forces_fallback():
    c = parse_config({"tuning": {"ops": {"fc": {"activation": {"dtype": "fp32"}}}}})
    assert c.tuning.ops["fc"].fallback


def test_missing_or_invalid_yaml_file(tmp_path):
    with pytest.raises(ilit.ConfigError, match="does not exist"):
        ilit.load_config(str(tmp_path / "nope.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("tuning: [unclosed")
    with pytest.raises(ilit.ConfigError, match="not valid YAML"):
        ilit.load_config(str(bad))


def test_criterion_threshold_both_directions():
    rel = parse_config({"tuning": {"accuracy_criterion": {"relative": 0.1}}}).tuning.accuracy_criterion
    assert rel.met(0.9, 1.0) and not rel.met(0.89, 1.0)
    assert rel.met(1.1, 1.0, higher_is_better=False) and not rel.met(1.11, 1.0, higher_is_better=False)
    ab = parse_config({"tuning": {"accuracy_criterion": {"absolute": 0.05}}}).tuning.accuracy_criterion
    assert ab.met(0.75, 0.8) and not ab.met(0.74, 0.8)


def test_search_fingerprint_ignores_stop_rules_only():
    a = parse_config({"tuning": {"timeout": 0, "max_trials": 5, "workspace": {"path": "a"}}})
    b = parse_config({"tuning": {"timeout": 60, "max_trials": 50, "workspace": {"path": "b"}}})
    c = parse_config({"tuning": {"random_seed": 7}})
    assert a.search_fingerprint() == b.search_fingerprint()
    assert a.search_fingerprint() != c.search_fingerprint()
