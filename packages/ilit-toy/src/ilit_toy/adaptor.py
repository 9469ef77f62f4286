"""The toy adaptor: real integer quantization of numpy dense layers, with a counted calibration cache."""

from __future__ import annotations

import contextlib
import copy
import json
import os
import zipfile
from typing import Any, Dict, List, Tuple

import numpy as np

from ilit import Adaptor, ModelFileError, calibration_key
from ilit.tune_cfg import APPROACHES, DYNAMIC, QAT, is_bf16, is_quantized
from ilit.batches import batch_inputs, selected_batches

from .model import Dense, ToyModel, to_bf16

ALGOS = ["minmax", "kl", "percentile"]


def _range(values: np.ndarray, algo: str) -> Tuple[float, float]:
    if algo == "minmax":
        return float(values.min()), float(values.max())
    if algo == "percentile":
        return float(np.percentile(values, 0.01)), float(np.percentile(values, 99.99))
    # "kl": the toy stands in a tighter clip, enough to make the algorithms differ
    return float(np.percentile(values, 0.5)), float(np.percentile(values, 99.5))


class ToyAdaptor(Adaptor):
    name = "toy"

    def __init__(self, config) -> None:
        super().__init__(config)
        self.calibration_batches = 0   # batches run for calibration, counted for tests
        self.quantize_calls = 0
        self._stats: Dict[Any, Dict[str, Tuple[float, float]]] = {}

    @contextlib.contextmanager
    def fp32_context(self, model: ToyModel):
        """Inference mode for the user's code on the FP32 model, and its own mode back afterwards."""
        was = model.training
        model.training = False
        try:
            yield model
        finally:
            model.training = was

    @classmethod
    def accepts(cls, model: Any) -> bool:
        """A ToyModel only: a layer or anything else from ilit_toy is not a model the adaptor tunes."""
        return isinstance(model, ToyModel)

    @classmethod
    def reject_reason(cls, model):
        if isinstance(model, str):
            return f"{model!r} is a path; load a saved toy model with ToyAdaptor.load first"
        return None

    def query_fw_capability(self, model: ToyModel) -> Dict[str, Any]:
        """Every Dense layer: int8 weights, uint8/int8 activations, fp32 fallback, and bf16 fallback when the
        model stands in for a bf16-capable CPU (``ToyModel.bf16``)."""
        half = ["bf16"] if model.bf16 else []
        caps = {}
        for layer in model.layers:
            caps[(layer.name, "Dense")] = {
                "weight": {"dtype": ["int8", *half, "fp32"], "scheme": ["sym", "asym"],
                           "granularity": ["per_channel", "per_tensor"], "algorithm": ["minmax"]},
                "activation": {"dtype": ["uint8", "int8", *half, "fp32"], "scheme": ["asym", "sym"],
                               "granularity": ["per_tensor"], "algorithm": list(ALGOS)},
            }
        names = [layer.name for layer in model.layers]
        return {"approaches": list(APPROACHES),
                "op_wise": caps, "edges": [[a, b] for a, b in zip(names, names[1:])]}

    def _calibrate(self, tune_cfg, model: ToyModel, dataloader) -> Dict[str, Tuple[float, float]]:
        """Each layer's input range (under its name) and output range (under ``name:out``)."""
        key = calibration_key(tune_cfg)
        if key not in self._stats:
            inputs: Dict[str, List[np.ndarray]] = {l.name: [] for l in model.layers}
            inputs.update({f"{layer.name}:out": [] for layer in model.layers})
            for i, batch in enumerate(dataloader):
                if i >= tune_cfg["calibration"]["iterations"]:
                    break
                x = batch_inputs(batch)
                self.calibration_batches += 1
                for layer in model.layers:
                    inputs[layer.name].append(x)
                    x = layer.forward(x)
                    inputs[f"{layer.name}:out"].append(x)
            stats = {}
            for name, xs in inputs.items():
                algo = tune_cfg["ops"][name.split(":")[0]].get("activation", {}).get("algorithm", "minmax")
                stats[name] = _range(np.concatenate(xs), algo)
            self._stats[key] = stats
        return self._stats[key]

    def quantize(self, tune_cfg, model: ToyModel, dataloader, q_func=None) -> ToyModel:
        self.quantize_calls += 1
        q = copy.deepcopy(model)
        if tune_cfg["approach"] == QAT and q_func is not None:
            q_func(q)  # the user's training loop runs on the copy, as a framework's QAT would
        dynamic = tune_cfg["approach"] == DYNAMIC
        stats = {} if dynamic else self._calibrate(tune_cfg, model, dataloader)
        for layer in q.layers:
            op = tune_cfg["ops"][layer.name]
            if not is_quantized(op):
                if is_bf16(op):  # bf16 fallback: the weights are stored in bf16, the layer computes in bf16
                    layer.bf16, layer.W, layer.b = True, to_bf16(layer.W), to_bf16(layer.b)
                continue
            w, a = op["weight"], op["activation"]
            axis = 0 if w["granularity"] == "per_channel" else None
            qmax = 127
            if w["scheme"] == "sym":
                scale = np.maximum(np.abs(layer.W).max(axis=axis, keepdims=axis is not None), 1e-8) / qmax
                zp = np.zeros_like(scale, dtype=np.int64)
            else:
                lo = np.minimum(layer.W.min(axis=axis, keepdims=axis is not None), 0)
                hi = np.maximum(layer.W.max(axis=axis, keepdims=axis is not None), 0)
                scale = np.maximum(hi - lo, 1e-8) / (2 * qmax + 1)
                zp = np.round(-qmax - 1 - lo / scale).astype(np.int64)
            layer.wq = np.clip(np.round(layer.W / scale) + zp, -qmax - 1, qmax).astype(np.int8)
            layer.w_scale = np.asarray(scale, dtype=np.float32)
            layer.w_zp = zp.astype(np.int32)
            lo_a, hi_a = stats.get(layer.name, (-4.0, 4.0))
            if a["scheme"] == "sym" or a["dtype"] == "int8":
                layer.a_scale = max(abs(lo_a), abs(hi_a), 1e-8) / 127
                layer.a_zp = 0 if a["dtype"] == "int8" else 128
            else:
                lo_a, hi_a = min(lo_a, 0.0), max(hi_a, 0.0)
                layer.a_scale = max(hi_a - lo_a, 1e-8) / 255
                layer.a_zp = int(round(-lo_a / layer.a_scale))
            lo_o, hi_o = stats.get(f"{layer.name}:out", (0.0, 4.0))
            lo_o, hi_o = min(lo_o, 0.0), max(hi_o, 0.0)
            layer.o_scale = max(hi_o - lo_o, 1e-8) / 255
            layer.o_zp = int(round(-lo_o / layer.o_scale))
            layer.qcfg = op
        return q

    def infer(self, model: ToyModel, inputs: np.ndarray) -> np.ndarray:
        return model(inputs)

    def inspect_tensor(self, model: ToyModel, dataloader, op_list, iteration_list) -> Dict[str, List[np.ndarray]]:
        out: Dict[str, List[np.ndarray]] = {name: [] for name in op_list}
        for _, batch in selected_batches(dataloader, iteration_list):
            outs = model.outputs(batch_inputs(batch))
            for name in op_list:
                out[name].append(outs[name])
        return out

    def save(self, model: ToyModel, path: str) -> None:
        os.makedirs(path, exist_ok=True)
        arrays: Dict[str, Any] = {}
        meta = []
        for i, layer in enumerate(model.layers):
            if layer.quantized:
                arrays[f"{i}_wq"], arrays[f"{i}_ws"], arrays[f"{i}_wz"] = layer.wq, layer.w_scale, layer.w_zp
            else:
                arrays[f"{i}_W"] = layer.W
            arrays[f"{i}_b"] = layer.b
            meta.append({"name": layer.name, "relu": layer.relu, "fragile": layer.fragile, "qcfg": layer.qcfg,
                         "bf16": layer.bf16, "fragile_bf16": layer.fragile_bf16,
                         "a_scale": layer.a_scale, "a_zp": layer.a_zp, "quantize_output": layer.quantize_output,
                         "o_scale": layer.o_scale, "o_zp": layer.o_zp})
        np.savez(os.path.join(path, "weights.npz"), **arrays)
        with open(os.path.join(path, "model.json"), "w") as f:
            json.dump(meta, f)
        with open(os.path.join(path, "ilit_toy.json"), "w") as f:  # names the adaptor, for ilit.load
            json.dump({"adaptor": self.name}, f)

    def load(self, path: str, model: Any = None) -> ToyModel:
        """Read what :meth:`save` wrote; anything else is an ``ilit.ModelFileError`` and nothing in it runs."""
        meta_file, weights_file = os.path.join(path, "model.json"), os.path.join(path, "weights.npz")
        name_file = os.path.join(path, "ilit_toy.json")
        if os.path.exists(name_file):  # absent in directories saved before ilit.load existed
            try:
                with open(name_file, "rb") as f:
                    named = json.loads(f.read().decode("utf-8"))
                if not isinstance(named, dict) or named.get("adaptor") != self.name:
                    raise ValueError(f"expected {{\"adaptor\": \"{self.name}\"}}")
            except (OSError, ValueError) as exc:
                raise ModelFileError(name_file, f"{name_file} is not the toy adaptor's name file ({exc}); "
                                     "load a directory ToyAdaptor.save wrote") from None
        try:
            with open(meta_file, "rb") as f:
                meta = json.loads(f.read().decode("utf-8"))
            if not isinstance(meta, list) or not all(isinstance(m, dict) for m in meta):
                raise ValueError("not a list of layer objects")
        except (OSError, ValueError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
            raise ModelFileError(meta_file, f"{meta_file} is not a toy model's metadata ({exc}); "
                                 "load a directory ToyAdaptor.save wrote") from None
        try:
            with np.load(weights_file, allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
            return self._build(meta, arrays)
        except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile, EOFError) as exc:
            raise ModelFileError(weights_file, f"{weights_file} does not hold the toy model's weights "
                                 f"({type(exc).__name__}: {exc}); load a directory ToyAdaptor.save wrote") from None

    @staticmethod
    def _build(meta: List[Dict[str, Any]], arrays: Dict[str, np.ndarray]) -> ToyModel:
        layers = []
        for i, m in enumerate(meta):
            if m["qcfg"]:
                wq, ws, wz = arrays[f"{i}_wq"], arrays[f"{i}_ws"], arrays[f"{i}_wz"]
                W = ((wq.astype(np.float64) - wz) * ws).astype(np.float32)
                layer = Dense(m["name"], W, arrays[f"{i}_b"], m["relu"], m["fragile"], m.get("quantize_output", False),
                              m["qcfg"], wq, ws, wz, m["a_scale"], m["a_zp"], m.get("o_scale", 1.0), m.get("o_zp", 0))
            else:
                layer = Dense(m["name"], arrays[f"{i}_W"], arrays[f"{i}_b"], m["relu"], m["fragile"],
                              m.get("quantize_output", False), fragile_bf16=bool(m.get("fragile_bf16", False)),
                              bf16=bool(m.get("bf16", False)))
            layers.append(layer)
        return ToyModel(layers)
