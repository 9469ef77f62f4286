"""Metric arguments in the YAML: anything a metric cannot take is an ilit.ConfigError at Tuner(conf),
naming tuning.metric.<name>, never a TypeError from a constructor."""

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ilit

NAMES = ["topk", "accuracy", "loss", "mae", "mse", "rmse", "f1", "squad_f1", "cocomap"]


@pytest.mark.parametrize("metric, expected", [
    ({"topk": -1}, "k must be an integer >= 1"),
    ({"topk": "a"}, "k must be an integer >= 1"),
    ({"topk": True}, "k must be an integer >= 1"),
    ({"topk": [1, 2]}, "does not take [1, 2]"),
    ({"f1": {"average": "bogus"}}, "average must be one of binary, micro, macro, weighted"),
    ({"f1": {"pos_label": [1]}}, "pos_label must be a class id"),
    ({"loss": {"from_logits": "yes"}}, "from_logits must be true or false"),
    ({"accuracy": {"x": 1}}, "unexpected keyword argument 'x'"),
    ({"squad_f1": 3}, "does not take 3"),
    ({"mae": 5}, "does not take 5"),
    ({"cocomap": {"box_format": "zz"}}, "box_format"),
])
def test_bad_metric_arguments_are_config_errors(metric, expected):
    (name, _), = metric.items()
    with pytest.raises(ilit.ConfigError) as e:
        ilit.Tuner({"tuning": {"metric": metric}})
    assert str(e.value).startswith(f"tuning.metric.{name}: the {name} metric does not take")
    assert expected in str(e.value)


args = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.floats(allow_nan=True), st.text(max_size=6),
              st.sampled_from(["binary", "macro", "xyxy", "xywh", "cxcywh", "k", "average"])),
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.sampled_from(["k", "average", "pos_label", "from_logits", "box_format",
                                                             "n_classes", "x"]), inner, max_size=3)),
    max_leaves=6)


@settings(max_examples=int(os.environ.get("ILIT_FUZZ_EXAMPLES", "500")), deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(NAMES), args)
def test_fuzzed_metric_arguments_give_config_errors_only(name, value):
    try:
        tuner = ilit.Tuner({"tuning": {"metric": {name: value}}})
    except ilit.ConfigError as exc:
        assert str(exc).startswith(f"tuning.metric.{name}")
        return
    assert tuner.config.tuning.metric[0] == name
