"""Reading and editing TFLite flatbuffers: the op list with tensor types, calibrated ranges, float weights."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Mapping, Sequence, Tuple

import numpy as np

from ._deps import tf

#: ops whose activations the TFLite int8 quantizer quantizes and that can be kept in float one by one.
STATIC_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "TRANSPOSE_CONV", "FULLY_CONNECTED", "BATCH_MATMUL",
              "MAX_POOL_2D", "AVERAGE_POOL_2D", "ADD", "SUB", "MUL", "CONCATENATION", "MEAN", "SOFTMAX",
              "LOGISTIC", "TANH", "HARD_SWISH", "LEAKY_RELU", "PRELU")
#: ops with a constant weight tensor.
WEIGHT_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "TRANSPOSE_CONV", "FULLY_CONNECTED", "BATCH_MATMUL")
#: conv-like ops: per-channel weights unless the converter's per-channel quantization is disabled.
CONV_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "TRANSPOSE_CONV")
#: ops the quantizer adds around quantized regions; they have no counterpart in the float model.
QDQ_OPS = ("QUANTIZE", "DEQUANTIZE")


@dataclass(frozen=True)
class OpInfo:
    """One operator of subgraph 0: its position, builtin type, tensors and their types."""

    index: int
    type: str
    inputs: Tuple[int, ...]
    outputs: Tuple[int, ...]
    output_names: Tuple[str, ...]
    input_types: Tuple[str, ...]   # "" for an absent optional input
    output_types: Tuple[str, ...]
    const_inputs: Tuple[bool, ...]  # whether each input is a constant (has a buffer with data)

    @property
    def is_float(self) -> bool:
        """Whether the op computes in float: every float-able input and output is FLOAT32."""
        kinds = [t for t in self.input_types + self.output_types if t and t not in ("INT32", "INT64", "BOOL")]
        return all(t == "FLOAT32" for t in kinds)

    @property
    def weight_type(self) -> str:
        """The type of the op's constant weight (input 1), or "" when it has none."""
        if len(self.inputs) > 1 and self.const_inputs[1]:
            return self.input_types[1]
        return ""


def _enum_names(enum_cls: type) -> Dict[int, str]:
    return {v: k for k, v in vars(enum_cls).items() if not k.startswith("_") and isinstance(v, int)}


def _schema():
    tf()
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    return schema, flatbuffer_utils


def read(model: bytes):
    """The model as a mutable object tree (``ModelT``)."""
    _schema_mod, fbu = _schema()
    return fbu.convert_bytearray_to_object(bytearray(model))


def write(model_obj) -> bytes:
    _schema_mod, fbu = _schema()
    return bytes(fbu.convert_object_to_bytearray(model_obj))


def op_list(model: bytes) -> List[OpInfo]:
    """Every operator of the main subgraph, in execution order."""
    schema, _fbu = _schema()
    op_names = _enum_names(schema.BuiltinOperator)
    type_names = _enum_names(schema.TensorType)
    m = read(model)
    sg = m.subgraphs[0]
    out: List[OpInfo] = []
    for i, op in enumerate(sg.operators):
        code = m.operatorCodes[op.opcodeIndex]
        builtin = max(int(code.builtinCode), int(code.deprecatedBuiltinCode))
        inputs = tuple(int(t) for t in (op.inputs if op.inputs is not None else []))
        outputs = tuple(int(t) for t in (op.outputs if op.outputs is not None else []))

        def tname(t: int) -> str:
            return "" if t < 0 else type_names.get(int(sg.tensors[t].type), str(sg.tensors[t].type))

        def is_const(t: int) -> bool:
            if t < 0:
                return False
            buf = m.buffers[sg.tensors[t].buffer]
            return buf.data is not None and len(buf.data) > 0

        out.append(OpInfo(index=i, type=op_names.get(builtin, str(builtin)), inputs=inputs, outputs=outputs,
                          output_names=tuple(sg.tensors[t].name.decode() for t in outputs),
                          input_types=tuple(tname(t) for t in inputs), output_types=tuple(tname(t) for t in outputs),
                          const_inputs=tuple(is_const(t) for t in inputs)))
    return out


