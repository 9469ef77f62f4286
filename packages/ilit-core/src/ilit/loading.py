"""``ilit.load``: read a model an adaptor's ``save`` wrote, without naming the adaptor.

Every adaptor's ``save`` writes, beside the model files, a JSON metadata file whose name starts with
``ilit`` and ends in ``.json`` (``ilit_model.json``, ``ilit_tensorflow.json``, ``ilit_mxnet.json``...), holding
a JSON object with the key ``"adaptor"``: the adaptor's name. :func:`load` finds that name and hands the
directory to that adaptor's ``load``, which reads it without running code from it (no pickle).
"""

from __future__ import annotations

import glob
import json
import os
from typing import Any, Optional

from . import registry
from .config import load_config
from .errors import ModelFileError, PluginNotFoundError

__all__ = ["load", "saved_adaptor", "ADAPTOR_KEY", "METADATA_PATTERN"]

#: the metadata key naming the adaptor that saved a model
ADAPTOR_KEY = "adaptor"
#: the metadata files :func:`saved_adaptor` reads in a saved-model directory
METADATA_PATTERN = "ilit*.json"
_MAX_METADATA_BYTES = 1 << 20


def saved_adaptor(path: str) -> str:
    """The name of the adaptor whose ``save`` wrote the directory ``path``, read from its ilit metadata file."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        if os.path.exists(path):
            raise ValueError(f"ilit.load takes the directory an adaptor's save wrote (such as <workspace>/best_model), "
                             f"not the file {path!r}")
        raise FileNotFoundError(f"ilit.load: no directory {path!r}")
    for file in sorted(glob.glob(os.path.join(glob.escape(path), METADATA_PATTERN))):
        try:
            if os.path.getsize(file) > _MAX_METADATA_BYTES:
                continue
            with open(file, encoding="utf-8") as f:
                doc = json.load(f)
        except (OSError, ValueError):  # unreadable, not UTF-8 or not JSON: not the file we look for
            continue
        name = doc.get(ADAPTOR_KEY) if isinstance(doc, dict) else None
        if isinstance(name, str) and name.strip():
            return name.strip().lower()
    raise ModelFileError(path, f"{path} holds no ilit metadata naming the adaptor that saved it (an "
                         f"{METADATA_PATTERN} file with an {ADAPTOR_KEY!r} key, which every adaptor's save writes). If "
                         "an older ilit saved it, load it with that adaptor's own load, e.g. "
                         "PyTorchAdaptor(ilit.load_config({})).load(path)")


def load(path: str, model: Optional[Any] = None) -> Any:
    """Read the model an adaptor's ``save`` wrote into directory ``path`` (e.g. a tuning run's ``best_model``).

    The adaptor is the one named in the directory's metadata; ``model`` is passed on to its ``load`` for
    formats that rebuild the saved weights into your FP32 model (PyTorch). Nothing in the files is executed.
    """
    name = saved_adaptor(path)
    try:
        cls = registry.load("adaptor", name)
    except PluginNotFoundError as exc:
        raise PluginNotFoundError("framework.name", f"{os.fspath(path)} was saved by the {name} adaptor, which is "
                                  f"not installed: {exc}") from None
    adaptor = cls(load_config({"framework": {"name": name}}))
    return adaptor.load(path) if model is None else adaptor.load(path, model=model)
