"""The FP32 models the adaptor takes (Keras model, SavedModel directory, tf.function), as TFLite converter sources."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from typing import Any, Callable, Iterator, List, Optional, Sequence

import numpy as np

from ._deps import tf


#: top-level packages whose classes a Keras model or tf.function has in its MRO
TF_MODULES = ("keras", "tensorflow")


def keras_layers(model: Any) -> List[Any]:
    """A Keras model and every layer in it, nested models' and custom layers' sublayers included."""
    flatten = getattr(model, "_flatten_layers", None)
    if flatten is not None:
        return list(flatten(include_self=True, recursive=True))
    out, stack = [], [model]
    while stack:
        layer = stack.pop()
        out.append(layer)
        stack.extend(getattr(layer, "layers", []) or [])
    return out


def is_saved_model_dir(model: Any) -> bool:
    """Whether ``model`` is a path to a SavedModel directory."""
    return isinstance(model, (str, os.PathLike)) and os.path.isfile(os.path.join(os.fspath(model), "saved_model.pb"))


def model_kind(model: Any) -> Optional[str]:
    """Which FP32 form ``model`` is: ``"saved_model"``, ``"keras"``, ``"function"``, or None for anything else.

    A model whose classes all come from other packages (a torch module, an MXNet block, a numpy array)
    is None before TensorFlow is imported, so telling frameworks apart never imports one.
    """
    if isinstance(model, (str, os.PathLike)):
        return "saved_model" if is_saved_model_dir(model) else None
    roots = {str(getattr(c, "__module__", "") or "").split(".")[0] for c in type(model).__mro__}
    if not roots & set(TF_MODULES):
        return None
    tfm = tf()
    if isinstance(model, tfm.keras.Model):
        return "keras"
    if isinstance(model, tfm.types.experimental.PolymorphicFunction) and model.input_signature is not None:
        return "function"
    return None


def as_float_arrays(inputs: Any) -> Any:
    """numpy float32 copies of one batch's inputs (an array, or a list/tuple/dict of them), for the converter."""
    def conv(v: Any) -> np.ndarray:
        v = v.numpy() if hasattr(v, "numpy") else np.asarray(v)
        return v.astype(np.float32) if v.dtype.kind == "f" else v
    if isinstance(inputs, dict):
        return {k: conv(v) for k, v in inputs.items()}
    if isinstance(inputs, (list, tuple)):
        return [conv(v) for v in inputs]
    return [conv(inputs)]


class Source:
    """One FP32 model: how to make a TFLite converter for it, run it, and fingerprint it."""

    kind = ""

    def input_names(self) -> Optional[List[str]]:
        """The signature input names in the order a list of inputs gives them; None when there is one input."""
        return None

    def converter(self) -> Any:
        raise NotImplementedError

    def __call__(self, inputs: Any) -> Any:
        raise NotImplementedError

    def fingerprint(self) -> Optional[str]:
        """A content hash, or None to hash the float TFLite model instead."""
        return None

    @contextlib.contextmanager
    def unchanged(self) -> Iterator[None]:
        """Run a conversion so that the user's model is left as it was; nothing to undo by default."""
        yield


class KerasSource(Source):
    """A Keras 3 model (``tf.keras``); inference runs it inside a ``tf.function``."""

    kind = "keras"

    def __init__(self, model: Any) -> None:
        self.model = model
        self._fn: Optional[Callable[..., Any]] = None

    def converter(self) -> Any:
        return tf().lite.TFLiteConverter.from_keras_model(self.model)

    def input_names(self) -> Optional[List[str]]:
        inputs = list(self.model.inputs)
        return [t.name for t in inputs] if len(inputs) > 1 else None

    def __call__(self, inputs: Any) -> Any:
        if self._fn is None:
            model = self.model
            self._fn = tf().function(lambda x: model(x, training=False), reduce_retracing=True)
        x = inputs if isinstance(inputs, (dict, list, tuple)) else np.asarray(inputs, dtype=np.float32)
        return self._fn(x)

    @contextlib.contextmanager
    def unchanged(self) -> Iterator[None]:
        """Undo what a conversion leaves on the model: Keras's SavedModel export (which ``from_keras_model``
        runs) sets ``train_function``/``test_function``/``predict_function = None`` on every layer that lacked
        them; attributes a conversion adds as None are removed again, so tuning leaves the model as given."""
        layers = keras_layers(self.model)
        before = [set(vars(layer)) for layer in layers]
        try:
            yield
        finally:
            for layer, keys in zip(layers, before):
                for key in set(vars(layer)) - keys:
                    if vars(layer)[key] is None:
                        delattr(layer, key)

    def fingerprint(self) -> str:
        h = hashlib.sha256(self.model.to_json().encode())
        for w in self.model.get_weights():
            h.update(np.ascontiguousarray(w).tobytes())
        return h.hexdigest()