def core_ops(ops: Sequence[OpInfo]) -> List[OpInfo]:
    """The ops without the QUANTIZE/DEQUANTIZE pairs the quantizer inserts, to match them with the float model."""
    return [op for op in ops if op.type not in QDQ_OPS]


def match_ops(float_ops: Sequence[OpInfo], other_ops: Sequence[OpInfo]) -> Dict[int, int]:
    """Map float-model op indices to the same ops in a quantized model of it (same order once Q/DQ ops are dropped)."""
    a, b = core_ops(float_ops), core_ops(other_ops)
    if [o.type for o in a] != [o.type for o in b]:
        raise ValueError("the quantized model's operators do not line up with the float model's "
                         f"({[o.type for o in a]} vs {[o.type for o in b]}); cannot map op names")
    return {fa.index: fb.index for fa, fb in zip(a, b)}


def tensor_ranges(model: bytes) -> Dict[int, Tuple[float, float]]:
    """The calibrated (min, max) of every tensor that has one."""
    sg = read(model).subgraphs[0]
    out = {}
    for i, t in enumerate(sg.tensors):
        q = t.quantization
        if q is not None and q.min is not None and q.max is not None and len(q.min) == 1:
            out[i] = (float(q.min[0]), float(q.max[0]))
    return out


def write_ranges(model: bytes, ranges: Mapping[int, Tuple[float, float]]) -> bytes:
    """A copy of a calibrated model with the (min, max) of the given tensors replaced."""
    m = read(model)
    sg = m.subgraphs[0]
    for idx, (lo, hi) in ranges.items():
        q = sg.tensors[idx].quantization
        if q is None or q.min is None:
            raise ValueError(f"tensor {idx} ({sg.tensors[idx].name!r}) has no calibrated range to replace")
        q.min = np.asarray([lo], dtype=np.float32)
        q.max = np.asarray([hi], dtype=np.float32)
    return write(m)


def restore_float_weights(model: bytes, float_model: bytes, op_map: Mapping[int, int]) -> bytes:
    """Put the float weights back into the given ops of a dynamic-range model, so they run in float.

    ``op_map`` maps op indices in ``model`` to the same ops in ``float_model``.
    """
    m, f = read(model), read(float_model)
    sg, fsg = m.subgraphs[0], f.subgraphs[0]
    for qi, fi in op_map.items():
        qop, fop = sg.operators[qi], fsg.operators[fi]
        for pos, (qt, ft) in enumerate(zip(qop.inputs, fop.inputs)):
            if qt < 0 or ft < 0:
                continue
            qten, ften = sg.tensors[qt], fsg.tensors[ft]
            fbuf = f.buffers[ften.buffer]
            if qten.type == ften.type or fbuf.data is None or len(fbuf.data) == 0:
                continue
            old = m.buffers[qten.buffer]
            shared = sum(1 for t in sg.tensors if t.buffer == qten.buffer)
            new_buf = type(old)()
            new_buf.data = np.array(fbuf.data, dtype=np.uint8)
            m.buffers.append(new_buf)
            if shared == 1:
                old.data = None  # the int8 copy is no longer used
            qten.buffer = len(m.buffers) - 1
            qten.type = ften.type
            qten.quantization = ften.quantization
            qten.shape = ften.shape
    return write(m)


def op_edges(ops: Sequence[OpInfo], named: Mapping[int, str]) -> List[Tuple[str, str]]:
    """(producer, consumer) pairs between the named ops (op index -> name): the consumer reads a tensor
    the producer writes, possibly through unnamed ops (RESHAPE, ...) in between."""
    readers: Dict[int, List[OpInfo]] = {}
    for op in ops:
        for t in op.inputs:
            if t >= 0:
                readers.setdefault(t, []).append(op)
    edges: List[Tuple[str, str]] = []
    for op in ops:
        producer = named.get(op.index)
        if producer is None:
            continue
        stack, seen = list(op.outputs), set()
        while stack:
            tensor = stack.pop(0)
            if tensor in seen:
                continue
            seen.add(tensor)
            for reader in readers.get(tensor, []):
                consumer = named.get(reader.index)
                if consumer is None:
                    stack.extend(reader.outputs)
                elif consumer != producer and (producer, consumer) not in edges:
                    edges.append((producer, consumer))
    return edges
