"""The adaptor contract kit: one conformance suite that every adaptor's tests run against their own models.

An adaptor author subclasses :class:`AdaptorContract` in a test module and gives it a ``spec`` fixture; pytest
then runs every contract test against the adaptor::

    import pytest
    from ilit.testing import AdaptorContract, ContractSpec

    class TestMyAdaptorContract(AdaptorContract):
        @pytest.fixture(scope="class")
        @classmethod
        def spec(cls):
            return ContractSpec(framework="myfw", make_model=make_trained_model, batches=digits_batches,
                                state=weights_and_modes, metric={"topk": 1})

What the suite checks, through ``ilit.Tuner`` and the adaptor's own ``save``/``load``:

- a model the adaptor does not take (a plain object, an array, a function, a missing path, a model class,
  and the spec's ``foreign_models``) is refused with :class:`ilit.ConfigError` before any user code or
  calibration runs;
- ``tune`` leaves the user's FP32 model exactly as it was (``spec.state`` before and after), with
  ``eval_dataloader`` and with ``eval_func``, and with the ``mse`` strategy when the adaptor has
  ``inspect_tensor`` (without it, asking for ``mse`` is a ConfigError);
- ``save`` then ``load`` gives a model with the same outputs; ``fingerprint`` is the same for the same model;
- every file ``save`` writes, replaced by a crafted pickle (which would create a marker file when unpickled),
  by nothing, by garbage or by its first half, makes ``load`` raise :class:`ilit.ModelFileError` and run nothing;
- an ``eval_func`` failing (raising, or returning NaN) on one trial is recorded in the history and tuning goes
  on; failing on the FP32 model stops ``tune`` with that very error.

This module imports pytest; nothing else in ilit imports it, so ``import ilit`` stays free of test tools.
"""

from __future__ import annotations

import builtins
import copy
import json
import math
import os
import pickle
import shutil
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import pytest

from .adaptor import Adaptor, to_numpy
from .batches import batch_inputs
from .errors import ConfigError, ModelFileError
from .registry import load as load_plugin
from .tuner import Tuner

__all__ = ["AdaptorContract", "ContractSpec", "crafted_pickle", "same_state", "CORRUPTIONS"]


@dataclass
class ContractSpec:
    """What the contract suite needs to know about one adaptor and one model."""

    #: the adaptor's ``framework.name``
    framework: str
    #: a fresh copy of the same FP32 model on every call (same weights, so fingerprints match)
    make_model: Callable[[], Any]
    #: ``(inputs, labels)`` batches, at least 2: calibration and evaluation data
    batches: Sequence[Any]
    # (the model and ``config`` must give a tuning space of at least two quantized configs: the failing-eval_func
    # check needs a second trial after the failed one)
    #: a snapshot of everything ``tune`` must not change in a model (weights, buffers, modes, attributes), as
    #: nested dicts/lists/tuples of numpy arrays and plain values, compared bit for bit by :func:`same_state`
    state: Callable[[Any], Any]
    #: the YAML ``tuning.metric`` used with ``eval_dataloader`` (e.g. ``{"topk": 1}``)
    metric: Mapping[str, Any]
    #: extra YAML sections merged over the suite's config (per section), e.g. ``{"calibration": {...}}``
    config: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    #: more models this adaptor must refuse, by name: factories, called once each
    foreign_models: Mapping[str, Callable[[], Any]] = field(default_factory=dict)
    #: how to read back a saved directory; the default calls ``adaptor.load(path)``. Adaptors whose load
    #: rebuilds from the FP32 model take it here: ``lambda adaptor, path, fp32: adaptor.load(path, model=fp32)``
    load: Optional[Callable[[Adaptor, str, Any], Any]] = None
    #: tolerance comparing a saved-and-loaded model's outputs with the model's own
    atol: float = 1e-5


class _OpenPayload:
    """Unpickling it calls ``open(marker, "w")``: the marker file appears if anything unpickles it."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> Tuple[Any, ...]:
        return builtins.open, (self.marker, "w")


class _ExecPayload:
    """Unpickling it runs Python source through ``exec``, as a real attack would."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> Tuple[Any, ...]:
        return builtins.exec, (f"open({self.marker!r}, 'w').write('a crafted pickle ran code')",)


def crafted_pickle(marker: str, protocol: int = pickle.HIGHEST_PROTOCOL, how: str = "exec") -> bytes:
    """Pickle bytes that create the file ``marker`` when unpickled (``how``: ``exec`` or ``open``)."""
    payload = _ExecPayload(marker) if how == "exec" else _OpenPayload(marker)
    return pickle.dumps(payload, protocol=protocol)


