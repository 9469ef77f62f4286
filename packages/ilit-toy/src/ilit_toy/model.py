"""The toy framework: a chain of dense layers on numpy, with an integer-arithmetic quantized form."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import zlib

import numpy as np

FRAGILE_NOISE = 0.5


def to_bf16(a: np.ndarray) -> np.ndarray:
    """``a`` rounded to bfloat16 (8 significant bits, round to nearest even), kept as float32: what a
    bf16 kernel computes with."""
    u = np.asarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = (u + np.uint64(0x7FFF) + ((u >> np.uint64(16)) & np.uint64(1))) & np.uint64(0xFFFF0000)
    return rounded.astype(np.uint32).view(np.float32)


@dataclass
class Dense:
    """y = x @ W + b, optionally ReLU. A ``fragile`` layer's quantized kernel adds a seeded error of
    FRAGILE_NOISE x the output's spread, standing in for the ops real models cannot quantize well."""

    name: str
    W: np.ndarray
    b: np.ndarray
    relu: bool = True
    fragile: bool = False
    #: quantized, this layer also rounds its output to uint8 (as framework INT8 ops do), with the
    #: calibrated output range ``o_scale``/``o_zp``; a tensor between two such layers is then quantized
    #: if either of them is, which is what makes an outlier channel need both in fp32
    quantize_output: bool = False
    # quantization state; None = fp32 (or bf16)
    qcfg: Optional[Dict[str, Any]] = None
    wq: Optional[np.ndarray] = None
    w_scale: Optional[np.ndarray] = None
    w_zp: Optional[np.ndarray] = None
    a_scale: float = 1.0
    a_zp: int = 0
    o_scale: float = 1.0
    o_zp: int = 0
    #: a ``fragile_bf16`` layer's bf16 form adds the same error as a fragile one's int8 form (bf16 fallback
    #: does not help it; fp32 does)
    fragile_bf16: bool = False
    #: the layer falls back to bf16: weights, inputs and outputs rounded to bf16 (set by the adaptor)
    bf16: bool = False

    @property
    def quantized(self) -> bool:
        return self.qcfg is not None

    def forward(self, x: np.ndarray) -> np.ndarray:
        if self.qcfg is None and self.bf16:
            y = to_bf16(to_bf16(x) @ to_bf16(self.W) + to_bf16(self.b))
            if self.fragile_bf16:
                noise = np.random.default_rng(zlib.crc32(self.name.encode())).normal(0, 1, y.shape)
                y = y + FRAGILE_NOISE * y.std() * noise
        elif self.qcfg is None:
            y = x @ self.W + self.b
        else:
            assert self.wq is not None and self.w_scale is not None and self.w_zp is not None, "quantized w/o weights"
            act = self.qcfg["activation"]
            lo, hi = (0, 255) if act["dtype"] == "uint8" else (-128, 127)
            xq = np.clip(np.round(x / self.a_scale) + self.a_zp, lo, hi).astype(np.int64)
            acc = (xq - self.a_zp) @ (self.wq.astype(np.int64) - self.w_zp)  # integer matmul
            y = acc * (self.a_scale * self.w_scale) + self.b
            if self.fragile:
                noise = np.random.default_rng(zlib.crc32(self.name.encode())).normal(0, 1, y.shape)
                y = y + FRAGILE_NOISE * y.std() * noise
        y = np.maximum(y, 0) if self.relu else y
        if self.qcfg is not None and self.quantize_output:
            y = (np.clip(np.round(y / self.o_scale) + self.o_zp, 0, 255) - self.o_zp) * self.o_scale
        return y


@dataclass
class ToyModel:
    layers: List[Dense] = field(default_factory=list)
    training: bool = False  # a mode flag like a framework's train/eval, which tuning must give back unchanged
    #: stands in for a CPU with native bf16 (AMX / AVX512-BF16): the adaptor then offers bf16 fallback
    bf16: bool = False

    def __call__(self, x: np.ndarray) -> np.ndarray:
        for layer in self.layers:
            x = layer.forward(x)
        return x

    def outputs(self, x: np.ndarray) -> Dict[str, np.ndarray]:
        out = {}
        for layer in self.layers:
            x = layer.forward(x)
            out[layer.name] = x
        return out


