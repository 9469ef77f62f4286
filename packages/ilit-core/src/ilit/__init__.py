"""ilit: accuracy-driven INT8 quantization tuning for PyTorch, TensorFlow and MXNet models.

The core holds the user API (:class:`Tuner`), the extension API (:class:`Adaptor`,
:class:`Strategy`, :class:`Metric`, :class:`Objective`) and never imports a framework.
"""

from .adaptor import Adaptor, to_numpy
from .config import Config, load_config
from .errors import (ConfigError, ModelFileError, PluginLoadError, PluginNotFoundError, RepeatedTrialError,
                     ResumeError, WorkspaceBusyError)
from .history import History, Trial
from .loading import load
from .metric import Metric, PostprocessedMetric
from .objective import Comparison, Objective
from .ops import list_ops
from .space import TuningSpace
from .strategy import Proposal, Strategy, StrategyContext, TrialResult
from .tune_cfg import TuneCfg, bf16_ops, calibration_key, cfg_fingerprint, fallback_ops, is_quantized, quantized_ops
from .tuner import Tuner
from .version import __version__

__all__ = [
    "Tuner",
    "load",
    "list_ops",
    "Config",
    "load_config",
    "ConfigError",
    "PluginNotFoundError",
    "PluginLoadError",
    "ResumeError",
    "ModelFileError",
    "RepeatedTrialError",
    "WorkspaceBusyError",
    "Adaptor",
    "Strategy",
    "StrategyContext",
    "TrialResult",
    "Proposal",
    "Metric",
    "PostprocessedMetric",
    "Objective",
    "Comparison",
    "TuningSpace",
    "TuneCfg",
    "History",
    "Trial",
    "to_numpy",
    "is_quantized",
    "quantized_ops",
    "fallback_ops",
    "bf16_ops",
    "calibration_key",
    "cfg_fingerprint",
    "__version__",
]