#: how the suite damages each saved file: name -> (original bytes, marker path) -> new bytes
CORRUPTIONS: Dict[str, Callable[[bytes, str], bytes]] = {
    "pickle_exec": lambda content, marker: crafted_pickle(marker, pickle.HIGHEST_PROTOCOL, "exec"),
    "pickle_open_protocol_0": lambda content, marker: crafted_pickle(marker, 0, "open"),
    "empty": lambda content, marker: b"",
    "garbage": lambda content, marker: np.random.default_rng(0).bytes(max(len(content), 64)),
    "first_half": lambda content, marker: content[: len(content) // 2],
}


def same_state(before: Any, after: Any, where: str = "state") -> Optional[str]:
    """None if two snapshots are equal bit for bit, else where they first differ."""
    if isinstance(before, np.ndarray) or isinstance(after, np.ndarray):
        a, b = np.asarray(before), np.asarray(after)
        if a.dtype != b.dtype or a.shape != b.shape or a.tobytes() != b.tobytes():
            return f"{where}: array changed ({a.dtype}{list(a.shape)} -> {b.dtype}{list(b.shape)})"
        return None
    if isinstance(before, Mapping) and isinstance(after, Mapping):
        if set(before) != set(after):
            return f"{where}: keys changed, {sorted(map(str, set(before) ^ set(after)))[:10]}"
        for k in before:
            diff = same_state(before[k], after[k], f"{where}[{k!r}]")
            if diff:
                return diff
        return None
    if isinstance(before, (list, tuple)) and isinstance(after, (list, tuple)):
        if len(before) != len(after):
            return f"{where}: length {len(before)} -> {len(after)}"
        for i, (x, y) in enumerate(zip(before, after)):
            diff = same_state(x, y, f"{where}[{i}]")
            if diff:
                return diff
        return None
    if isinstance(before, float) and isinstance(after, float) and math.isnan(before) and math.isnan(after):
        return None
    return None if before == after else f"{where}: {before!r} -> {after!r}"


def _files(root: str) -> List[str]:
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


def _python_function(x: Any) -> Any:
    return x


class AdaptorContract:
    """The conformance suite; subclass it as ``Test...`` and define a ``spec`` fixture returning a ContractSpec."""

    #: trials per tune call in the suite (small: the checks are about the contract, not about accuracy)
    max_trials = 3

    # ------------------------------------------------------------------ helpers
    @classmethod
    def conf(cls, spec: ContractSpec, workspace: str, **tuning: Any) -> Dict[str, Any]:
        """The suite's config: 2 calibration batches, an easy goal, modelsize objective, the spec's sections."""
        conf: Dict[str, Dict[str, Any]] = {
            "framework": {"name": spec.framework},
            "calibration": {"iterations": [min(2, len(spec.batches))]},
            "tuning": {"strategy": "basic", "accuracy_criterion": {"relative": 0.5}, "objective": "modelsize",
                       "max_trials": cls.max_trials, "workspace": {"path": workspace}},
        }
        for section, values in spec.config.items():
            conf[section] = {**conf.get(section, {}), **copy.deepcopy(dict(values))}
        conf["tuning"].update(tuning)
        return conf

    @staticmethod
    def load(spec: ContractSpec, adaptor: Adaptor, path: str, fp32: Any) -> Any:
        return spec.load(adaptor, path, fp32) if spec.load else adaptor.load(path)

    def _assert_unchanged(self, spec: ContractSpec, before: Any, model: Any, what: str) -> None:
        diff = same_state(before, spec.state(model))
        assert diff is None, f"{what} changed the user's FP32 model: {diff}"

    @pytest.fixture(scope="class")
    @classmethod
    def tuned(cls, spec: ContractSpec, tmp_path_factory: Any) -> Tuple[Tuner, Any, Any, str]:
        """One tune run shared by the save/load tests: (tuner, fp32 model, quantized model, saved directory)."""
        root = tmp_path_factory.mktemp("contract")
        model = spec.make_model()
        tuner = Tuner(cls.conf(spec, str(root / "ws"), max_trials=1))
        q = tuner.tune(model, q_dataloader=spec.batches, eval_func=lambda m: 1.0)
        assert q is not None and tuner.adaptor is not None, "tune returned no model for an always-met goal"
        saved = str(root / "saved")
        tuner.adaptor.save(q, saved)
        return tuner, model, q, saved

    # ------------------------------------------------------------------ the crafted pickle works
    def test_the_crafted_pickle_runs_code_when_unpickled(self, tmp_path: Any) -> None:
        for name in ("pickle_exec", "pickle_open_protocol_0"):
            marker = str(tmp_path / f"{name}.marker")
            pickle.loads(CORRUPTIONS[name](b"", marker))
            assert os.path.exists(marker), f"{name} did not run: the bad-file tests would prove nothing"

    # ------------------------------------------------------------------ models the adaptor does not take
    @pytest.mark.parametrize("kind", ["plain_object", "numpy_array", "python_function", "missing_path",
                                      "model_class", "spec_foreign_models"])
    def test_tune_refuses_a_model_it_does_not_take_before_running_anything(self, spec: ContractSpec, kind: str,
                                                                           tmp_path: Any, monkeypatch: Any) -> None:
        generic: Dict[str, Callable[[], Any]] = {
            "plain_object": object,
            "numpy_array": lambda: np.zeros((2, 8), dtype=np.float32),
            "python_function": lambda: _python_function,
            "missing_path": lambda: str(tmp_path / "no-such-model"),
            "model_class": lambda: type(spec.make_model()),
        }
        models = dict(spec.foreign_models) if kind == "spec_foreign_models" else {kind: generic[kind]}
        adaptor_cls = load_plugin("adaptor", spec.framework)
        ran: List[str] = []
        for hook in ("query_fw_capability", "quantize", "infer", "evaluate", "inspect_tensor"):
            real = getattr(adaptor_cls, hook)

            def record(*args: Any, _hook: str = hook, _real: Any = real, **kwargs: Any) -> Any:
                ran.append(_hook)
                return _real(*args, **kwargs)
            monkeypatch.setattr(adaptor_cls, hook, record)
        for name, make in models.items():
            calls: List[Any] = []

            def eval_func(model: Any) -> float:
                calls.append(model)
                return 1.0
            tuner = Tuner(self.conf(spec, str(tmp_path / name / "ws")))
            with pytest.raises(ConfigError) as info:
                tuner.tune(make(), q_dataloader=spec.batches, eval_func=eval_func)
            assert "framework" in info.value.path or spec.framework in str(info.value), (name, str(info.value))
            assert calls == [] and ran == [], f"{name}: {ran or 'eval_func'} ran before the refusal"

    # ------------------------------------------------------------------ the user's model stays as it was
    @pytest.mark.parametrize("usage", ["eval_dataloader", "eval_func"])
    def test_tune_leaves_the_fp32_model_as_it_was(self, spec: ContractSpec, usage: str, tmp_path: Any) -> None:
        model = spec.make_model()
        before = spec.state(model)
        if usage == "eval_dataloader":
            tuner = Tuner(self.conf(spec, str(tmp_path / "ws"), metric=dict(spec.metric), max_trials=2))
            tuner.tune(model, q_dataloader=spec.batches, eval_dataloader=spec.batches)
        else:
            seen: List[Any] = []

            def eval_func(m: Any) -> float:
                seen.append(m)
                return 1.0 if len(seen) > 1 else 2.0  # every trial misses the goal: all max_trials run

            tuner = Tuner(self.conf(spec, str(tmp_path / "ws"), max_trials=2))
            tuner.tune(model, q_dataloader=spec.batches, eval_func=eval_func)
            assert seen[0] is model and all(m is not model for m in seen[1:]), "trials must get new models"
        assert tuner.history is not None and len(tuner.history.trials) >= 1
        self._assert_unchanged(spec, before, model, f"tune with {usage}")

    def test_the_mse_strategy_leaves_the_fp32_model_as_it_was_or_is_refused(self, spec: ContractSpec,
                                                                            tmp_path: Any) -> None:
        model = spec.make_model()
        before = spec.state(model)
        tuner = Tuner(self.conf(spec, str(tmp_path / "ws"), strategy="mse", max_trials=2,
                                accuracy_criterion={"relative": 0.0}))
        adaptor_cls = load_plugin("adaptor", spec.framework)
        if adaptor_cls.inspect_tensor is not Adaptor.inspect_tensor:
            tuner.tune(model, q_dataloader=spec.batches, eval_func=lambda m: 1.0 if m is model else 0.5)
            assert tuner.history is not None and len(tuner.history.trials) >= 1
        else:
            with pytest.raises(ConfigError, match="inspect_tensor"):
                tuner.tune(model, q_dataloader=spec.batches, eval_func=lambda m: 1.0)
        self._assert_unchanged(spec, before, model, "tune with the mse strategy")

    # ------------------------------------------------------------------ save / load
    def test_load_reads_back_what_save_wrote(self, spec: ContractSpec, tuned: Tuple[Tuner, Any, Any, str]) -> None:
        tuner, fp32, q, saved = tuned
        assert tuner.adaptor is not None and _files(saved), "save wrote no file"
        loaded = self.load(spec, tuner.adaptor, saved, fp32)
        inputs = batch_inputs(spec.batches[0])
        want, got = to_numpy(tuner.adaptor.infer(q, inputs)), to_numpy(tuner.adaptor.infer(loaded, inputs))
        assert np.allclose(np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64),
                           atol=spec.atol, rtol=0), "the loaded model's outputs differ from the saved model's"

    def test_fingerprint_is_the_same_for_the_same_model(self, spec: ContractSpec,
                                                        tuned: Tuple[Tuner, Any, Any, str]) -> None:
        tuner = tuned[0]
        assert tuner.adaptor is not None
        other = type(tuner.adaptor)(tuner.config)
        first, second = tuner.adaptor.fingerprint(spec.make_model()), other.fingerprint(spec.make_model())
        assert isinstance(first, str) and first == second, "fingerprint differs for the same model: resume breaks"

    @pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
    def test_load_refuses_a_damaged_file_and_runs_nothing(self, spec: ContractSpec, corruption: str,
                                                          tuned: Tuple[Tuner, Any, Any, str], tmp_path: Any) -> None:
        tuner, fp32, _q, saved = tuned
        assert tuner.adaptor is not None
        wrong: List[str] = []
        for rel in _files(saved):
            target = str(tmp_path / rel.replace(os.sep, "_"))
            shutil.copytree(saved, target)
            marker = str(tmp_path / (rel.replace(os.sep, "_") + ".marker"))
            with open(os.path.join(target, rel), "rb") as f:
                content = f.read()
            with open(os.path.join(target, rel), "wb") as f:
                f.write(CORRUPTIONS[corruption](content, marker))
            try:
                self.load(spec, tuner.adaptor, target, fp32)
                wrong.append(f"{rel}: loaded without an error")
            except ModelFileError as exc:
                if not (isinstance(exc.file, str) and exc.file and str(exc)):
                    wrong.append(f"{rel}: ModelFileError without a file name or message")
            except Exception as exc:  # noqa: BLE001 - any other error type breaks the contract
                wrong.append(f"{rel}: {type(exc).__name__} instead of ilit.ModelFileError: {str(exc)[:200]}")
            assert not os.path.exists(marker), f"{rel}: loading the {corruption} file ran its code"
        assert not wrong, f"load with one file {corruption}: " + "; ".join(wrong)

    # ------------------------------------------------------------------ failing user code
    @pytest.mark.parametrize("failure", ["raise", "nan"])
    def test_an_eval_func_failing_on_one_trial_is_recorded_and_tuning_goes_on(self, spec: ContractSpec, failure: str,
                                                                              tmp_path: Any) -> None:
        calls: List[Any] = []

        def eval_func(model: Any) -> float:
            calls.append(model)
            if len(calls) == 2:  # the first trial (call 1 is the FP32 baseline)
                if failure == "raise":
                    raise RuntimeError("eval broke on trial 1")
                return float("nan")
            return 1.0

        tuner = Tuner(self.conf(spec, str(tmp_path / "ws")))
        try:
            q = tuner.tune(spec.make_model(), q_dataloader=spec.batches, eval_func=eval_func)
        except RuntimeError:
            if tuner.history is not None and len(tuner.history.trials) == 1:
                pytest.fail("the tuning space holds one quantized config, and this check needs two: give the spec "
                            "a model or a config (e.g. two schemes or granularities) with at least two")
            raise
        assert tuner.history is not None and len(tuner.history.trials) >= 2, "tuning stopped after one trial"
        first, second = tuner.history.trials[:2]
        expected = "RuntimeError: eval broke on trial 1" if failure == "raise" else "nan"
        assert first.error is not None and expected in first.error and not first.meets
        assert second.error is None and second.meets and tuner.best_trial is second and q is not None
        with open(os.path.join(str(tmp_path / "ws"), "history.json")) as f:
            assert expected in json.dumps(json.load(f)), "the failure is not in history.json"

    def test_an_eval_func_failing_on_the_fp32_model_stops_tune_with_that_error(self, spec: ContractSpec,
                                                                               tmp_path: Any, monkeypatch: Any) -> None:
        error = KeyError("labels")
        quantized: List[Any] = []
        adaptor_cls = load_plugin("adaptor", spec.framework)
        real = adaptor_cls.quantize

        def quantize(*args: Any, **kwargs: Any) -> Any:
            quantized.append(args)
            return real(*args, **kwargs)
        monkeypatch.setattr(adaptor_cls, "quantize", quantize)

        def eval_func(model: Any) -> float:
            raise error

        tuner = Tuner(self.conf(spec, str(tmp_path / "ws")))
        with pytest.raises(KeyError) as info:
            tuner.tune(spec.make_model(), q_dataloader=spec.batches, eval_func=eval_func)
        assert info.value is error
        assert quantized == [], "a config was quantized although the FP32 baseline failed"
        assert tuner.history is None or tuner.history.trials == []
