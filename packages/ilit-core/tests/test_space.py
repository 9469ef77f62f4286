"""The tuning space: capability intersected with the YAML, and the tune_cfgs made from it."""

import pytest

import ilit
from ilit.config import parse_config
from ilit.space import TuningSpace

W = {"dtype": ["int8", "fp32"], "scheme": ["sym", "asym"], "granularity": ["per_channel", "per_tensor"],
     "algorithm": ["minmax"]}
A = {"dtype": ["uint8", "fp32"], "scheme": ["asym", "sym"], "granularity": ["per_tensor"],
     "algorithm": ["minmax", "kl"]}
CAP = {"op_wise": {("conv", "Conv2d"): {"weight": W, "activation": A},
                   ("add", "Add"): {"activation": A},
                   ("fc", "Linear"): {"weight": {**W, "granularity": ["per_tensor"]}, "activation": A}}}


def build(**q):
    return TuningSpace.build(CAP, parse_config(q))


def test_full_space_is_the_cartesian_product():
    s = build()
    assert s.ops == ["conv", "add", "fc"]
    assert len(s.global_choices) == 2 * 2 * 2 * 2  # w scheme x w gran x a scheme x a algo
    assert len(s.op_choices["conv"]) == 4 * 4 + 1  # quantized combos + fp32
    assert len(s.op_choices["add"]) == 4 + 1
    # a quantized weight never pairs with an fp32 activation, nor the reverse
    for choices in s.op_choices.values():
        for c in choices:
            dtypes = {t["dtype"] for t in c.values()}
            assert dtypes == {"fp32"} or "fp32" not in dtypes


def test_yaml_lists_narrow_the_space_and_keep_their_order():
    s = build(quantization={"weight": {"granularity": "per_tensor", "scheme": ["asym", "sym"]}},
              calibration={"algorithm": {"activation": "kl"}})
    cfgs = s.model_wise_configs()
    assert len(cfgs) == 2 * 2  # weight scheme x activation scheme
    assert cfgs[0]["ops"]["conv"]["weight"]["scheme"] == "asym"
    for cfg in cfgs:
        assert cfg["ops"]["conv"]["weight"]["granularity"] == "per_tensor"
        assert all(op["activation"]["algorithm"] == "kl" for op in cfg["ops"].values())


def test_an_op_lacking_the_global_choice_takes_its_own():
    s = build(quantization={"weight": {"granularity": "per_channel"}})
    cfg = s.model_wise_configs()[0]
    assert cfg["ops"]["conv"]["weight"]["granularity"] == "per_channel"
    assert cfg["ops"]["fc"]["weight"]["granularity"] == "per_tensor"
    assert "weight" not in cfg["ops"]["add"]


def test_empty_intersection_says_what_the_framework_supports():
    with pytest.raises(ilit.ConfigError) as e:
        build(quantization={"activation": {"dtype": "int8"}})
    assert str(e.value).startswith("quantization.activation.dtype:")
    assert "['uint8']" in str(e.value)


def test_unsupported_approach():
    with pytest.raises(ilit.ConfigError, match=r"^quantization.approach: .*supports \['post_training_static_quant'\]"):
        build(quantization={"approach": "quant_aware_training"})


def test_unknown_op_in_tuning_ops_lists_the_ops():
    with pytest.raises(ilit.ConfigError, match=r"^tuning.ops.fc9: no such op.*conv, add, fc"):
        build(tuning={"ops": {"fc9": {"activation": {"dtype": "fp32"}}}})


def test_forced_fallback_and_narrowing_per_op():
    s = build(tuning={"ops": {"fc": {"activation": {"dtype": "fp32"}},
                              "conv": {"weight": {"scheme": "asym"}}}})
    for cfg in s.model_wise_configs():
        assert cfg["ops"]["fc"]["activation"] == {"dtype": "fp32"} and cfg["ops"]["fc"]["weight"] == {"dtype": "fp32"}
        assert cfg["ops"]["conv"]["weight"]["scheme"] == "asym"
    assert ilit.fallback_ops(s.model_wise_configs()[0]) == ["fc"]


def test_fallback_and_calibration_key_helpers():
    s = build(calibration={"iterations": [1, 3]})
    a, b = s.model_wise_configs()[0], s.model_wise_configs()[-1]
    assert a["calibration"]["iterations"] == 1 and b["calibration"]["iterations"] == 3
    fb = s.with_fallback(a, ["add"])
    assert ilit.fallback_ops(fb) == ["add"] and ilit.quantized_ops(fb) == ["conv", "fc"]
    assert ilit.calibration_key(fb) == ilit.calibration_key(a) != ilit.calibration_key(b)
    assert ilit.cfg_fingerprint(fb) != ilit.cfg_fingerprint(a)
    assert s.fallback_candidates(fb) == ["conv", "fc"]
    import json

    assert json.loads(json.dumps(fb)) == fb  # tune_cfg is plain JSON
