"""Lazy imports of TensorFlow and LiteRT, so installing or detecting the plugin never imports them."""

from __future__ import annotations

import os
from typing import Any

INSTALL_HINT = "pip install 'ilit-tensorflow[tensorflow]'  (tensorflow-cpu and ai-edge-litert)"


def tf() -> Any:
    """The ``tensorflow`` module, or an ImportError naming the install command."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import tensorflow
    except ImportError as exc:
        raise ImportError(f"the ilit TensorFlow adaptor needs TensorFlow, which is not installed: "
                          f"{INSTALL_HINT}") from exc
    return tensorflow


def interpreter_class() -> Any:
    """LiteRT's Interpreter (``ai_edge_litert``); TensorFlow's deprecated ``tf.lite.Interpreter`` if it is missing."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        return tf().lite.Interpreter
    return Interpreter


def op_resolver_without_delegates() -> Any:
    """The resolver type that keeps every intermediate tensor readable (no XNNPACK delegate)."""
    try:
        from ai_edge_litert.interpreter import OpResolverType
    except ImportError:
        OpResolverType = tf().lite.experimental.OpResolverType
    return OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
