"""The ``Adaptor`` protocol: what a framework plugin implements (extension API)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from abc import ABC, abstractmethod
from typing import Any, Callable, ContextManager, Dict, Iterable, List, Optional, Sequence

import numpy as np

from .batches import split_batch
from .config import Config
from .metric import Metric
from .tune_cfg import TuneCfg

__all__ = ["Adaptor", "to_numpy"]


def to_numpy(value: Any) -> Any:
    """Convert framework outputs (tensors, or lists/tuples/dicts of them) to numpy, recursively."""
    if isinstance(value, np.ndarray) or np.isscalar(value):
        return value
    if isinstance(value, dict):
        return {k: to_numpy(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_numpy(v) for v in value)
    for attr in ("numpy", "asnumpy"):  # torch / tf, mxnet
        fn = getattr(value, attr, None)
        if callable(fn):
            if hasattr(value, "detach"):
                value = value.detach()
            return fn()
    return np.asarray(value)


class Adaptor(ABC):
    """A framework plugin. Register the subclass under the ``ilit.adaptors`` entry-point group.

    One adaptor instance serves one ``Tuner.tune`` call, so it may cache calibration statistics
    across ``quantize`` calls (see :func:`ilit.tune_cfg.calibration_key`).
    """

    #: the name users write as ``framework.name``; set it to the entry-point name.
    name: str = ""
    #: the inputs of the first calibration batch, set by ``tune`` before :meth:`query_fw_capability`, for
    #: adaptors that need an example to analyse the model (e.g. ``torch.export``); None when called directly
    example_inputs: Any = None

    def __init__(self, config: Config) -> None:
        self.config = config

    # ---------------------------------------------------------------- required
    @abstractmethod
    def query_fw_capability(self, model: Any) -> Dict[str, Any]:
        """The model's quantizable ops and what each supports (the structure in :mod:`ilit.space`)."""

    @abstractmethod
    def quantize(self, tune_cfg: TuneCfg, model: Any, dataloader: Iterable[Any],
                 q_func: Optional[Callable[[Any], Any]] = None) -> Any:
        """Return a new quantized model for ``tune_cfg``; never modify ``model``."""

    @abstractmethod
    def infer(self, model: Any, inputs: Any) -> Any:
        """Run one forward pass on one batch of inputs and return the outputs, as the framework gives them."""

    @abstractmethod
    def save(self, model: Any, path: str) -> None:
        """Write ``model`` into the directory ``path`` (created if missing), in a form :meth:`load` reads.

        Beside the model, write a JSON metadata file named ``ilit*.json`` whose object has the key
        ``"adaptor"`` set to :attr:`name`, so :func:`ilit.load` knows which adaptor reads the directory.
        """

    # ---------------------------------------------------------------- optional, with defaults
    def load(self, path: str, model: Any = None) -> Any:
        """Read a model written by :meth:`save`; ``model`` is the user's FP32 model, for formats that need it."""
        raise NotImplementedError(f"the {self.name or type(self).__name__} adaptor cannot load saved models")

    def evaluate(self, model: Any, dataloader: Iterable[Any], metric: Metric) -> float:
        """Run ``model`` over ``(inputs, labels)`` batches, feed ``metric`` numpy arrays, return its result."""
        metric.reset()
        for batch in dataloader:
            inputs, labels = split_batch(batch)
            if labels is None:
                raise ValueError(f"eval_dataloader yielded a {type(batch).__name__} that is not an (inputs, labels) "
                                 "pair; a metric needs the labels: yield (inputs, labels), or pass eval_func")
            metric.update(to_numpy(self.infer(model, inputs)), to_numpy(labels))
        return float(metric.result())

    def canonical_cfg(self, tune_cfg: TuneCfg) -> TuneCfg:
        """``tune_cfg`` in canonical form: configs that build the same model must map to one form.

        The tuner runs each canonical form once and records it in history.json. Override this where
        several choices mean one model (MXNet's asym activations ignore the dtype); the default
        returns ``tune_cfg`` unchanged.
        """
        return tune_cfg

    def inspect_tensor(self, model: Any, dataloader: Iterable[Any], op_list: Sequence[str],
                       iteration_list: Sequence[int]) -> Dict[str, List[np.ndarray]]:
        """The outputs of the ops in ``op_list`` for the batches (0-based) in ``iteration_list``.

        Needed by the ``mse`` strategy; adaptors that cannot do it leave this unimplemented.
        """
        raise NotImplementedError(f"the {self.name or type(self).__name__} adaptor does not implement inspect_tensor")

    @classmethod
    def supports_inspect_tensor(cls) -> bool:
        return cls.inspect_tensor is not Adaptor.inspect_tensor

    def fingerprint(self, model: Any) -> str:
        """A hash identifying the model, so a history from another model is refused on resume.

        The default hashes what :meth:`save` writes; override it with something cheaper if you can.
        """
        h = hashlib.sha256()
        with tempfile.TemporaryDirectory(prefix="ilit-fp-") as tmp:
            target = os.path.join(tmp, "model")
            self.save(model, target)
            for root, _dirs, files in sorted(os.walk(target)):
                for fn in sorted(files):
                    h.update(fn.encode())
                    with open(os.path.join(root, fn), "rb") as f:
                        for chunk in iter(lambda: f.read(1 << 20), b""):
                            h.update(chunk)
        return h.hexdigest()

    @classmethod
    def accepts(cls, model: Any) -> bool:
        """Whether this adaptor takes ``model``; ``tune`` refuses a model before any work when this is False.

        The default: a class in the model's MRO comes from a package this adaptor declares in the
        ``ilit.model_modules`` entry-point group. Override it to look closer (it must not import another framework).
        """
        from . import registry

        mods = {c.__module__.split(".")[0] for c in type(model).__mro__}
        return any(cls.name in registry.adaptors_for_module(m) for m in mods)

    def fp32_context(self, model: Any) -> ContextManager[Any]:
        """A context around ``eval_func`` and the objective on the user's FP32 model, in which the adaptor
        puts it in inference mode and afterwards restores its mode exactly (e.g. PyTorch's train/eval flags),
        whatever the user's function did to it. The default does nothing."""
        return contextlib.nullcontext(model)

    def timing_context(self, threads: Optional[int]) -> ContextManager[Optional[int]]:
        """A context in which the ``performance`` objective times models: the framework's intra-op thread count
        set to ``threads`` (None: left as it is) and restored afterwards. It yields the count in effect, or None
        when the adaptor cannot set or tell it; the default does nothing and yields None."""
        return contextlib.nullcontext(None)

    @classmethod
    def reject_reason(cls, model: Any) -> Optional[str]:
        """Why :meth:`accepts` refuses ``model``, when the adaptor can say more than its type (e.g. which file
        a checkpoint path lacks); ``None`` if it has nothing to add. Shown in the error ``tune`` raises."""
        return None
