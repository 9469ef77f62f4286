"""The fallback search that finds interacting ops: graph edges in the space, the search's stages, all strategies.

Two kinds of model: the toy chain with an outlier channel between two ops (every op quantizes its
output, so the tensor between them is quantized if either is: only the pair in fp32 helps), and
hand-written graphs driven by an oracle that says which fallback sets meet the goal, so the expected
trials can be counted by hand.
"""

import math

import pytest

import ilit
from ilit import StrategyContext, TuningSpace, load_config
from ilit.strategies.basic import BasicStrategy, order_model_wise
from ilit.strategies.bayesian import BayesianStrategy
from ilit.strategy import TrialResult
from ilit.tune_cfg import cfg_fingerprint, fallback_ops, quantized_ops
from ilit_toy import add_outlier_channel, make_chain_model, make_dataset

STRATEGIES = ("basic", "mse", "bayesian")


def toy_conf(ws, strategy, wide=False, **tuning):
    return {
        "framework": {"name": "toy"},
        "calibration": {"iterations": [2], "algorithm": {"activation": ["minmax", "kl"] if wide else "minmax"}},
        "quantization": {"weight": {"granularity": ["per_channel", "per_tensor"] if wide else "per_channel",
                                    "scheme": ["sym", "asym"] if wide else "sym"},
                         "activation": {"dtype": "uint8", "scheme": "asym"}},
        "tuning": {"strategy": strategy, "metric": "toy_accuracy", "accuracy_criterion": {"relative": 0.01},
                   "objective": "modelsize", "random_seed": 5, "workspace": {"path": str(ws)}, **tuning},
    }


def tune(model, data, conf):
    tuner = ilit.Tuner(conf)
    q = tuner.tune(model, data, eval_dataloader=data)
    return tuner, q


@pytest.fixture(scope="module")
def pair_chain():
    """8 ops; an outlier channel between op3 and op4: the minimal fp32 set is exactly {op3, op4}."""
    model = add_outlier_channel(make_chain_model(8), 3)
    return model, make_dataset(model, n=256, batch=64)


@pytest.fixture(scope="module")
def pair_and_fragile_chain():
    """12 ops; the op5-op6 pair plus two independent fragile ops: minimal set {op2, op5, op6, op9}."""
    model = add_outlier_channel(make_chain_model(12, (2, 9)), 5)
    return model, make_dataset(model, n=256, batch=64)


# ----------------------------------------------------------------------------- the space's graph
def _capability(types, edges=None):
    weight = {"dtype": ["int8", "fp32"], "scheme": ["sym"], "granularity": ["per_channel"], "algorithm": ["minmax"]}
    act = {"dtype": ["uint8", "fp32"], "scheme": ["asym"], "granularity": ["per_tensor"], "algorithm": ["minmax"]}
    cap = {"op_wise": {(name, t): {"weight": dict(weight), "activation": dict(act)} for name, t in types}}
    if edges is not None:
        cap["edges"] = edges
    return cap


def test_space_reads_edges_and_assumes_a_chain_without_them():
    conf = load_config({"framework": {"name": "toy"}})
    types = [("a", "Conv"), ("b", "Conv"), ("add", "add"), ("c", "Linear")]
    space = TuningSpace.build(_capability(types, [["a", "b"], ["a", "add"], ["b", "add"], ["add", "c"],
                                                  ["a", "b"], ["a", "ghost"]]), conf)
    assert space.graph_known
    assert space.edges == (("a", "b"), ("a", "add"), ("b", "add"), ("add", "c"))  # duplicates, unknown ops dropped
    assert space.producers("add") == ["a", "b"] and space.consumers("a") == ["b", "add"]
    assert space.neighbourhood("add") == ["a", "b", "add", "c"]
    assert space.neighbourhood("c") == ["add", "c"]
    chain = TuningSpace.build(_capability(types), conf)  # an adaptor that reports no edges
    assert not chain.graph_known and chain.edges == ()
    assert chain.producers("add") == ["b"] and chain.consumers("add") == ["c"] and chain.producers("a") == []
    assert chain.neighbourhood("b") == ["a", "b", "add"]
    with pytest.raises(ValueError, match=r"\[producer, consumer\] pairs"):
        TuningSpace.build(_capability(types, [["a", "b", "c"]]), conf)


