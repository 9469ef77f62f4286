"""``history.json``: every trial of a tuning run, written atomically; the source of resume.

It is plain JSON data (never pickle), so a resume file cannot run code.
"""

from __future__ import annotations

import json
import math
import os
import stat
import tempfile
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Union

from .errors import ResumeError
from .text import printable
from .tune_cfg import TuneCfg, cfg_fingerprint
from .version import __version__
from .workspace import TMP_HISTORY_PREFIX, TMP_HISTORY_SUFFIX

if TYPE_CHECKING:
    from .config import AccuracyCriterion

__all__ = ["Trial", "History", "write_json_atomic", "current_umask"]

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
    def load(cls, path: Union[str, "os.PathLike[str]"], criterion: Optional["AccuracyCriterion"] = None) -> "History":
        """Read a history.json, refusing anything that is not exactly what ilit writes (it never unpickles).

        Each trial's ``meets`` is re-derived with ``criterion`` (the running config's; by default the one in
        the file's recorded config) and a record that contradicts itself is a :class:`ResumeError`.
        """
        path = os.fspath(path)
        raw = _read_regular(path)
        if raw[:1] == b"\x80" or raw[:2] in (b"PK", b"\x1f\x8b"):
            raise ResumeError(f"resume_file {path!r} is a binary file (a pickle or an archive?), not a history.json; "
                              "ilit never unpickles: pass the JSON file an earlier ilit run wrote in its workspace")
        try:
            data = json.loads(raw.decode("utf-8"), parse_constant=_refuse_constant, parse_float=_finite_float)
        except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
            raise ResumeError(f"resume_file {path!r} is not a valid history.json ({reason}); "
                              "it must be the JSON file an earlier ilit run wrote in its workspace") from None
        history = cls(**_checked(data, path))
        history.check_verdicts(path, criterion)
        return history

    def check_verdicts(self, path: str, criterion: Optional["AccuracyCriterion"] = None) -> None:
        """Re-derive each trial's ``meets`` from its accuracy, the baseline and the recorded config's criterion;
        a record that contradicts itself (``meets: true`` below the goal, a best trial that does not meet it)
        was edited or damaged and is refused."""
        from .config import parse_config  # the config module imports nothing from here; kept local all the same
        from .errors import ConfigError

        if (self.baseline_accuracy is None) != (self.baseline_objective is None) or (
                self.trials and self.baseline_accuracy is None):
            raise ResumeError(f"resume_file {path!r}: baseline_accuracy is {self.baseline_accuracy!r} and "
                              f"baseline_objective is {self.baseline_objective!r}; a history with trials records both "
                              "(the file was edited or damaged): start without resume_file")
        if criterion is None:
            try:
                criterion = parse_config(self.config).tuning.accuracy_criterion
            except ConfigError as exc:
                raise ResumeError(f"resume_file {path!r}: its recorded config is not valid ({exc})") from None
        for i, t in enumerate(self.trials):
            should = (t.error is None and self.baseline_accuracy is not None and not math.isnan(t.accuracy)
                      and criterion.met(t.accuracy, float(self.baseline_accuracy), self.metric_higher_is_better))
            if t.meets != should:
                raise ResumeError(f"resume_file {path!r}: trials[{i}] says meets={t.meets} but its accuracy "
                                  f"{t.accuracy!r} against the baseline {self.baseline_accuracy!r} "
                                  f"({criterion.describe()}) {'meets' if should else 'does not meet'} the goal; the "
                                  "file was edited or damaged, so it cannot be trusted for resume")
            if t.meets and math.isnan(t.objective):
                raise ResumeError(f"resume_file {path!r}: trials[{i}] meets the goal but has no objective value; "
                                  "the file was edited or damaged")
        if self.best is not None:
            best = self.trial(self.best)
            if best is None or not best.meets:
                raise ResumeError(f"resume_file {path!r}: best is trial {self.best}, which "
                                  f"{'does not exist' if best is None else 'does not meet the goal'}; "
                                  "the file was edited or damaged")


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


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400 parses as inf: ilit never writes one
        raise ValueError(f"{text[:40]} is not a finite number")
    return value


def _read_regular(path: str) -> bytes:
    """The bytes of ``path`` if it is a regular file of at most ``_MAX_BYTES``, checked before reading.

    It is opened non-blocking (a FIFO would otherwise block ``open`` forever) and its type and size are
    taken from the open file, so ``/dev/zero`` or a pipe is refused without reading a byte.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    except FileNotFoundError:
        raise ResumeError(f"resume_file {path!r} does not exist; pass the history.json of an earlier run") from None
    except OSError as exc:
        raise ResumeError(f"cannot read resume_file {path!r}: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ResumeError(f"resume_file {path!r} is not a regular file (a FIFO, a device or a directory?); "
                              "pass the history.json an earlier ilit run wrote in its workspace")
        if st.st_size > _MAX_BYTES:
            raise ResumeError(f"resume_file {path!r} is {st.st_size} bytes, over {_MAX_BYTES >> 20} MB, far more than "
                              "any ilit history")
    except BaseException:
        os.close(fd)
        raise
    with os.fdopen(fd, "rb") as f:
        raw = f.read(_MAX_BYTES + 1)
    if len(raw) > _MAX_BYTES:  # it grew since fstat
        raise ResumeError(f"resume_file {path!r} is over {_MAX_BYTES >> 20} MB, far more than any ilit history")
    return raw


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
                          f"{printable(data.get('ilit_version', '?'), 40)}); "
                          f"this ilit {__version__} reads format {FORMAT}: "
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
    # the pid in the name tells prepare_workspace whose file it is: it tidies only those of dead processes
    fd, tmp = tempfile.mkstemp(prefix=f"{TMP_HISTORY_PREFIX}{os.getpid()}-", suffix=TMP_HISTORY_SUFFIX, dir=directory)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp makes it 0600; the user's umask decides, as for open()
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, allow_nan=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise


def current_umask() -> int:
    """This process's umask, read without changing it where Linux allows (``/proc/self/status``)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and put back (not thread-safe, but only where /proc is missing)
    os.umask(mask)
    return mask
