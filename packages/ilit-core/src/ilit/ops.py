"""``ilit.list_ops``: the names and types of a model's quantizable ops, as ``tuning.ops`` takes them."""

from __future__ import annotations

from typing import Any, List, Optional, Tuple, Union

from .config import Config, load_config
from .detect import adaptor_class

__all__ = ["list_ops"]


def list_ops(model: Any, framework: Optional[str] = None,
             config: Union[None, str, dict, Config] = None) -> List[Tuple[str, str]]:
    """The model's quantizable ops as ``(name, type)`` pairs, in the adaptor's order (roughly the graph's).

    The adaptor is ``framework`` (an adaptor name such as ``pytorch``), or the one that takes ``model``, as
    ``tune`` chooses it. ``config`` (a YAML path or dict) matters where the approach changes the ops, e.g.
    ``{"quantization": {"approach": "quant_aware_training"}}`` keeps PyTorch's conv-bn pairs unfused.
    Use the names under ``tuning.ops`` in the YAML to set an op's choices or keep it in FP32.
    """
    cfg = config if isinstance(config, Config) else load_config(config if config is not None else {})
    if framework is not None:
        raw = dict(cfg.raw)
        raw["framework"] = {**dict(raw.get("framework") or {}), "name": framework}
        cfg = load_config(raw)
    adaptor = adaptor_class(cfg.framework.name, model)(cfg)
    return [(str(name), str(kind)) for name, kind in adaptor.query_fw_capability(model)["op_wise"]]
