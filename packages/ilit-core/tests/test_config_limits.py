"""Issue 17 §2 and §6: config files bounded before and while parsing; values that used to escape ConfigError
or were silently changed (huge numbers, duplicate keys, colliding keys, sets, bytes, numpy scalars)."""

import os

import numpy as np
import pytest
import yaml

import ilit
from ilit import ConfigError, load_config
from ilit.config import MAX_CONFIG_BYTES


def _write(tmp_path, text, name="c.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


@pytest.fixture
def parser_calls(monkeypatch):
    """Records whether PyYAML composed (parsed) or constructed (built Python objects from) a document."""
    calls = []
    compose, construct = yaml.SafeLoader.get_single_node, yaml.SafeLoader.construct_document
    monkeypatch.setattr(yaml.SafeLoader, "get_single_node", lambda self: (calls.append("compose"), compose(self))[1])
    monkeypatch.setattr(yaml.SafeLoader, "construct_document",
                        lambda self, node: (calls.append("construct"), construct(self, node))[1])
    return calls


def test_an_oversized_config_file_is_refused_by_size_before_parsing(tmp_path, parser_calls):
    path = tmp_path / "big.yaml"
    with open(path, "w") as f:  # the 5 MB list under calibration.iterations
        f.write("calibration:\n  iterations: [" + "1, " * (5 << 20 >> 2) + "1]\n")
    assert os.path.getsize(path) > MAX_CONFIG_BYTES
    with pytest.raises(ConfigError, match="bytes"):
        load_config(str(path))
    assert parser_calls == []


def test_parser_work_is_bounded_by_node_count_before_objects_are_built(tmp_path, parser_calls):
    text = "calibration:\n  iterations: [" + "1," * 200_000 + "1]\n"  # under the size limit, too many values
    assert len(text) < MAX_CONFIG_BYTES
    with pytest.raises(ConfigError, match="too large"):
        load_config(_write(tmp_path, text))
    assert parser_calls == ["compose"]  # refused on the node tree: no Python list of 200k ints was built


def test_a_long_scalar_is_refused(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, "tuning:\n  strategy: " + "x" * 100_000 + "\n"))
    assert info.value.path == "tuning.strategy" and "characters" in str(info.value)


@pytest.mark.parametrize("where, text", [("tuning.max_trials", "tuning:\n  max_trials: " + "9" * 5000 + "\n"),
                                         ("tuning.timeout", "tuning:\n  timeout: " + "1" * 60 + "\n")])
def test_a_huge_yaml_integer_is_a_config_error(where, text, tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, text))
    assert info.value.path == where and "digits" in str(info.value)


@pytest.mark.parametrize("key", ["timeout", "max_trials", "random_seed"])
def test_a_python_int_too_large_for_a_float_is_a_config_error(key):
    with pytest.raises(ConfigError) as info:
        load_config({"tuning": {key: 10**400}})
    assert info.value.path == f"tuning.{key}" and "too large" in str(info.value)


@pytest.mark.parametrize("text, path", [
    ("tuning:\n  max_trials: 5\ntuning:\n  timeout: 1\n", "tuning"),
    ("tuning:\n  max_trials: 5\n  max_trials: 6\n", "tuning.max_trials"),
    ("tuning:\n  ops:\n    fc:\n      weight: {dtype: fp32}\n      weight: {dtype: int8}\n", "tuning.ops.fc.weight"),
    ("quantization:\n  weight:\n    scheme: sym\n    scheme: asym\n", "quantization.weight.scheme"),
])
def test_a_duplicate_key_at_any_depth_is_a_config_error_naming_it(text, path, tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, text))
    assert info.value.path == path and "given twice" in str(info.value) and "line" in str(info.value)


def test_yaml_merge_keys_may_still_be_overridden(tmp_path):
    text = "tuning:\n  <<: {max_trials: 5, timeout: 2}\n  max_trials: 7\n"
    assert load_config(_write(tmp_path, text)).tuning.max_trials == 7


def test_keys_that_read_the_same_as_text_are_refused(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config({"tuning": {"ops": {1: {"weight": {"dtype": "fp32"}, "activation": {"dtype": "fp32"}},
                                        "1": {"weight": {"dtype": "int8"}}}}})
    assert info.value.path == "tuning.ops.1" and "given twice" in str(info.value)
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, "tuning:\n  ops:\n    1: {weight: {dtype: fp32}}\n    '1': {}\n"))
    assert info.value.path == "tuning.ops.1"


def test_sets_are_refused_because_their_order_depends_on_the_hash_seed(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, "quantization:\n  weight:\n    scheme: !!set {sym, asym}\n"))
    assert info.value.path == "quantization.weight.scheme" and "write a list" in str(info.value)
    with pytest.raises(ConfigError, match="write a list"):
        load_config({"quantization": {"weight": {"scheme": {"sym", "asym"}}}})


def test_a_bytes_workspace_path_is_decoded_not_written_as_its_repr(tmp_path):
    cfg = load_config({"tuning": {"workspace": {"path": os.fsencode(str(tmp_path / "ws"))}}})
    assert cfg.tuning.workspace_path == str(tmp_path / "ws")
    with pytest.raises(ConfigError) as info:
        load_config({"tuning": {"workspace": {"path": b"\xff\xfe"}}})
    assert info.value.path == "tuning.workspace.path" and "UTF-8" in str(info.value)


class _ZeroDimTensor:
    """What a torch 0-d tensor looks like to the core (which never imports torch)."""

    shape = ()

    def __init__(self, value):
        self.value = value

    def item(self):
        return self.value


def test_numpy_and_tensor_scalars_are_numbers():
    cfg = load_config({"calibration": {"iterations": [np.int64(5), np.int32(10)]},
                       "tuning": {"max_trials": np.int64(5), "timeout": np.float32(2.5), "random_seed": np.uint32(7),
                                  "accuracy_criterion": {"relative": np.float32(0.01)}}})
    assert cfg.calibration.iterations == (5, 10) and cfg.tuning.max_trials == 5 and cfg.tuning.random_seed == 7
    assert cfg.tuning.timeout == 2.5 and cfg.tuning.accuracy_criterion.relative == pytest.approx(0.01)
    assert load_config({"tuning": {"max_trials": _ZeroDimTensor(3), "timeout": np.array(1.5)}}).tuning.max_trials == 3
    assert type(load_config({"tuning": {"timeout": np.float64(1.0)}}).raw["tuning"]["timeout"]) is float
    with pytest.raises(ConfigError, match="expected an integer"):  # a float is still not a count
        load_config({"tuning": {"max_trials": np.float64(5.5)}})


@pytest.mark.parametrize("kind", ["fifo", "dev-zero"])
def test_a_config_path_that_is_not_a_regular_file_is_refused_at_once(kind, tmp_path, alarm):
    path = tmp_path / "c.yaml"
    if kind == "fifo":
        os.mkfifo(path)
    else:
        os.symlink("/dev/zero", path)
    with pytest.raises(ConfigError, match="not a file"):
        ilit.Tuner(str(path))
