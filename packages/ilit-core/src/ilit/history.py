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
    ilit_version: str = __version__
    format: int = FORMAT

    def to_dict(self) -> Dict[str, Any]:
        """Plain JSON data: NaN (an unmeasured or failed value) becomes null, as strict JSON requires."""
        return _nan_to_none(asdict(self))

    def save(self, path: str) -> None:
        write_json_atomic(path, self.to_dict())

    @classmethod
    def load(cls, path: Union[str, "os.PathLike[str]"]) -> "History":
        path = os.fspath(path)
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            raise ResumeError(f"resume_file {path!r} does not exist; pass the history.json of an earlier run") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ResumeError(f"resume_file {path!r} is not a valid history.json ({exc}); "
                              "it must be the JSON file an earlier ilit run wrote in its workspace") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT or "trials" not in data:
            raise ResumeError(f"resume_file {path!r} is not an ilit history (format {FORMAT}) file")
        for t in data["trials"]:
            for key in ("accuracy", "objective"):
                t[key] = math.nan if t[key] is None else t[key]
        data["trials"] = [Trial(**t) for t in data["trials"]]
        return cls(**data)

    def trial(self, number: Optional[int]) -> Optional[Trial]:
        for t in self.trials:
            if t.trial == number:
                return t
        return None


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
    fd, tmp = tempfile.mkstemp(prefix=".history-", suffix=".tmp", dir=directory)
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