def test_toy_adaptor_reports_its_chain_and_the_outlier_keeps_fp32_unchanged(pair_chain):
    model, data = pair_chain
    from ilit_toy import ToyAdaptor, accuracy

    cap = ToyAdaptor(load_config({"framework": {"name": "toy"}})).query_fw_capability(model)
    assert cap["edges"] == [[f"op{i}", f"op{i + 1}"] for i in range(7)]
    plain = make_chain_model(8)
    x = data[0][0]
    assert abs(model(x) - plain(x)).max() < 1e-3 * abs(plain(x)).max()  # the outlier changes nothing in fp32
    assert accuracy(model, data) == 1.0


# ----------------------------------------------------------------------------- the toy, end to end
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_finds_the_interacting_pair(pair_chain, tmp_path, strategy):
    model, data = pair_chain
    tuner, q = tune(model, data, toy_conf(tmp_path / "first", strategy))
    assert q is not None
    first = set(fallback_ops(tuner.best_trial.tune_cfg))
    assert {"op3", "op4"} <= first and len(first) <= 3  # timeout 0 returns the first pass: near-minimal
    assert len(tuner.history.trials) - 1 <= 3 * 8  # after the one model-wise trial
    # neither op of the pair alone meets the goal (what made one-op probes tie)
    singles = [t.meets for t in tuner.history.trials if len(fallback_ops(t.tune_cfg)) == 1]
    assert not any(singles)
    budget, q = tune(model, data, toy_conf(tmp_path / "budget", strategy, timeout=3600, max_trials=20))
    passing = [sorted(fallback_ops(t.tune_cfg)) for t in budget.history.trials if t.meets]
    assert ["op3", "op4"] in passing  # with a budget the shrinking pass reaches the minimal set


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_finds_a_pair_and_two_independent_ops(pair_and_fragile_chain, tmp_path, strategy):
    model, data = pair_and_fragile_chain
    minimal = {"op2", "op5", "op6", "op9"}
    tuner, q = tune(model, data, toy_conf(tmp_path / "first", strategy, max_trials=60))
    assert q is not None
    first = set(fallback_ops(tuner.best_trial.tune_cfg))
    assert minimal <= first and len(first) <= len(minimal) + 1
    assert len(tuner.history.trials) - 1 <= 3 * 12
    budget, _ = tune(model, data, toy_conf(tmp_path / "budget", strategy, timeout=3600, max_trials=60))
    passing = [set(fallback_ops(t.tune_cfg)) for t in budget.history.trials if t.meets]
    assert minimal in passing


def test_insights_name_each_trials_phase_and_the_ops_findings(pair_chain, tmp_path):
    model, data = pair_chain
    basic, _ = tune(model, data, toy_conf(tmp_path / "basic", "basic", timeout=3600, max_trials=20))
    trials = basic.history.trials
    insights = _last_strategy_insights(basic)
    phases = insights["phase"]
    assert set(phases) == {str(t.trial) for t in trials}  # every trial, numbered as the tuner numbered it
    assert phases["1"] == "model-wise"
    singles = [t.trial for t in trials if len(fallback_ops(t.tune_cfg)) == 1]
    assert all(phases[str(n)] == "single-op" for n in singles)
    first = next(t for t in trials if t.meets)
    assert phases[str(first.trial)] == "segment"  # op3 with the op reading its output, op4
    assert set(fallback_ops(first.tune_cfg)) == {"op3", "op4"}
    sens = insights["op_sensitivity"]
    base_acc = trials[0].accuracy
    for t in trials:  # accuracy recovered by each op's one-op fallback, from the trials themselves
        if len(fallback_ops(t.tune_cfg)) == 1:
            assert sens[fallback_ops(t.tune_cfg)[0]] == pytest.approx(t.accuracy - base_acc)
    mse, _ = tune(model, data, toy_conf(tmp_path / "mse", "mse"))
    errors = _last_strategy_insights(mse)["op_error"]  # the error each op adds
    assert set(errors) == {f"op{i}" for i in range(8)}
    assert max(errors, key=lambda op: errors[op] or 0) == "op3"  # the producer of the outlier tensor


def _last_strategy_insights(tuner):
    """What the strategy recorded, as the tuner stored it in history.json."""
    return ilit.History.load(tuner.history_path).strategy_insights


