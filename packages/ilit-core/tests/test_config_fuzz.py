"""Fuzzing: whatever config document or YAML text a user writes, ilit answers with ConfigError or a valid
config, never a KeyError, TypeError, AttributeError or any other exception from inside ilit.

Each test runs ILIT_FUZZ_EXAMPLES examples (default 500, so CI runs at least 500 per test).
"""

import datetime
import json
import math
import os
import re

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import ilit
import ilit_toy
from ilit.space import TuningSpace

EXAMPLES = int(os.environ.get("ILIT_FUZZ_EXAMPLES", "500"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

MODEL = ilit_toy.make_model(n_layers=3)
OPS = [layer.name for layer in MODEL.layers]
VOCAB = ["int8", "uint8", "fp32", "sym", "asym", "per_channel", "per_tensor", "minmax", "kl", "percentile",
         "basic", "mse", "bayesian", "toy", "toy_accuracy", "performance", "modelsize", "footprint", "cpu", "gpu",
         "post_training_static_quant", "post_training_dynamic_quant", "quant_aware_training", "10, 50", "", "name",
         "relative", "absolute", "weight", "activation", *OPS]
KEYS = ["framework", "device", "calibration", "quantization", "tuning", "name", "inputs", "outputs", "iterations",
        "algorithm", "approach", "weight", "activation", "dtype", "scheme", "granularity", "strategy", "metric",
        "accuracy_criterion", "relative", "absolute", "objective", "timeout", "max_trials", "random_seed", "ops",
        "workspace", "path", *OPS]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8), st.sampled_from(VOCAB), st.dates(), st.binary(max_size=4),
)
junk = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4),
    st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=5), st.integers(), st.booleans(), st.none()),
                    inner, max_size=4)), max_leaves=10)


def mostly(valid):
    """Mostly ``valid``, sometimes junk: a document with one bad value among good ones is the searching case."""
    return st.integers(0, 9).flatmap(lambda i: junk if i == 0 else valid)


def choice(values):
    """A plausible value for an enum key: one of them, a list of them, or junk."""
    good = st.sampled_from(values)
    return mostly(st.one_of(good, st.lists(good, max_size=3)))


def optional_section(fields):
    """A mapping with any subset of ``fields`` (each with its value strategy), sometimes an extra junk key."""
    base = st.fixed_dictionaries({}, optional=fields)
    with_extra = base.flatmap(lambda d: st.dictionaries(st.sampled_from(KEYS), junk, max_size=1).map(
        lambda extra: {**d, **extra}))
    return mostly(st.integers(0, 9).flatmap(lambda i: with_extra if i == 0 else base))


tensor = optional_section({"dtype": choice(["int8", "uint8", "fp32"]), "scheme": choice(["sym", "asym"]),
                           "granularity": choice(["per_channel", "per_tensor"]),
                           "algorithm": choice(["minmax", "kl", "percentile"])})
EDGE = st.sampled_from([-1, -0.5, float("nan"), float("inf"), float("-inf"), 2**32, 2**64, 1, 1.0, 1.5, 0, True, "1"])


def number(valid):
    """Mostly a valid number, else an edge case (NaN, inf, negative, too large, a bool, a string) or junk."""
    return st.integers(0, 9).flatmap(lambda i: junk if i == 0 else EDGE if i == 1 else valid)


documents = st.fixed_dictionaries({}, optional={
    "framework": optional_section({"name": mostly(st.sampled_from(["toy", "TOY", "pytorch"])),
                                   "inputs": mostly(st.lists(st.text(max_size=4))),
                                   "outputs": mostly(st.just("out"))}),
    "device": mostly(st.just("cpu")),
    "calibration": optional_section({"iterations": number(st.one_of(st.integers(1, 5), st.lists(st.integers(1, 5)),
                                                                    st.just("10, 50"))),
                                     "algorithm": optional_section({"weight": choice(["minmax", "kl"]),
                                                                    "activation": choice(["minmax", "kl"])})}),
    "quantization": optional_section({"approach": choice(["post_training_static_quant", "post_training_dynamic_quant",
                                                          "quant_aware_training"]),
                                      "weight": tensor, "activation": tensor}),
    "tuning": optional_section({
        "strategy": st.one_of(st.sampled_from(["basic", "mse", "bayesian", "Basic"]), st.just("nope"),
                              st.fixed_dictionaries({"name": st.sampled_from(["basic", "x"])}), junk),
        "metric": mostly(st.one_of(st.just("toy_accuracy"), st.just({"toy_accuracy": None}),
                                   st.dictionaries(st.sampled_from(["toy_accuracy", "topk"]), junk, max_size=2))),
        "accuracy_criterion": st.one_of(
            st.fixed_dictionaries({"relative": number(st.floats(0, 0.99))}),
            st.fixed_dictionaries({"absolute": number(st.floats(0, 10))}), optional_section({
                "relative": number(st.floats(0, 0.99)), "absolute": number(st.floats(0, 10))})),
        "objective": mostly(st.sampled_from(["performance", "modelsize", "footprint", "latency"])),
        "timeout": number(st.one_of(st.integers(0, 3600), st.floats(0, 3600))),
        "max_trials": number(st.integers(1, 1000)), "random_seed": number(st.integers(0, 2**32 - 1)),
        "ops": st.one_of(st.dictionaries(st.sampled_from(OPS + ["nope"]),
                                         optional_section({"weight": tensor, "activation": tensor}), max_size=3), junk),
        "workspace": optional_section({"path": mostly(st.sampled_from(["ws", "./a/b"]))}),
    }),
})


