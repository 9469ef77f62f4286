"""``history.json``: every trial of a tuning run, written atomically; the source of resume.

It is plain JSON data (never pickle), so a resume file cannot run code.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Union

from .errors import ResumeError
from .tune_cfg import TuneCfg, cfg_fingerprint
from .version import __version__
from .workspace import TMP_HISTORY_PREFIX, TMP_HISTORY_SUFFIX

__all__ = ["Trial", "History", "write_json_atomic"]

FORMAT = 1


@dataclass
class Trial:
    """One evaluated config."""

    trial: int
    tune_cfg: TuneCfg
    accuracy: float
    objective: float
    meets: bool
    quantize_s: float
    evaluate_s: float
    objective_s: float
    elapsed_s: float
    fingerprint: str = ""
    error: Optional[str] = None  # set when quantize or evaluate raised; the trial then never meets
    #: the objective against the FP32 model measured in the same window (see :class:`ilit.Comparison`);
    #: None where it was not measured (a trial below the goal, or a history written before these fields)
    ratio: Optional[float] = None
    spread: Optional[float] = None
    reliable: Optional[bool] = None

    def __post_init__(self) -> None:
        if not self.fingerprint:
            self.fingerprint = cfg_fingerprint(self.tune_cfg)


@dataclass
class History:
    """The whole record of a run; ``best`` is the trial number of the best passing trial."""

    config_fingerprint: str
    model_fingerprint: str
    config: Dict[str, Any]
    metric_higher_is_better: bool = True
    objective: str = "performance"
    baseline_accuracy: Optional[float] = None
    baseline_objective: Optional[float] = None
    trials: List[Trial] = field(default_factory=list)
    best: Optional[int] = None
    finished: bool = False
    #: what the strategy learned (e.g. per-op sensitivity), for reports; see ``Strategy.insights``
    strategy_insights: Dict[str, Any] = field(default_factory=dict)
    stop_reason: Optional[str] = None
    #: facts about the run for reports: framework, versions, started, baseline_s, total_s, resumed_trials
    run: Dict[str, Any] = field(default_factory=dict)
    ilit_version: str = __version__
    format: int = FORMAT

    def to_dict(self) -> Dict[str, Any]:
        """Plain JSON data: NaN (an unmeasured or failed value) becomes null, as strict JSON requires."""
        return _nan_to_none(asdict(self))

    def save(self, path: str) -> None:
        write_json_atomic(path, self.to_dict())

    @classmethod
    def load(cls, path: Union[str, "os.PathLike[str]"]) -> "History":
        """Read a history.json, refusing anything that is not exactly what ilit writes (it never unpickles)."""
        path = os.fspath(path)
        try:
            with open(path, "rb") as f:
                raw = f.read(_MAX_BYTES + 1)
        except FileNotFoundError:
            raise ResumeError(f"resume_file {path!r} does not exist; pass the history.json of an earlier run") from None
        except OSError as exc:
            raise ResumeError(f"cannot read resume_file {path!r}: {exc.strerror or exc}") from None
        if len(raw) > _MAX_BYTES:
            raise ResumeError(f"resume_file {path!r} is over {_MAX_BYTES >> 20} MB, far more than any ilit history")
        if raw[:1] == b"\x80" or raw[:2] in (b"PK", b"\x1f\x8b"):
            raise ResumeError(f"resume_file {path!r} is a binary file (a pickle or an archive?), not a history.json; "
                              "ilit never unpickles: pass the JSON file an earlier ilit run wrote in its workspace")
        try:
            data = json.loads(raw.decode("utf-8"), parse_constant=_refuse_constant)
        except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise ResumeError(f"resume_file {path!r} is not a valid history.json ({exc}); "
                              "it must be the JSON file an earlier ilit run wrote in its workspace") from None
        return cls(**_checked(data, path))

    def check_resumable(self, fresh: "History", path: str) -> None:
        """Raise :class:`ResumeError` unless this (loaded) history can continue the run ``fresh`` describes."""
        if self.config_fingerprint != fresh.config_fingerprint:
            raise ResumeError(f"resume_file {path!r} was written with a different config "
                              "(only tuning.timeout, tuning.max_trials and tuning.workspace may change); "
                              "start without resume_file or use the original YAML")
        if self.model_fingerprint != fresh.model_fingerprint:
            raise ResumeError(f"resume_file {path!r} was written for a different model; "
                              "resume with the same FP32 model or start without resume_file")

    def trial(self, number: Optional[int]) -> Optional[Trial]:
        for t in self.trials:
            if t.trial == number:
                return t
        return None


_MAX_BYTES = 256 << 20
_NUMBER = (int, float)
_TOP: Dict[str, Any] = {  # key -> allowed types; None in a tuple means null is allowed
    "config_fingerprint": (str,), "model_fingerprint": (str,), "config": (dict,),
    "metric_higher_is_better": (bool,), "objective": (str,), "baseline_accuracy": (*_NUMBER, None),
    "baseline_objective": (*_NUMBER, None), "trials": (list,), "best": (int, None), "finished": (bool,),
    "ilit_version": (str,), "format": (int,), "strategy_insights": (dict,), "stop_reason": (str, None),
    "run": (dict,),
}
_TRIAL: Dict[str, Any] = {
    "trial": (int,), "tune_cfg": (dict,), "accuracy": (*_NUMBER, None), "objective": (*_NUMBER, None),
    "meets": (bool,), "quantize_s": _NUMBER, "evaluate_s": _NUMBER, "objective_s": _NUMBER, "elapsed_s": _NUMBER,
    "fingerprint": (str,), "error": (str, None), "ratio": (*_NUMBER, None), "spread": (*_NUMBER, None),
    "reliable": (bool, None),
}
#: keys added after format 1 was first written: a file without them is still a valid history
_OPTIONAL = {"strategy_insights", "stop_reason", "run", "ratio", "spread", "reliable"}


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not strict JSON (ilit writes NaN as null)")


def _check_fields(d: Any, schema: Dict[str, Any], where: str, path: str) -> None:
    if not isinstance(d, dict):
        raise ResumeError(f"resume_file {path!r}: {where} is {type(d).__name__}, expected an object; "
                          "the file is not an ilit history")
    missing = [k for k in schema if k not in d and k not in _OPTIONAL]
    extra = [k for k in d if k not in schema]
    if missing or extra:
        raise ResumeError(f"resume_file {path!r}: {where} has " + "; ".join(
            p for p in (f"missing keys {missing}" if missing else "", f"unknown keys {extra}" if extra else "") if p)
            + "; the file is not an ilit history of this version (or was edited)")
    for key, types in schema.items():
        if key not in d:
            continue
        v = d[key]
        ok = (v is None and None in types) or (
            v is not None and isinstance(v, tuple(t for t in types if t is not None))
            and not (isinstance(v, bool) and bool not in types))
        if not ok:
            raise ResumeError(f"resume_file {path!r}: {where}.{key} is {v!r}, which is not a valid value there")


def _checked(data: Any, path: str) -> Dict[str, Any]:
    """The keyword arguments of History from a parsed file, or a ResumeError saying what is wrong."""
    if not isinstance(data, dict) or "format" not in data:
        raise ResumeError(f"resume_file {path!r} is JSON but not an ilit history (no 'format' key); "
                          "pass the history.json an earlier ilit run wrote in its workspace")
    if data["format"] != FORMAT:
        raise ResumeError(f"resume_file {path!r} is history format {data['format']!r} (written by ilit "
                          f"{data.get('ilit_version', '?')}); this ilit {__version__} reads format {FORMAT}: "
                          "start without resume_file, or resume with the ilit version that wrote it")
    _check_fields(data, _TOP, "the file", path)
    trials = []
    for i, t in enumerate(data["trials"]):
        _check_fields(t, _TRIAL, f"trials[{i}]", path)
        if t["fingerprint"] != cfg_fingerprint(t["tune_cfg"]):
            raise ResumeError(f"resume_file {path!r}: trials[{i}] does not match its fingerprint; the file was "
                              "edited or damaged, so it cannot be trusted for resume")
        values: Dict[str, Any] = {k: (math.nan if k in ("accuracy", "objective") and t[k] is None else t[k])
                                  for k in _TRIAL if k in t}
        trials.append(Trial(**values))
    numbers = [t.trial for t in trials]
    if numbers != list(range(1, len(trials) + 1)):
        raise ResumeError(f"resume_file {path!r}: trial numbers {numbers[:10]} are not 1, 2, 3, ...; "
                          "the file was edited or damaged")
    return {**data, "trials": trials}


def _nan_to_none(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nan_to_none(v) for v in value]
    return value


def write_json_atomic(path: str, data: Any) -> None:
    """Write JSON to a temporary file beside ``path`` and rename it over ``path``.

    A crash mid-write leaves the previous file intact, never a truncated one.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TMP_HISTORY_PREFIX, suffix=TMP_HISTORY_SUFFIX, dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, allow_nan=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
