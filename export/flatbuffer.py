"""Edits of a converted .tflite that the TFLite converter cannot make itself.

- The weight inputs that `export.graph` adds to every signature become constants holding the real
  weights, one buffer per weight shared by all prefill_<T> and decode, named as the Nano parameter
  (`layers.0.attn.q.kernel`): float32, or Nano's own int4/int8 codes and scales -- INT4 (two codes
  a byte, `nano.qtensor`'s layout) or INT8 tensors of the (out, in) weight, per-channel scales
  on dimension 0 or blockwise float16 scales (out, in // group), the layout ai-edge-quantizer
  writes and XNNPACK runs as dynamic-range kernels (int8 activations made on the fly, no
  DEQUANTIZE).
- The embedding GATHER becomes EMBEDDING_LOOKUP (the op that LiteRT's quantized kernels and
  ai-edge-quantizer handle; GATHER and GATHER_ND stay float).
- Files are written with buffers of 1 KiB or more after the flatbuffer, 16-byte aligned and
  addressed by offset, as ai-edge-quantizer does (and as >2 GB models require).
"""

from collections.abc import Mapping
from typing import BinaryIO

import ml_dtypes
import numpy as np
from ai_edge_litert import schema_py_generated as fb
from ai_edge_litert.tools import flatbuffer_utils

from nano.errors import NanoError
from nano.qtensor import QTensor
from nano.qtensor import pack_int4, unpack_int4

# A weight to bind: float32 in its input's layout (see export.graph), or a QTensor of the (in, out) matrix.
Weight = np.ndarray | QTensor
_OP_NAMES = {v: k for k, v in vars(fb.BuiltinOperator).items() if not k.startswith("_")}
_INLINE_BELOW = 1024  # buffers smaller than this stay inside the flatbuffer


def _u8(data) -> np.ndarray:
    """Buffer contents (numpy array or bytes-like) as a flat uint8 view."""
    if isinstance(data, np.ndarray):
        return np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    return np.frombuffer(data, np.uint8)


def load(data: bytes) -> fb.ModelT:
    return flatbuffer_utils.read_model_from_bytearray(data)


def _align(n: int) -> int:
    return (n + 15) & ~15


def _nbytes(data) -> int:
    return data.nbytes if isinstance(data, np.ndarray) else len(data)


def write(model: fb.ModelT, f: BinaryIO) -> None:
    """Serialize to `f` with large buffers after the flatbuffer (16-byte aligned offsets), each
    written straight from its array: no second copy of the weights in memory."""
    blobs = {}
    for i, buf in enumerate(model.buffers):
        if buf.data is None:
            continue
        if _nbytes(buf.data) >= _INLINE_BELOW:
            blobs[i] = buf.data
            buf.data, buf.offset, buf.size = None, 1, 1  # placeholders: same width as the real ones
        else:
            buf.data = _u8(buf.data)  # numpy: packed as one vector, not byte by byte
    try:
        head = len(flatbuffer_utils.convert_object_to_bytearray(model))
        end = _align(head)
        for i, data in blobs.items():
            model.buffers[i].offset, model.buffers[i].size = end, _nbytes(data)
            end = _align(end + _nbytes(data))
        packed = flatbuffer_utils.convert_object_to_bytearray(model)
        if len(packed) != head:  # offsets are fixed-width uint64 fields, so the size cannot change
            raise NanoError("export: flatbuffer size changed between passes (a bug in export/flatbuffer.py)")
        f.write(packed)
        pos = head
        for i, data in blobs.items():
            buf = model.buffers[i]
            f.write(bytes(buf.offset - pos))
            f.write(memoryview(_u8(data)))  # a transposed view is made contiguous one tensor at a time
            pos = buf.offset + buf.size
        f.write(bytes(end - pos))
    finally:
        for i, data in blobs.items():  # leave the model as it was
            model.buffers[i].data, model.buffers[i].offset, model.buffers[i].size = data, 0, 0


def op_names(model: fb.ModelT) -> set[str]:
    """Names of the operators used in any signature (builtin names; custom ops appear as CUSTOM)."""
    codes = [flatbuffer_utils.get_builtin_code_from_operator_code(c) for c in model.operatorCodes]
    return {_OP_NAMES[codes[op.opcodeIndex]] for sg in model.subgraphs for op in sg.operators}


def _opcode(model: fb.ModelT, op: int) -> int:
    """Index of `op` in the operator-code table, added if missing."""
    for i, c in enumerate(model.operatorCodes):
        if flatbuffer_utils.get_builtin_code_from_operator_code(c) == op:
            return i
    code = fb.OperatorCodeT()
    code.builtinCode = op
    code.deprecatedBuiltinCode = min(op, 127)  # the int8 legacy field
    code.version = 1
    model.operatorCodes.append(code)
    return len(model.operatorCodes) - 1