def test_model_wise_phase_is_cut_short_when_its_configs_fail_alike(pair_chain, tmp_path):
    model, data = pair_chain
    tuner, q = tune(model, data, toy_conf(tmp_path / "ws", "basic", wide=True))
    assert q is not None
    model_wise = [t for t in tuner.history.trials if not fallback_ops(t.tune_cfg)]
    assert len(model_wise) == BasicStrategy.min_model_wise  # of 2 x 2 x 2 = 8: all far below the goal, alike
    assert _last_strategy_insights(tuner)["model_wise_cut"] == {"after": 3, "of": 8}


def test_model_wise_order_puts_the_most_different_configs_early():
    conf = load_config(toy_conf("unused", "basic", wide=True))
    cap = {"op_wise": {(n, "Dense"): {
        "weight": {"dtype": ["int8", "fp32"], "scheme": ["sym", "asym"], "granularity": ["per_channel", "per_tensor"],
                   "algorithm": ["minmax"]},
        "activation": {"dtype": ["uint8", "fp32"], "scheme": ["asym"], "granularity": ["per_tensor"],
                       "algorithm": ["minmax", "kl"]}} for n in ("a", "b")}}
    space = TuningSpace.build(cap, conf)
    configs = space.model_wise_configs()
    assert len(configs) == 8
    ordered = order_model_wise(configs)
    assert ordered[0] == configs[0] and sorted(map(cfg_fingerprint, ordered)) == sorted(map(cfg_fingerprint, configs))

    def fields(cfg):
        op = cfg["ops"]["a"]
        return (op["weight"]["scheme"], op["weight"]["granularity"], op["activation"]["algorithm"])

    first, second = fields(ordered[0]), fields(ordered[1])
    assert all(x != y for x, y in zip(first, second))  # the second differs from the first in every field


def test_model_wise_order_tries_each_recipe_right_after_its_plain_config():
    """A recipe (SmoothQuant) is what rescues a model whose plain configs all fail alike, so it must come before
    basic can cut the model-wise phase short (after 3 configs), not after every other plain config."""
    conf = load_config(toy_conf("unused", "basic", wide=True))
    cap = {"op_wise": {(n, "Dense"): {
        "weight": {"dtype": ["int8", "fp32"], "scheme": ["sym", "asym"], "granularity": ["per_channel", "per_tensor"],
                   "algorithm": ["minmax"]},
        "activation": {"dtype": ["uint8", "fp32"], "scheme": ["asym"], "granularity": ["per_tensor"],
                       "algorithm": ["minmax", "kl"]}} for n in ("a", "b")},
        "recipes": {"smooth_quant": {"alpha": [0.5, 0.75]}}}
    space = TuningSpace.build(cap, conf)
    configs = space.model_wise_configs()
    assert len(configs) == 24
    ordered = order_model_wise(configs)
    assert sorted(map(cfg_fingerprint, ordered)) == sorted(map(cfg_fingerprint, configs))
    assert [c.get("recipes") for c in ordered[:3]] == [
        None, {"smooth_quant": {"alpha": 0.5}}, {"smooth_quant": {"alpha": 0.75}}]
    strip = [{k: v for k, v in c.items() if k != "recipes"} for c in ordered]
    assert strip[0] == strip[1] == strip[2] == configs[0]  # the variants are of the most-preferred config
    plain = [c for c in ordered if not c.get("recipes")]
    assert plain == order_model_wise([c for c in configs if not c.get("recipes")])  # plain order unchanged


# ----------------------------------------------------------------------------- oracle-driven graphs
def drive(strategy_cls, types, edges, needed, timeout=0.0, max_trials=100, seed=0):
    """Run a strategy as the tuner would, with an oracle: a config meets the goal iff ``needed`` is in fp32.

    Accuracy: 0.1, plus 0.8 once ``needed`` is in fp32, plus 0.001 per fp32 op (a little noise-free drift).
    Returns the fallback sets of the trials, in order.
    """
    conf = load_config({"framework": {"name": "toy"}, "calibration": {"iterations": [2]},
                        "tuning": {"accuracy_criterion": {"relative": 0.01}, "timeout": timeout,
                                   "random_seed": seed}})
    space = TuningSpace.build(_capability(types, edges), conf)
    ctx = StrategyContext(baseline=1.0, higher_is_better=True, adaptor=None, model=None, calib_dataloader=[],
                          quantize=lambda c: None, seed=seed)
    strategy = strategy_cls(space, conf, ctx)
    seen, trials = {}, []
    gen = strategy.configs()
    for cfg in gen:
        fp = cfg_fingerprint(cfg)
        if fp in seen:
            strategy.observe(cfg, seen[fp])
            continue
        if not quantized_ops(cfg):
            strategy.observe(cfg, TrialResult(math.nan, math.nan, False))
            continue
        if len(trials) >= max_trials:
            break
        fb = frozenset(fallback_ops(cfg))
        acc = 0.1 + (0.9 if needed <= fb else 0.0) + 0.001 * len(fb)
        res = TrialResult(min(acc, 1.0), float(len(fb)), needed <= fb)
        seen[fp] = res
        trials.append(fb)
        strategy.observe(cfg, res)
        if res.meets and timeout == 0:
            break
    gen.close()
    return trials