def make_model(n_layers: int = 4, width: int = 16, n_classes: int = 4, fragile: Tuple[int, ...] = (),
               seed: int = 0) -> ToyModel:
    rng = np.random.default_rng(seed)
    layers = []
    for i in range(n_layers):
        out = n_classes if i == n_layers - 1 else width
        W = rng.normal(0, 1.0 / np.sqrt(width), (width, out)).astype(np.float32)
        b = rng.normal(0, 0.05, out).astype(np.float32)
        layers.append(Dense(f"dense{i}", W, b, relu=i < n_layers - 1, fragile=i in fragile))
    return ToyModel(layers)


def make_chain_model(n_ops: int, fragile: Tuple[int, ...] = (), width: int = 32, n_classes: int = 8, seed: int = 0,
                     rng: Optional[np.random.Generator] = None, name: str = "op{i}") -> ToyModel:
    """A chain of dense+ReLU ops whose signal survives depth, for strategy tests and benchmarks.

    Hidden ops are near-identity (I + small noise), so quantization error neither vanishes nor explodes
    with depth; the last op's bias centres the logits so every class occurs. ``fragile`` ops quantize badly.
    """
    rng = np.random.default_rng(seed) if rng is None else rng
    layers = []
    for i in range(n_ops):
        out = n_classes if i == n_ops - 1 else width
        if i in (0, n_ops - 1):
            W = rng.normal(0, np.sqrt(2.0 / width), (width, out))
        else:
            W = np.eye(width) + rng.normal(0, 0.4 / np.sqrt(width), (width, width))
        layers.append(Dense(name.format(i=i), W.astype(np.float32), rng.normal(0, 0.05, out).astype(np.float32),
                            relu=i < n_ops - 1, fragile=i in fragile))
    h = rng.normal(0, 1, (2048, width)).astype(np.float32)
    for layer in layers[:-1]:
        h = layer.forward(h)
    layers[-1].b = (-(h.mean(0) @ layers[-1].W)).astype(np.float32)
    return ToyModel(layers)


def add_outlier_channel(model: ToyModel, producer: int, scale: float = 1000.0, channel: int = 0) -> ToyModel:
    """Scale output ``channel`` of layer ``producer`` up by ``scale`` and the next layer's matching input down.

    The FP32 function is unchanged (ReLU commutes with a positive scale), but the tensor between the
    two layers now has an outlier channel: quantized per-tensor by either layer (every layer of the
    model quantizes its output, see :attr:`Dense.quantize_output`), its other channels round to
    nothing, so only keeping both layers in fp32 helps.
    """
    a, b = model.layers[producer], model.layers[producer + 1]
    a.W = a.W.copy()
    a.b = a.b.copy()
    b.W = b.W.copy()
    a.W[:, channel] *= scale
    a.b[channel] *= scale
    b.W[channel, :] /= scale
    for layer in model.layers:
        layer.quantize_output = True
    return model


def make_dataset(model: ToyModel, n: int = 256, batch: int = 32, seed: int = 1) -> List[Tuple[np.ndarray, np.ndarray]]:
    """Batches whose labels are the FP32 model's own predictions, so the baseline accuracy is 1.0."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, (2 * n, model.layers[0].W.shape[0])).astype(np.float32)
    out = model(x)
    top2 = np.sort(out, axis=1)[:, -2:]
    margin = top2[:, 1] - top2[:, 0]
    keep = np.argsort(-margin)[:n]  # clear-cut samples, so 8-bit noise alone rarely flips a label
    x, y = x[np.sort(keep)], out[np.sort(keep)].argmax(1)
    return [(x[i:i + batch], y[i:i + batch]) for i in range(0, n, batch)]


def accuracy(model: ToyModel, data: List[Tuple[np.ndarray, np.ndarray]]) -> float:
    """Top-1 accuracy of ``model`` over labelled batches: the eval_func of the tests' usage (b)."""
    x = np.concatenate([x for x, _ in data])
    y = np.concatenate([y for _, y in data])
    return float((model(x).argmax(1) == y).mean())