def check(source):
    """Tuner(source) and the space over the toy model: a valid result or ConfigError, nothing else."""
    try:
        tuner = ilit.Tuner(source)
        config = tuner.config
        TuningSpace.build(ilit_toy.ToyAdaptor(config).query_fw_capability(MODEL), config)
    except ilit.ConfigError as exc:
        assert str(exc)  # a message, always
        return False
    # an accepted config is one tuning can run with: its history is strict JSON, its numbers in range
    json.dumps(config.raw, allow_nan=False)
    assert len(config.search_fingerprint()) == 64
    t = config.tuning
    assert math.isfinite(t.timeout) and t.timeout >= 0 and t.max_trials >= 1 and 0 <= t.random_seed < 2**32
    crit = t.accuracy_criterion
    assert (crit.relative is None) != (crit.absolute is None)
    assert 0 <= (crit.relative if crit.relative is not None else crit.absolute) < math.inf
    assert crit.relative is None or crit.relative < 1
    return True


@FUZZ
@given(documents)
@example({"tuning": {"timeout": float("nan")}})  # cases an earlier ilit accepted, and tuning then broke on
@example({"tuning": {"timeout": float("inf")}})
@example({"tuning": {"random_seed": 2**32}})
@example({"tuning": {"accuracy_criterion": {"absolute": float("inf")}}})
@example({"tuning": {"metric": {"toy_accuracy": None}, "ops": {datetime.date(2020, 1, 1): None}}})
@example({"quantization": {"weight": {"dtype": "fp32"}}})
def test_fuzzed_documents_give_config_errors_only(doc):
    check(doc)


@given(junk)
@FUZZ
def test_fuzzed_junk_gives_config_errors_only(doc):
    check(doc if isinstance(doc, dict) else {"tuning": doc})


TEMPLATE_TEXT = re.sub(r"topk: 1", "toy_accuracy: null",
                       open(os.path.join(os.path.dirname(ilit.__file__), "template.yaml")).read()
                       ).replace("name: pytorch", "name: toy")
LINES = TEMPLATE_TEXT.splitlines(keepends=True)


@st.composite
def mutated_yaml(draw):
    """The template with a few random edits: lines dropped, duplicated, re-indented, characters changed."""
    lines = list(LINES)
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(lines) - 1))
        op = draw(st.sampled_from(["drop", "dup", "indent", "dedent", "chars", "value"]))
        if op == "drop":
            del lines[i]
        elif op == "dup":
            lines.insert(i, lines[i])
        elif op == "indent":
            lines[i] = "  " + lines[i]
        elif op == "dedent":
            lines[i] = lines[i][2:]
        elif op == "chars":
            j = draw(st.integers(0, max(0, len(lines[i]) - 1)))
            lines[i] = lines[i][:j] + draw(st.text(alphabet=":-[]{}&*!|>'\"#%@` \tx0.", max_size=3)) + lines[i][j + 1:]
        else:
            key = lines[i].split(":", 1)[0]
            lines[i] = f"{key}: {draw(st.sampled_from(VOCAB + ['-1', '.nan', '[]', '{}', '1e400', '~', 'yes']))}\n"
        if not lines:
            break
    return "".join(lines)


def test_the_unmutated_template_is_valid(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(TEMPLATE_TEXT)
    assert check(str(path))


@FUZZ
@given(mutated_yaml())
def test_fuzzed_yaml_text_gives_config_errors_only(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("fuzz") / "c.yaml"
    path.write_text(text)
    check(str(path))