class SavedModelSource(Source):
    """A SavedModel directory, converted and run through one of its signatures."""

    kind = "saved_model"

    def __init__(self, path: str, inputs: Optional[Sequence[str]] = None,
                 outputs: Optional[Sequence[str]] = None, signature: str = "serving_default") -> None:
        self.path = os.fspath(path)
        self.signature = signature
        self.input_names_ = list(inputs) if inputs else None
        self.output_names = list(outputs) if outputs else None
        self._fn: Any = None

    def _signature_fn(self) -> Any:
        if self._fn is None:
            loaded = tf().saved_model.load(self.path)
            sigs = getattr(loaded, "signatures", {})
            if self.signature not in sigs:
                raise ValueError(f"the SavedModel at {self.path!r} has no {self.signature!r} signature "
                                 f"(it has {sorted(sigs)}); export it with a serving signature")
            self._loaded, self._fn = loaded, sigs[self.signature]
            spec = self._fn.structured_input_signature[1]
            names = sorted(spec)
            if self.input_names_ is None:
                self.input_names_ = names
            unknown = [n for n in self.input_names_ if n not in spec]
            if unknown:
                raise ValueError(f"framework.inputs {unknown} are not inputs of the SavedModel's "
                                 f"{self.signature!r} signature, whose inputs are {names}")
        return self._fn

    def converter(self) -> Any:
        return tf().lite.TFLiteConverter.from_saved_model(self.path, signature_keys=[self.signature])

    def input_names(self) -> Optional[List[str]]:
        self._signature_fn()
        return list(self.input_names_) if self.input_names_ and len(self.input_names_) > 1 else None

    def __call__(self, inputs: Any) -> Any:
        fn = self._signature_fn()
        if isinstance(inputs, dict):
            feeds = inputs
        else:
            arrays: List[Any] = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
            assert self.input_names_ is not None
            if len(arrays) != len(self.input_names_):
                raise ValueError(f"the signature takes inputs {self.input_names_}, got {len(arrays)} arrays; "
                                 "set framework.inputs to name them in order")
            feeds = dict(zip(self.input_names_, arrays))
        feeds = {k: tf().convert_to_tensor(np.asarray(v, dtype=np.float32) if np.asarray(v).dtype.kind == "f" else v)
                 for k, v in feeds.items()}
        out = fn(**feeds)
        keys = self.output_names or sorted(out)
        missing = [k for k in keys if k not in out]
        if missing:
            raise ValueError(f"framework.outputs {missing} are not outputs of the signature; it has {sorted(out)}")
        vals = [out[k] for k in keys]
        return vals[0] if len(vals) == 1 else vals

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for root, _dirs, files in sorted(os.walk(self.path)):
            for fn in sorted(files):
                h.update(os.path.relpath(os.path.join(root, fn), self.path).encode())
                with open(os.path.join(root, fn), "rb") as f:
                    h.update(f.read())
        return h.hexdigest()


class FunctionSource(Source):
    """A ``tf.function`` with an input signature, converted through a SavedModel of it (variables frozen)."""

    kind = "function"

    def __init__(self, fn: Any) -> None:
        if getattr(fn, "input_signature", None) is None:
            raise ValueError("a tf.function needs an input_signature to be converted, e.g. "
                             "@tf.function(input_signature=[tf.TensorSpec([None, 8, 8, 1], tf.float32)])")
        self.fn = fn
        self._dir: Optional[tempfile.TemporaryDirectory] = None

    def converter(self) -> Any:
        # from_concrete_functions without a trackable object is deprecated, and with one it keeps the
        # variables as resources; a SavedModel of the function (its variables tracked) converts cleanly.
        tfm = tf()
        if self._dir is None:
            concrete = self.fn.get_concrete_function()
            root = tfm.Module()
            root.variables_ = list(concrete.variables)
            root.fn = self.fn
            self._dir = tempfile.TemporaryDirectory(prefix="ilit-tf-fn-")
            tfm.saved_model.save(root, self._dir.name, signatures=concrete)
        return tfm.lite.TFLiteConverter.from_saved_model(self._dir.name)

    def input_names(self) -> Optional[List[str]]:
        specs = tf().nest.flatten(self.fn.get_concrete_function().structured_input_signature)
        return [s.name for s in specs] if len(specs) > 1 else None

    def __call__(self, inputs: Any) -> Any:
        if isinstance(inputs, (list, tuple)):
            return self.fn(*[np.asarray(v, dtype=np.float32) for v in inputs])
        return self.fn(np.asarray(inputs, dtype=np.float32))


def make_source(model: Any, inputs: Optional[Sequence[str]] = None, outputs: Optional[Sequence[str]] = None) -> Source:
    """The :class:`Source` for a Keras model, a SavedModel directory or a tf.function; a clear error otherwise."""
    if is_saved_model_dir(model):
        return SavedModelSource(os.fspath(model), inputs, outputs)
    tfm = tf()
    if isinstance(model, tfm.keras.Model):
        return KerasSource(model)
    if isinstance(model, tfm.types.experimental.PolymorphicFunction):
        return FunctionSource(model)  # refuses one without an input_signature, saying how to add it
    if isinstance(model, (str, os.PathLike)):
        raise ValueError(f"{os.fspath(model)!r} is not a SavedModel directory (no saved_model.pb in it)")
    raise TypeError(f"the TensorFlow adaptor takes a Keras model, a SavedModel directory or a tf.function with "
                    f"an input_signature, not a {type(model).__module__}.{type(model).__name__}")
