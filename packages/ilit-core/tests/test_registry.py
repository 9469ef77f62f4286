"""Entry-point plugin discovery: built-ins and third parties alike, with errors that say what to install."""

import sys
import warnings
from importlib.metadata import EntryPoint

import pytest

import ilit
from ilit import registry


def test_builtins_and_third_party_found_through_entry_points():
    assert "basic" in registry.installed("strategy")
    assert {"performance", "footprint", "modelsize"} <= set(registry.installed("objective"))
    assert "toy" in registry.installed("adaptor")  # the third-party test plugin
    from ilit.strategies.basic import BasicStrategy
    from ilit_toy import ToyAdaptor

    assert registry.load("strategy", "basic") is BasicStrategy
    assert registry.load("adaptor", "TOY") is ToyAdaptor


def test_unknown_adaptor_lists_installed_and_the_pip_command():
    with pytest.raises(ilit.PluginNotFoundError) as e:
        registry.load("adaptor", "pytorch")
    msg = str(e.value)
    assert msg.startswith("framework.name: no adaptor 'pytorch' is installed (installed: toy)")
    assert isinstance(e.value, ilit.ConfigError) and e.value.path == "framework.name"
    assert "pip install torch==2.13.0" in msg and "'ilit-pytorch[torch]'" in msg


def test_unknown_metric_and_strategy_hints():
    with pytest.raises(ilit.PluginNotFoundError, match=r"pip install ilit-metrics"):
        registry.load("metric", "topk")
    with pytest.raises(ilit.PluginNotFoundError, match=r"installed: .*basic"):
        registry.load("strategy", "annealing")


@pytest.fixture
def broken_plugin(monkeypatch):
    """Add an entry point whose module fails to import, beside the real ones."""
    real = registry._entry_points

    def fake(group):
        eps = real(group)
        if group == "ilit.adaptors":
            eps = eps + [EntryPoint("broken", "ilit_no_such_module_xyz:Adaptor", group)]
        return eps

    monkeypatch.setattr(registry, "_entry_points", fake)


def test_a_failing_plugin_is_reported_and_the_others_still_load(broken_plugin):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = registry.load_all("adaptor")
    assert "toy" in loaded and "broken" not in loaded
    assert any("broken" in str(w.message) and "ilit_no_such_module_xyz" in str(w.message) for w in caught)


def test_asking_for_the_failing_plugin_raises_its_own_error(broken_plugin):
    with pytest.raises(ilit.PluginLoadError, match="ilit_no_such_module_xyz") as e:
        registry.load("adaptor", "broken")
    assert isinstance(e.value.__cause__, ModuleNotFoundError)


def test_framework_detected_from_the_model_when_name_missing(toy, conf, broken_plugin):
    model, data = toy
    c = conf(framework={"name": None})
    del c["framework"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the broken plugin is warned about, and skipped
        tuner = ilit.Tuner(c)
        tuner.tune(model, data, eval_dataloader=data)
    assert tuner.adaptor.name == "toy"


def test_undetectable_model_names_the_key_to_set(conf):
    c = conf()
    del c["framework"]
    with pytest.raises(ilit.ConfigError, match=r"^framework.name: could not tell .*builtins.list"):
        ilit.Tuner(c).tune([1, 2], [([1], [1])], eval_func=lambda m: 1.0)


def test_import_ilit_loads_no_framework():
    import subprocess

    code = ("import sys, ilit; print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('torch', 'tensorflow', 'keras', 'mxnet', 'sklearn', 'scipy')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_detection_loads_only_the_adaptor_named_for_the_models_package(toy, conf, broken_plugin, monkeypatch):
    # the toy plugin declares ilit_toy models in the ilit.model_modules group, as ilit-pytorch declares torch
    model, data = toy
    c = conf()
    del c["framework"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # loading every plugin would warn about the broken one
        tuner = ilit.Tuner(c)
        tuner.tune(model, data, eval_dataloader=data)
    assert tuner.adaptor.name == "toy"


@pytest.fixture
def failing_strategy_and_twin_adaptor(monkeypatch):
    """A strategy whose module fails to import, and a second distribution registering the adaptor name 'toy'."""
    real = registry._entry_points

    def fake(group):
        eps = real(group)
        if group == "ilit.strategies":
            eps = eps + [EntryPoint("broken_strategy", "ilit_no_such_module_xyz:Strategy", group)]
        if group == "ilit.adaptors":
            eps = eps + [EntryPoint("toy", "ilit_other_toy:Adaptor", group)]
        return eps

    monkeypatch.setattr(registry, "_entry_points", fake)


def test_a_strategy_that_fails_to_import_is_reported_at_tuner_like_a_metric(conf, failing_strategy_and_twin_adaptor):
    with pytest.raises(ilit.PluginLoadError, match="ilit_no_such_module_xyz"):
        ilit.Tuner(conf(tuning={"strategy": "broken_strategy"}))


def test_two_packages_registering_one_name_are_warned_about_and_the_first_is_used(failing_strategy_and_twin_adaptor):
    registry._warned.clear()
    with pytest.warns(RuntimeWarning, match="two installed packages register the adaptor 'toy'.*ilit_other_toy"):
        found = registry.installed("adaptor")
    assert found["toy"].value == "ilit_toy.adaptor:ToyAdaptor"