def _is_const(model: fb.ModelT, sg: fb.SubGraphT, t: int) -> bool:
    data = model.buffers[sg.tensors[t].buffer].data
    return data is not None and len(data) > 0


def use_embedding_lookup(model: fb.ModelT, tables: int = 1) -> None:
    """Rewrite GATHER(table, ids) on a constant 2-D table into EMBEDDING_LOOKUP(ids, table); each
    signature must have `tables` of them (2 for a split embedding)."""
    gather = [i for i, c in enumerate(model.operatorCodes)
              if flatbuffer_utils.get_builtin_code_from_operator_code(c) == fb.BuiltinOperator.GATHER]
    lookup = _opcode(model, fb.BuiltinOperator.EMBEDDING_LOOKUP)
    for sg in model.subgraphs:
        done = 0
        for op in sg.operators:
            if op.opcodeIndex not in gather:
                continue
            table, ids = op.inputs
            if (_is_const(model, sg, table) and len(sg.tensors[table].shape) == 2
                    and len(sg.tensors[ids].shape) == 1 and op.builtinOptions.axis == 0):
                op.opcodeIndex, op.inputs = lookup, [ids, table]
                op.builtinOptionsType, op.builtinOptions = fb.BuiltinOptions.NONE, None
                done += 1
        if done != tables:
            raise NanoError(f"export: signature {sg.name.decode()!r} has {done} embedding gathers, "
                            f"expected {tables} (a bug in export/graph.py)")


def blockwise_scales(name: str, qt: QTensor) -> np.ndarray:
    """Blockwise scales as float16 (out, in // group); refuses any that would change."""
    s = np.ascontiguousarray(qt.scale.T, np.float32)
    bf16 = s.astype(ml_dtypes.bfloat16).astype(np.float32)
    f16 = s.astype(np.float16)
    bad = int(np.sum((bf16 != s) | (f16.astype(np.float32) != s)))
    if bad:
        raise NanoError(f"{name}: {bad} group scale(s) are not exactly representable in bfloat16 and float16 "
                        "(LiteRT's blockwise int4 scales); round the scales to bfloat16 when quantizing, "
                        "or use group=None (per-channel float32 scales)")
    return f16


def _quantization(name: str, qt: QTensor, sg: fb.SubGraphT,
                  scale_buffer: int | None) -> fb.QuantizationParametersT:
    q = fb.QuantizationParametersT()
    q.quantizedDimension = 0  # rows of the (out, in) weight
    n_out = qt.q.shape[1]
    if qt.group is None:
        q.scale = qt.scale[0].astype(np.float32)
        q.zeroPoint = np.zeros(n_out, np.int64)
        return q
    scales = fb.TensorT()
    scales.shape, scales.type = [n_out, qt.scale.shape[0]], fb.TensorType.FLOAT16
    scales.buffer, scales.name = scale_buffer, f"{name}.scales".encode()
    sg.tensors.append(scales)
    details = fb.BlockwiseQuantizationT()
    details.scales, details.zeroPoints, details.blockSize = len(sg.tensors) - 1, -1, qt.group
    q.detailsType, q.details = fb.QuantizationDetails.BlockwiseQuantization, details
    return q


def _new_buffer(model: fb.ModelT, data: np.ndarray) -> int:
    model.buffers.append(fb.BufferT(data=data))
    return len(model.buffers) - 1


def _weight_buffers(model: fb.ModelT, name: str, w: Weight, shape: tuple[int, ...]) -> tuple[int, int | None]:
    """(buffer, blockwise-scale buffer or None) holding `w` for an input of `shape`."""
    is_q = isinstance(w, QTensor)
    have = tuple(reversed(w.q.shape)) if is_q else tuple(w.shape)
    if have != shape:
        raise NanoError(f"{name}: weight of shape {have} for a graph input of shape {shape} "
                        "(a bug in export/tflite.py)")
    if not is_q:  # float32, or an int32 index table; a view is fine: `write` copies it
        return _new_buffer(model, w if w.dtype == np.int32 else np.asarray(w, np.float32)), None
    codes = w.q.T  # (out, in)
    data = pack_int4(codes) if w.bits == 4 else np.ascontiguousarray(codes, np.int8).view(np.uint8).reshape(-1)
    scales = None if w.group is None else _new_buffer(model, blockwise_scales(name, w).view(np.uint8).reshape(-1))
    return _new_buffer(model, data), scales


