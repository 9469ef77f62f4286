"""The YAML config, validated into typed, frozen objects with defaults.

Every list-valued option may be written as a single value or a list; ``None`` means "whatever the
adaptor supports". Unknown keys are errors (:class:`ilit.ConfigError`), never silently ignored.
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
import os
import stat
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Optional, Sequence, Tuple, Union

import yaml

from .errors import ConfigError
from .tune_cfg import APPROACHES, DYNAMIC, STATIC, TENSOR_FIELDS

__all__ = [
    "Config",
    "FrameworkConfig",
    "CalibrationConfig",
    "TensorQuantConfig",
    "QuantizationConfig",
    "AccuracyCriterion",
    "TuningConfig",
    "load_config",
    "APPROACHES",
    "ALGORITHMS",
    "SCHEMES",
    "GRANULARITIES",
    "DTYPES",
]

ALGORITHMS = ("minmax", "kl", "percentile")
SCHEMES = ("sym", "asym")
GRANULARITIES = ("per_channel", "per_tensor")
DTYPES = ("int8", "uint8", "fp32")
DEVICES = ("cpu",)

_ALLOWED = {"dtype": DTYPES, "scheme": SCHEMES, "granularity": GRANULARITIES, "algorithm": ALGORITHMS}

Choices = Optional[Tuple[str, ...]]


@dataclass(frozen=True)
class FrameworkConfig:
    """Which adaptor to use (``None``: detect it from the model) and graph inputs/outputs."""

    name: Optional[str] = None
    inputs: Optional[Tuple[str, ...]] = None
    outputs: Optional[Tuple[str, ...]] = None


@dataclass(frozen=True)
class TensorQuantConfig:
    """Allowed choices for a weight or activation tensor; ``None`` = all the adaptor supports."""

    dtype: Choices = None
    scheme: Choices = None
    granularity: Choices = None
    algorithm: Choices = None

    def get(self, name: str) -> Choices:
        return getattr(self, name)


@dataclass(frozen=True)
class CalibrationConfig:
    """How many calibration batches to try, and the calibration algorithms allowed."""

    iterations: Tuple[int, ...] = (10,)
    weight_algorithm: Choices = None
    activation_algorithm: Choices = None


@dataclass(frozen=True)
class QuantizationConfig:
    """The approach and the global (model-wise) quantization choices."""

    approach: str = STATIC
    weight: TensorQuantConfig = field(default_factory=TensorQuantConfig)
    activation: TensorQuantConfig = field(default_factory=TensorQuantConfig)


@dataclass(frozen=True)
class AccuracyCriterion:
    """Allowed accuracy loss against the FP32 baseline: relative (fraction) or absolute."""

    relative: Optional[float] = 0.01
    absolute: Optional[float] = None

    def threshold(self, baseline: float, higher_is_better: bool = True) -> float:
        """The worst accuracy that still meets the criterion for this baseline."""
        if self.relative is not None:
            delta = abs(baseline) * self.relative
        else:
            delta = float(self.absolute)  # type: ignore[arg-type]
        return baseline - delta if higher_is_better else baseline + delta

    def met(self, accuracy: float, baseline: float, higher_is_better: bool = True) -> bool:
        """Whether ``accuracy`` is within the allowed loss of ``baseline``."""
        limit = self.threshold(baseline, higher_is_better)
        # a hair of tolerance so that "exactly at the limit" is not lost to float rounding
        tol = 1e-12 * max(1.0, abs(limit))
        return accuracy >= limit - tol if higher_is_better else accuracy <= limit + tol

    def describe(self) -> str:
        if self.relative is not None:
            return f"relative loss <= {self.relative:g}"
        return f"absolute loss <= {self.absolute:g}"


@dataclass(frozen=True)
class OpOverride:
    """Per-op narrowing from ``tuning.ops``; ``fallback`` forces the op to fp32."""

    weight: TensorQuantConfig = field(default_factory=TensorQuantConfig)
    activation: TensorQuantConfig = field(default_factory=TensorQuantConfig)
    fallback: bool = False


@dataclass(frozen=True)
class TuningConfig:
    """The search: strategy, metric, criterion, objective and its stop rules."""

    strategy: str = "basic"
    metric: Optional[Tuple[str, Any]] = None
    accuracy_criterion: AccuracyCriterion = field(default_factory=AccuracyCriterion)
    objective: str = "performance"
    timeout: float = 0.0
    max_trials: int = 100
    random_seed: int = 1978
    ops: Mapping[str, OpOverride] = field(default_factory=dict)
    workspace_path: str = "./ilit_workspace"


@dataclass(frozen=True)
class Config:
    """A whole validated ilit config. Build one with :func:`load_config`."""

    framework: FrameworkConfig = field(default_factory=FrameworkConfig)
    device: str = "cpu"
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    quantization: QuantizationConfig = field(default_factory=QuantizationConfig)
    tuning: TuningConfig = field(default_factory=TuningConfig)
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def search_fingerprint(self) -> str:
        """A hash of everything that shapes the search; stop rules and paths are left out.

        Resuming with a longer ``timeout`` or more ``max_trials`` is allowed; anything else differing
        makes a history unusable.
        """
        d = asdict(self)
        d.pop("raw", None)
        for k in ("timeout", "max_trials", "workspace_path"):
            d["tuning"].pop(k, None)
        blob = json.dumps(d, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()


# ----------------------------------------------------------------------------- validation helpers


SECTIONS = ("framework", "device", "calibration", "quantization", "tuning")
_MAX_NODES = 100_000  # a config is a few hundred values; more is a mistake (or a YAML alias bomb)
_MAX_DEPTH = 40
SEED_MAX = 2**32 - 1  # numpy's RandomState takes seeds below 2**32
_MAX_INT = 2**53  # integers above this are not exact as floats; no config value needs one
#: a YAML config file larger than this is refused before parsing (a config is a few kB; tuning.ops for
#: thousands of ops stays well under it)
MAX_CONFIG_BYTES = 1 << 20
_MAX_SCALAR = 4096  # characters of one YAML scalar (a path is at most 4096 bytes on Linux)
_MAX_INT_DIGITS = 40


def _mapping(value: Any, path: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        if not path:
            raise ConfigError("", f"a config is a mapping with the sections {', '.join(SECTIONS)}; "
                              f"got {type(value).__name__} {_short(value)}")
        raise ConfigError(path, f"expected a mapping, got {type(value).__name__} {_short(value)}")
    return value


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def plain_data(value: Any, path: str = "") -> Any:
    """A JSON-safe copy of a loaded YAML document: string keys, finite floats, dates and other scalars as text.

    It is what the history records. Deep nesting or a huge document (e.g. a YAML alias bomb) is refused.
    """
    budget = [_MAX_NODES]

    def walk(v: Any, where: str, depth: int) -> Any:
        budget[0] -= 1
        if budget[0] < 0:
            raise ConfigError(path, f"the config is too large (over {_MAX_NODES} values); is it the right file?")
        if depth > _MAX_DEPTH:
            raise ConfigError(where, f"nested more than {_MAX_DEPTH} levels deep; is it the right file?")
        if isinstance(v, Mapping):
            out: dict = {}
            for k, x in v.items():
                key = _key(k, where)
                here = f"{where}.{key}" if where else key
                if key in out:
                    raise ConfigError(here, f"given twice (as {_short(k)} and as another key that reads the same); "
                                      "write each key once")
                out[key] = walk(x, here, depth + 1)
            return out
        if isinstance(v, (set, frozenset)):
            raise ConfigError(where, f"a set ({_short(v)}) has no order, so the search would depend on the Python hash "
                              "seed; write a list")
        if isinstance(v, (list, tuple)):
            return [walk(x, where, depth + 1) for x in v]
        v = _scalar(v, where)
        if isinstance(v, float):
            return v if math.isfinite(v) else str(v)
        return v

    return walk(value, path, 0)


def _scalar(v: Any, where: str) -> Any:
    """A plain ``None``/bool/int/float/str for one config value: numpy and torch scalars (and 0-d arrays)
    become Python numbers, bytes are decoded as UTF-8, other objects become their text."""
    if v is None or type(v) in (bool, int, float, str):
        return v
    for base in (bool, int, float, str):  # subclasses (numpy's float64, str_; an IntEnum) as the plain type
        if isinstance(v, base):
            return base(v)
    if isinstance(v, (bytes, bytearray)):
        try:
            return bytes(v).decode("utf-8")
        except UnicodeDecodeError:
            raise ConfigError(where, f"{_short(v)} is bytes that are not UTF-8 text; give a str") from None
    item = getattr(v, "item", None)
    if callable(item) and tuple(getattr(v, "shape", (None,))) == ():  # numpy scalar, 0-d array or tensor
        try:
            got = item()
        except Exception:  # noqa: BLE001 - an object whose item() is not numpy's
            got = None
        if got is None or isinstance(got, (bool, int, float, str)):
            return got
    if isinstance(v, numbers.Integral):
        return int(v)
    if isinstance(v, numbers.Real):
        return float(v)
    return str(v)


def _key(k: Any, where: str) -> str:
    """A mapping key as text (YAML reads ``1:`` as an int); only scalars can be keys."""
    k = _scalar(k, where) if not isinstance(k, (list, tuple, dict, set, frozenset)) else k
    if not isinstance(k, (str, int, float, bool)) and k is not None:
        raise ConfigError(where, f"a key must be a name, got {type(k).__name__} {_short(k)}")
    return str(k)


def _check_keys(d: Mapping[str, Any], path: str, allowed: Sequence[str]) -> None:
    for key in d:
        if key not in allowed:
            where = f"{path}.{key}" if path else str(key)
            raise ConfigError(where, f"unknown key; allowed keys here are: {', '.join(allowed)}")


def _choices(value: Any, path: str, allowed: Sequence[str]) -> Choices:
    if value is None:
        return None
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not items:
        raise ConfigError(path, f"expected one of {list(allowed)} or a non-empty list of them, got {_short(value)}")
    out = []
    for item in items:
        if not isinstance(item, str) or item not in allowed:
            raise ConfigError(path, f"{_short(item)} is not valid; expected one of {list(allowed)}")
        if item not in out:
            out.append(item)
    return tuple(out)


def _names(value: Any, path: str) -> Optional[Tuple[str, ...]]:
    if value is None:
        return None
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(i, str) for i in items):
        raise ConfigError(path, f"expected a name or a list of names, got {_short(value)}")
    return tuple(items)


def _number(value: Any, path: str, *, minimum: float = 0.0, integer: bool = False,
            maximum: Optional[float] = None) -> Any:
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    # an int too large for a float (10**400) has no finite float value: math.isfinite would overflow
    if ok and isinstance(value, int) and not isinstance(value, bool) and abs(value) > _MAX_INT:
        raise ConfigError(path, f"{_short(value, 40)} is too large (at most {_MAX_INT:.3g})")
    if (isinstance(value, bool) or not ok or not math.isfinite(value) or value < minimum
            or (maximum is not None and value > maximum)):
        kind = "an integer" if integer else "a finite number"
        bounds = f">= {minimum:g}" if maximum is None else f"from {minimum:g} to {maximum:g}"
        raise ConfigError(path, f"expected {kind} {bounds}, got {_short(value)}")
    return value


def _iterations(value: Any, path: str) -> Tuple[int, ...]:
    if isinstance(value, str):  # a comma-separated "10, 50"
        try:
            value = [int(v) for v in value.split(",") if v.strip()]
        except ValueError:
            raise ConfigError(path, f"expected batch counts like [10, 50], got {value!r}") from None
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, (list, tuple)) or not value:
        raise ConfigError(path, f"expected a positive batch count or a list of them, got {_short(value)}")
    return tuple(_number(v, path, minimum=1, integer=True) for v in value)


def _tensor(d: Any, path: str) -> TensorQuantConfig:
    d = _mapping(d, path)
    _check_keys(d, path, TENSOR_FIELDS)
    return TensorQuantConfig(**{k: _choices(d.get(k), f"{path}.{k}", _ALLOWED[k]) for k in TENSOR_FIELDS})


def _metric(value: Any, path: str) -> Optional[Tuple[str, Any]]:
    if value is None:
        return None
    if isinstance(value, str):
        return (value.lower(), None)
    if isinstance(value, Mapping) and len(value) == 1:
        (name, args), = value.items()
        if isinstance(name, str):
            return (name.lower(), args)
    raise ConfigError(path, f"expected a metric name or a one-key mapping like {{topk: 1}}, got {_short(value)}")


def _criterion(value: Any, path: str) -> AccuracyCriterion:
    d = _mapping(value, path)
    if not d:
        return AccuracyCriterion()
    _check_keys(d, path, ("relative", "absolute"))
    given = [k for k in ("relative", "absolute") if d.get(k) is not None]
    if len(given) != 1:
        raise ConfigError(path, "give exactly one of 'relative' or 'absolute'")
    key = given[0]
    num = _number(d[key], f"{path}.{key}")
    if key == "relative":
        if num >= 1:
            raise ConfigError(f"{path}.relative", f"a fraction below 1 is expected (0.01 = 1%), got {num!r}")
        return AccuracyCriterion(relative=float(num))
    return AccuracyCriterion(relative=None, absolute=float(num))


def _op_override(value: Any, path: str) -> OpOverride:
    d = _mapping(value, path)
    _check_keys(d, path, ("weight", "activation"))
    weight = _tensor(d.get("weight"), f"{path}.weight")
    act = _tensor(d.get("activation"), f"{path}.activation")
    fb = [t.dtype for t in (weight, act) if t.dtype and "fp32" in t.dtype]
    if any(dtypes != ("fp32",) for dtypes in fb):
        raise ConfigError(f"{path}", "dtype fp32 forces a fallback: write it alone (dtype: fp32), not in a list")
    if fb and len(fb) == 1 and any(t.dtype and t.dtype != ("fp32",) for t in (weight, act)):
        raise ConfigError(f"{path}", "one tensor is fp32 and the other quantized; an op runs in fp32 or in int8 as a "
                          "whole: write dtype: fp32 for both (fallback), or quantized dtypes for both")
    return OpOverride(weight=weight, activation=act, fallback=bool(fb))


def parse_config(data: Mapping[str, Any]) -> Config:
    """Validate an already-loaded YAML mapping into a :class:`Config`, section by section."""
    data = _mapping(data, "")
    data = plain_data(data)
    _check_keys(data, "", SECTIONS)
    framework = _framework(data.get("framework"))
    device = data.get("device", "cpu")
    if device not in DEVICES:
        raise ConfigError("device", f"only {list(DEVICES)} is supported, got {_short(device)}")
    calibration = _calibration(data.get("calibration"))
    return Config(framework=framework, device=device, calibration=calibration,
                  quantization=_quantization(data.get("quantization"), calibration),
                  tuning=_tuning(data.get("tuning")), raw=dict(data))


def _framework(value: Any) -> FrameworkConfig:
    fw = _mapping(value, "framework")
    _check_keys(fw, "framework", ("name", "inputs", "outputs"))
    name = fw.get("name")
    if name is not None and not isinstance(name, str):
        raise ConfigError("framework.name", f"expected an adaptor name such as 'pytorch', got {_short(name)}")
    return FrameworkConfig(
        name=name.lower() if name else None,
        inputs=_names(fw.get("inputs"), "framework.inputs"),
        outputs=_names(fw.get("outputs"), "framework.outputs"),
    )


def _calibration(value: Any) -> CalibrationConfig:
    cal = _mapping(value, "calibration")
    _check_keys(cal, "calibration", ("iterations", "algorithm"))
    algo = _mapping(cal.get("algorithm"), "calibration.algorithm")
    _check_keys(algo, "calibration.algorithm", ("weight", "activation"))
    return CalibrationConfig(
        iterations=_iterations(cal.get("iterations", [10]), "calibration.iterations"),
        weight_algorithm=_choices(algo.get("weight"), "calibration.algorithm.weight", ALGORITHMS),
        activation_algorithm=_choices(algo.get("activation"), "calibration.algorithm.activation", ALGORITHMS),
    )


def _quantization(value: Any, calibration: CalibrationConfig) -> QuantizationConfig:
    """The quantization section, with the calibration algorithms merged in and the conflicts between them refused."""
    q = _mapping(value, "quantization")
    _check_keys(q, "quantization", ("approach", "weight", "activation"))
    approach = q.get("approach", STATIC)
    if approach not in APPROACHES:
        raise ConfigError("quantization.approach",
                          f"{_short(approach)} is not valid; expected one of {list(APPROACHES)}")
    weight = _tensor(q.get("weight"), "quantization.weight")
    act = _tensor(q.get("activation"), "quantization.activation")
    for tensor, cal_algo, where in ((weight, calibration.weight_algorithm, "weight"),
                                    (act, calibration.activation_algorithm, "activation")):
        if tensor.algorithm and cal_algo and tensor.algorithm != cal_algo:
            raise ConfigError(f"quantization.{where}.algorithm",
                              f"conflicts with calibration.algorithm.{where}; set it in one place only")
    weight = TensorQuantConfig(weight.dtype, weight.scheme, weight.granularity,
                               weight.algorithm or calibration.weight_algorithm)
    act = TensorQuantConfig(act.dtype, act.scheme, act.granularity, act.algorithm or calibration.activation_algorithm)
    if approach == DYNAMIC and act.algorithm:
        where = ("calibration.algorithm.activation" if calibration.activation_algorithm
                 else "quantization.activation.algorithm")
        raise ConfigError(where, "conflicts with quantization.approach post_training_dynamic_quant, which computes "
                          "activation ranges at run time with no calibration algorithm; remove it, or use "
                          "post_training_static_quant")
    if weight.dtype == ("fp32",) or act.dtype == ("fp32",):
        where = "quantization.weight.dtype" if weight.dtype == ("fp32",) else "quantization.activation.dtype"
        raise ConfigError(where, "fp32 alone for every op leaves nothing to quantize; allow int8/uint8, and keep "
                          "single ops in fp32 with tuning.ops.<op>.weight.dtype: fp32")
    return QuantizationConfig(approach=approach, weight=weight, activation=act)


def _plugin_name(t: Mapping[str, Any], key: str, default: str, example: str) -> str:
    name = t.get(key, default)
    if key == "strategy" and isinstance(name, Mapping) and set(name) == {"name"}:
        name = name["name"]
    if not isinstance(name, str):
        raise ConfigError(f"tuning.{key}", f"expected a {key} name (a plugin) such as {example!r}, "
                          f"got {_short(name)}")
    return name.lower()


def _workspace_path(value: Any) -> str:
    ws = _mapping(value, "tuning.workspace")
    _check_keys(ws, "tuning.workspace", ("path",))
    ws_path = ws.get("path", "./ilit_workspace")
    if not isinstance(ws_path, str):
        raise ConfigError("tuning.workspace.path", f"expected a directory path, got {_short(ws_path)}")
    if not ws_path.strip() or "\0" in ws_path:
        raise ConfigError("tuning.workspace.path", f"expected a directory path, got {ws_path!r}")
    return ws_path


def _tuning(value: Any) -> TuningConfig:
    t = _mapping(value, "tuning")
    _check_keys(t, "tuning", ("strategy", "metric", "accuracy_criterion", "objective", "timeout",
                              "max_trials", "random_seed", "ops", "workspace"))
    strategy = _plugin_name(t, "strategy", "basic", "basic")
    objective = _plugin_name(t, "objective", "performance", "performance")
    workspace_path = _workspace_path(t.get("workspace"))
    ops_raw = _mapping(t.get("ops"), "tuning.ops")
    return TuningConfig(
        strategy=strategy,
        metric=_metric(t.get("metric"), "tuning.metric"),
        accuracy_criterion=_criterion(t.get("accuracy_criterion"), "tuning.accuracy_criterion"),
        objective=objective,
        timeout=float(_number(t.get("timeout", 0), "tuning.timeout")),
        max_trials=int(_number(t.get("max_trials", 100), "tuning.max_trials", minimum=1, integer=True)),
        random_seed=int(_number(t.get("random_seed", 1978), "tuning.random_seed", integer=True, maximum=SEED_MAX)),
        ops={str(k): _op_override(v, f"tuning.ops.{k}") for k, v in ops_raw.items()},
        workspace_path=workspace_path,
    )


def load_config(source: Union[str, "os.PathLike[str]", Mapping[str, Any], Config]) -> Config:
    """Load and validate a config from a YAML path, an already-loaded mapping, or a Config.

    The YAML is read with ``yaml.safe_load``: a tag like ``!!python/object`` is an error, never run.
    """
    if isinstance(source, Config):
        return source
    if isinstance(source, Mapping):
        return parse_config(source)
    if not isinstance(source, (str, bytes, os.PathLike)):
        raise ConfigError("", f"expected a YAML file path, a dict or an ilit.Config, got {type(source).__name__}")
    path = os.fsdecode(source)
    if not os.path.exists(path):
        raise ConfigError("", f"config file {path!r} does not exist; pass a YAML path or a dict")
    try:
        data = _read_yaml(path)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = exc.problem or exc.context or "syntax error"
        raise ConfigError("", f"{path} is not valid YAML{where}: {problem}") from None
    except yaml.YAMLError as exc:
        raise ConfigError("", f"{path} is not valid YAML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError("", f"{path!r} is not UTF-8 text ({exc.reason} at byte {exc.start}); "
                          "is it a YAML file?") from None
    except OSError as exc:
        raise ConfigError("", f"cannot read config file {path!r}: {exc.strerror or exc}") from None
    except RecursionError:
        raise ConfigError("", f"{path} is nested too deeply to be an ilit config") from None
    if data is None:
        raise ConfigError("", f"config file {path!r} is empty; start from ilit's template.yaml "
                          "(framework, quantization and tuning sections)")
    return parse_config(data)


def _read_yaml(path: str) -> Any:
    """The YAML document in ``path``, with its size and the parser's work bounded before anything is built.

    Only a regular file of at most :data:`MAX_CONFIG_BYTES` is read (a FIFO or ``/dev/zero`` is refused at
    once). The document is composed into nodes first and checked (node count, scalar length, integer digits,
    duplicate keys at any depth, sets); only then are Python objects built, with ``yaml.SafeLoader``.
    """
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError("", f"config path {path!r} is not a file (a directory, FIFO or device); "
                          "pass the YAML file itself")
    if st.st_size > MAX_CONFIG_BYTES:
        raise ConfigError("", f"config file {path!r} is {st.st_size} bytes; a config is a few kB and ilit reads at "
                          f"most {MAX_CONFIG_BYTES} bytes: is it the right file?")
    with open(path, "rb") as f:
        raw = f.read(MAX_CONFIG_BYTES + 1)
    if len(raw) > MAX_CONFIG_BYTES:  # the file grew since stat
        raise ConfigError("", f"config file {path!r} is over {MAX_CONFIG_BYTES} bytes: is it the right file?")
    loader = yaml.SafeLoader(raw.decode("utf-8"))
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_nodes(node)
        return loader.construct_document(node)
    finally:
        loader.dispose()


_INT_TAG, _SET_TAG, _MERGE_TAG = "tag:yaml.org,2002:int", "tag:yaml.org,2002:set", "tag:yaml.org,2002:merge"


def _check_nodes(root: yaml.Node) -> None:
    """Refuse a composed YAML document that is too large, holds huge scalars, repeats a key or holds a set.

    The walk is iterative and visits each node once (an alias is a second reference to a node, not a copy),
    so its work is bounded by the node count however the document nests or aliases.
    """
    seen: set = set()
    stack = [(root, "")]
    while stack:
        node, where = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if len(seen) > _MAX_NODES:
            raise ConfigError("", f"the config is too large (over {_MAX_NODES} values); is it the right file?")
        if isinstance(node, yaml.ScalarNode):
            if node.tag == _INT_TAG and len(node.value) > _MAX_INT_DIGITS:
                raise ConfigError(where, f"an integer of {len(node.value)} digits is far too large for any setting")
            if len(node.value) > _MAX_SCALAR:
                raise ConfigError(where, f"a value of {len(node.value)} characters (at most {_MAX_SCALAR}); "
                                  "is it the right file?")
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((item, where) for item in node.value)
        elif isinstance(node, yaml.MappingNode):
            if node.tag == _SET_TAG:
                raise ConfigError(where, "a set (!!set) has no order, so the search would depend on the Python "
                                  "hash seed; write a list")
            first: dict = {}
            for key, value in node.value:
                if key.tag == _MERGE_TAG:  # "<<: *anchor" merges are meant to be overridden
                    stack.append((value, where))
                    continue
                name = key.value if isinstance(key, yaml.ScalarNode) else None
                here = f"{where}.{name}" if where and name is not None else (name or where)
                if name is not None:
                    if (key.tag, name) in first:
                        raise ConfigError(here, f"the key {name!r} is given twice (line {first[(key.tag, name)]} and "
                                          f"line {key.start_mark.line + 1}); the second would silently replace the "
                                          "first: write it once")
                    first[(key.tag, name)] = key.start_mark.line + 1
                stack.append((key, where))
                stack.append((value, here))