CNN = [("c1", "Conv"), ("c2", "Conv"), ("c3", "Conv"), ("f1", "Linear"), ("f2", "Linear")]
CNN_EDGES = [["c1", "c2"], ["c2", "c3"], ["c3", "f1"], ["f1", "f2"]]


@pytest.mark.parametrize("strategy_cls", [BasicStrategy, BayesianStrategy])
def test_op_type_stage_meets_an_adjacent_conv_pair_at_the_second_trial(strategy_cls):
    budget = drive(strategy_cls, CNN, CNN_EDGES, {"c1", "c2"}, timeout=60, max_trials=8)
    assert budget[:2] == [frozenset(), frozenset({"c1", "c2", "c3"})]  # INC's op-type stage needed 3 trials
    assert frozenset({"c1", "c2"}) in budget[:5]  # then the shrinking pass re-quantizes c3
    # with timeout 0 the first passing config is returned: no type stage, the exact pair instead
    first = drive(strategy_cls, CNN, CNN_EDGES, {"c1", "c2"})
    assert first[-1] == frozenset({"c1", "c2"}) and len(first) - 1 <= 3 * 5


# conv -> pool -> conv, where the pool re-quantizes the outlier tensor (TFLite): three ops interact
TRIPLE = [("c1", "Conv"), ("c2", "Conv"), ("p1", "Pool"), ("c3", "Conv"), ("p2", "Pool"), ("f1", "Linear"),
          ("f2", "Linear")]
TRIPLE_EDGES = [["c1", "c2"], ["c2", "p1"], ["p1", "c3"], ["c3", "p2"], ["p2", "f1"], ["f1", "f2"]]

# a residual block: c0 feeds c1 and the add; the add needs both of its inputs' producers and itself in fp32
RESIDUAL = [("c0", "Conv"), ("c1", "Conv"), ("c2", "Conv"), ("add", "add"), ("c3", "Conv"), ("fc", "Linear")]
RESIDUAL_EDGES = [["c0", "c1"], ["c0", "add"], ["c1", "c2"], ["c2", "add"], ["add", "c3"], ["c3", "fc"]]


@pytest.mark.parametrize("strategy_cls", [BasicStrategy, BayesianStrategy])
@pytest.mark.parametrize("types, edges, needed", [
    (TRIPLE, TRIPLE_EDGES, {"c2", "p1", "c3"}),
    (RESIDUAL, RESIDUAL_EDGES, {"c0", "c2", "add"}),
], ids=["across-a-pool", "residual-add"])
def test_groups_of_interacting_ops_are_found_through_the_graph(strategy_cls, types, edges, needed):
    n = len(types)
    trials = drive(strategy_cls, types, edges, needed)
    assert needed <= trials[-1] and len(trials[-1]) <= len(needed) + 1
    assert len(trials) - 1 <= 3 * n
    budget = drive(strategy_cls, types, edges, needed, timeout=60, max_trials=3 * n)
    assert frozenset(needed) in budget


def test_without_edges_the_search_still_finds_chain_neighbours():
    trials = drive(BasicStrategy, TRIPLE, None, {"c2", "p1", "c3"})  # consecutive ops in model order
    assert trials[-1] == frozenset({"c2", "p1", "c3"})


def test_the_search_is_deterministic_for_a_seed():
    runs = [drive(BayesianStrategy, RESIDUAL, RESIDUAL_EDGES, {"c0", "c2", "add"}, timeout=60, max_trials=12, seed=s)
            for s in (1, 1, 2)]
    assert runs[0] == runs[1]
    assert drive(BasicStrategy, TRIPLE, TRIPLE_EDGES, {"c2", "p1", "c3"}, timeout=60) == \
        drive(BasicStrategy, TRIPLE, TRIPLE_EDGES, {"c2", "p1", "c3"}, timeout=60)