def _bind(model: fb.ModelT, weights: Mapping[str, Weight]) -> dict[int, set[int]]:
    """Turn the signature inputs named in `weights` into constants; returns subgraph -> tensors."""
    made: dict[str, tuple[int, int | None]] = {}
    bound: dict[int, set[int]] = {}
    for sig in model.signatureDefs:
        sg = model.subgraphs[sig.subgraphIndex]
        maps = [m for m in sig.inputs if m.name.decode() in weights]
        if len(maps) != len(weights):
            missing = sorted(set(weights) - {m.name.decode() for m in maps})
            raise NanoError(f"export: signature {sig.signatureKey.decode()!r} has no input {missing[0]!r} "
                            "(a bug in export/graph.py)")
        for m in maps:
            name, tensor = m.name.decode(), sg.tensors[m.tensorIndex]
            w = weights[name]
            if name not in made:  # the first signature makes the buffers, the other reuses them
                made[name] = _weight_buffers(model, name, w, tuple(int(d) for d in tensor.shape))
            tensor.buffer, tensor.name = made[name][0], name.encode()
            if isinstance(w, QTensor):
                tensor.type = fb.TensorType.INT4 if w.bits == 4 else fb.TensorType.INT8
                tensor.quantization = _quantization(name, w, sg, made[name][1])
        ts = {m.tensorIndex for m in maps}
        sg.inputs = [t for t in sg.inputs if t not in ts]
        sig.inputs = [m for m in sig.inputs if m.tensorIndex not in ts]
        bound[sig.subgraphIndex] = ts
    return bound


def place_weights(model: fb.ModelT, weights: Mapping[str, Weight], *, tables: int = 1) -> None:
    """Bind every weight input of a model converted by `export.graph` to its weight (float32 in the
    input's layout, an int32 index table, or a QTensor), then rewrite the `tables` embedding
    GATHERs into EMBEDDING_LOOKUP.

    Refuses a graph where a weight is read other than as the weight of FULLY_CONNECTED or
    EMBEDDING_LOOKUP (an int32 table: by GATHER): int4/int8 tensors are only valid there,
    and a float one would mean the converter kept a runtime TRANSPOSE."""
    bound = _bind(model, weights)
    use_embedding_lookup(model, tables)
    codes = [flatbuffer_utils.get_builtin_code_from_operator_code(c) for c in model.operatorCodes]
    weight_ops = {fb.BuiltinOperator.FULLY_CONNECTED, fb.BuiltinOperator.EMBEDDING_LOOKUP}
    for i, ts in bound.items():
        sg = model.subgraphs[i]
        for op in sg.operators:
            for slot, t in enumerate(op.inputs):
                if t in ts and sg.tensors[t].type == fb.TensorType.INT32:
                    ok = codes[op.opcodeIndex] == fb.BuiltinOperator.GATHER  # table or indices
                else:
                    ok = slot == 1 and codes[op.opcodeIndex] in weight_ops
                if t in ts and not ok:
                    raise NanoError(f"export: {sg.tensors[t].name.decode()} is read by "
                                    f"{_OP_NAMES[codes[op.opcodeIndex]]} (input {slot}), not as a weight "
                                    "(a bug in export/graph.py)")


def read_quantized(model: fb.ModelT) -> dict[str, QTensor]:
    """The INT4/INT8 weights of a model as QTensors in Nano's (in, out) layout, keyed by tensor name."""
    out: dict[str, QTensor] = {}
    for sg in model.subgraphs:
        for tensor in sg.tensors:
            name = tensor.name.decode()
            if tensor.type not in (fb.TensorType.INT4, fb.TensorType.INT8) or name in out:
                continue
            n_out, n_in = (int(d) for d in tensor.shape)
            data = _u8(model.buffers[tensor.buffer].data)
            bits = 4 if tensor.type == fb.TensorType.INT4 else 8
            q = unpack_int4(data, (n_out, n_in)) if bits == 4 else data.view(np.int8).reshape(n_out, n_in)
            quant = tensor.quantization
            if quant.details is None:  # per channel
                scale, group = np.asarray(quant.scale, np.float32).reshape(1, n_out), None
            else:
                s = sg.tensors[quant.details.scales]
                raw = _u8(model.buffers[s.buffer].data).view(np.float16)
                scale, group = raw.reshape(n_out, -1).T.astype(np.float32), int(quant.details.blockSize)
            out[name] = QTensor(q=np.ascontiguousarray(q.T), scale=np.ascontiguousarray(scale),
                                zero=None, bits=bits, group=group)
    return out
