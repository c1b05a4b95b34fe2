"""One handler per ONNX op that touches activations; each emits supported torch ops.

A handler gets the builder, the node and its inputs (a :class:`Value` for an activation, a
tensor for a constant, None for an omitted optional input) and returns one entry per output.
Nodes whose inputs are all constant never reach a handler: they are folded (see translate.py).
Everything emitted is in :mod:`convertsnn.convert.ops`, so the converter and the file format
accept the result.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from convertsnn.importers.onnx.builder import BATCH, GraphBuilder, ImportFailure, OnnxNode, Value

Handler = Callable[[GraphBuilder, OnnxNode, list], list]
HANDLERS: dict[str, Handler] = {}

_LOWEST = -3.4e38  # ONNX's "no bound" for Clip (numeric_limits<float>)


def handles(*op_types: str) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        for op_type in op_types:
            HANDLERS[op_type] = fn
        return fn

    return register


# ---- helpers -------------------------------------------------------------------------------


def _activation(value, what: str = "input") -> Value:
    if not isinstance(value, Value):
        raise ImportFailure(f"needs an activation as its {what}")
    return value


def _constant(value, what: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise ImportFailure(f"needs a constant {what}, but it is computed from the input")
    return value


def _ints(value) -> list[int]:
    return [int(v) for v in torch.as_tensor(value).reshape(-1).tolist()]


def _axis(axis: int, ndim: int) -> int:
    return axis + ndim if axis < 0 else axis


def _batch_first(x: Value) -> Value:
    if x.batch_axis != 0:
        raise ImportFailure(
            f"expects the batch in dimension 0, but here it is in dimension {x.batch_axis}"
        )
    return x


def _opset_input(node: OnnxNode, inputs: list, index: int, attr: str, since: int):
    """An argument that moved from an attribute to an input at opset ``since``."""
    if node.opset < since:
        return node.attr(attr)
    value = inputs[index] if len(inputs) > index else None
    return None if value is None else _ints(_constant(value, attr))


def _torch_pad(begin: list[int], end: list[int]) -> list[int]:
    """ONNX begin/end pads of the trailing dims -> F.pad's last-dim-first list."""
    pad: list[int] = []
    for b, e in zip(reversed(begin), reversed(end), strict=True):
        pad += [b, e]
    return pad


def _spatial_pads(
    node: OnnxNode, x: Value, kernel: list[int], strides: list[int], dilations: list[int]
) -> tuple[list[int], list[int]]:
    """Begin and end padding of each spatial dim, resolving ``auto_pad``."""
    rank = len(kernel)
    auto = node.attr("auto_pad", "NOTSET")
    if auto == "NOTSET":
        pads = list(node.attr("pads", [0] * 2 * rank))
        return pads[:rank], pads[rank:]
    if auto == "VALID":
        return [0] * rank, [0] * rank
    begin, end = [], []
    for size, k, s, d in zip(x.shape[2:], kernel, strides, dilations, strict=True):
        total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
        small = total // 2
        begin.append(small if auto == "SAME_UPPER" else total - small)
        end.append(total - small if auto == "SAME_UPPER" else small)
    return begin, end


def _batch_of_broadcast(x: Value, const: torch.Tensor) -> None:
    """A constant operand must not vary along the batch."""
    axis_in_const = x.batch_axis - x.ndim + const.ndim  # both right-aligned to the output
    if 0 <= axis_in_const < const.ndim and const.shape[axis_in_const] != 1:
        raise ImportFailure(
            f"combines an activation with a constant of shape {list(const.shape)} that varies "
            "along the batch dimension"
        )


# ---- linear layers -------------------------------------------------------------------------


@handles("Conv")
def conv(b: GraphBuilder, node: OnnxNode, inputs: list) -> list:
    x = _batch_first(_activation(inputs[0]))
    weight = _constant(inputs[1], "weight").float()
    bias = (
        _constant(inputs[2], "bias").float() if len(inputs) > 2 and inputs[2] is not None else None
    )
    rank = weight.ndim - 2
    if rank not in (1, 2):
        raise ImportFailure(f"is a {rank}-D convolution; only 1-D and 2-D are supported")
    kernel = list(weight.shape[2:])
    strides = list(node.attr("strides", [1] * rank))
    dilations = list(node.attr("dilations", [1] * rank))
    groups = node.attr("group", 1)
    begin, end = _spatial_pads(node, x, kernel, strides, dilations)
    if begin != end:
        x = b.call_function(F.pad, x, _torch_pad(begin, end))
        begin = [0] * rank
    layer = (nn.Conv1d if rank == 1 else nn.Conv2d)(
        weight.shape[1] * groups,
        weight.shape[0],
        kernel,
        stride=strides,
        padding=begin,
        dilation=dilations,
        groups=groups,
        bias=bias is not None,
    )
    with torch.no_grad():
        layer.weight.copy_(weight)
        if bias is not None:
            layer.bias.copy_(bias)
    return [b.call_module(node.name, layer, x)]


def _linear(b: GraphBuilder, node: OnnxNode, x: Value, weight: torch.Tensor, bias) -> Value:
    """``x @ weight.T + bias`` as nn.Linear (weight is [out, in])."""
    if x.batch_axis == x.ndim - 1:
        raise ImportFailure("multiplies along the batch dimension")
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    with torch.no_grad():
        layer.weight.copy_(weight)
        if bias is not None:
            layer.bias.copy_(bias)
    return b.call_module(node.name, layer, x)


@handles("Gemm")
def gemm(b: GraphBuilder, node: OnnxNode, inputs: list) -> list:
    if isinstance(inputs[1], Value):
        raise ImportFailure("multiplies two activations, which spiking neurons cannot represent")
    x = _batch_first(_activation(inputs[0], "first input (A)"))
    if node.attr("transA", 0):
        raise ImportFailure("transposes its activation input (transA=1)")
    matrix = _constant(inputs[1], "weight (B)").float()
    weight = node.attr("alpha", 1.0) * (matrix if node.attr("transB", 0) else matrix.T)
    bias = None
    if len(inputs) > 2 and inputs[2] is not None:
        c = node.attr("beta", 1.0) * _constant(inputs[2], "bias (C)").float()
        if c.ndim == 2 and c.shape[0] != 1:
            raise ImportFailure(f"adds a bias of shape {list(c.shape)} that varies along the batch")
        bias = c.reshape(-1).expand(weight.shape[0]) if c.numel() == 1 else c.reshape(-1)
    return [_linear(b, node, x, weight, bias)]


@handles("MatMul")
def matmul(b: GraphBuilder, node: OnnxNode, inputs: list) -> list:
    left, right = inputs
    if isinstance(left, Value) and isinstance(right, Value):
        raise ImportFailure(
            "multiplies two activations (attention-like), which spiking neurons cannot represent"
        )
    if not isinstance(left, Value):
        raise ImportFailure("multiplies a constant matrix by an activation (constant on the left)")
    if right.ndim != 2:
        raise ImportFailure(f"has a weight of rank {right.ndim}; only 2-D weights are supported")
    return [_linear(b, node, left, right.float().T, None)]


def _fuse_bias(b: GraphBuilder, x: Value, c: torch.Tensor) -> Value | None:
    """A bias-free Linear (from MatMul) or conv followed by ``Add`` of one constant per output
    channel: fold the constant into the layer's bias (the pattern TF and old exporters write)."""
    layer = b.module_of(x)
    if isinstance(layer, nn.Linear):
        channels, axis = layer.out_features, c.ndim - 1
    elif isinstance(layer, (nn.Conv1d, nn.Conv2d)):
        channels, axis = layer.out_channels, c.ndim - x.ndim + 1
    else:
        return None
    if layer.bias is not None or c.numel() != channels or not 0 <= axis < c.ndim:
        return None
    if c.shape[axis] != channels or c.ndim > x.ndim:
        return None
    layer.bias = nn.Parameter(c.reshape(-1).float().clone())
    return Value(x.node, x.probe + c.float(), x.batch_axis)


_ARITHMETIC = {
    "Add": operator.add,
    "Sub": operator.sub,
    "Mul": operator.mul,
    "Div": operator.truediv,
}


def _combine(b: GraphBuilder, fn: Callable, left, right) -> Value:
    """``fn(left, right)`` with broadcasting; constants become buffers or Python scalars."""
    values = [v for v in (left, right) if isinstance(v, Value)]
    out_ndim = max(v.ndim for v in (left, right))
    if len(values) == 2:
        if left.batch_axis + out_ndim - left.ndim != right.batch_axis + out_ndim - right.ndim:
            raise ImportFailure("combines two activations whose batch dimensions do not line up")
    operands = []
    for operand in (left, right):
        if isinstance(operand, torch.Tensor):
            _batch_of_broadcast(values[0], operand)
            if operand.numel() == 1 and operand.ndim <= values[0].ndim:
                operand = operand.item()
        operands.append(operand)
    first = values[0]
    return b.call_function(fn, *operands, batch_axis=first.batch_axis + out_ndim - first.ndim)


@handles("Add", "Sub", "Mul", "Div")
def arithmetic(b: GraphBuilder, node: OnnxNode, inputs: list) -> list:
    left, right = inputs
    if node.op_type == "Add" and not (isinstance(left, Value) and isinstance(right, Value)):
        i = 0 if isinstance(left, Value) else 1
        if b.uses(node.proto.input[i]) == 1:
            fused = _fuse_bias(b, inputs[i], inputs[1 - i])
            if fused is not None:
                return [fused]
    return [_combine(b, _ARITHMETIC[node.op_type], left, right)]


@handles("Sum")
def sum_(b: GraphBuilder, node: OnnxNode, inputs: list) -> list:
    total = inputs[0]
    for operand in inputs[1:]:
        total = _combine(b, operator.add, total, operand)
    return [total]


# ---- activations ---------------------------------------------------------------------------


def _hardsigmoid(node: OnnxNode) -> nn.Module:
    if abs(node.attr("alpha", 0.2) - 1 / 6) > 1e-6 or abs(node.attr("beta", 0.5) - 0.5) > 1e-6:
        raise ImportFailure("uses alpha/beta other than torch's Hardsigmoid (1/6, 0.5)")
    return nn.Hardsigmoid()


def _selu(node: OnnxNode) -> nn.Module:
    alpha, gamma = node.attr("alpha", 1.6732632), node.attr("gamma", 1.0507010)
    if abs(alpha - 1.6732632) > 1e-6 or abs(gamma - 1.0507010) > 1e-6:
        raise ImportFailure("uses alpha/gamma other than the standard SELU constants")
    return nn.SELU()


# Non-ReLU activations import faithfully; the converter then refuses them with its own message.
_ACTIVATIONS: dict[str, Callable[[OnnxNode], nn.Module]] = {
    "Relu": lambda n: nn.ReLU(),
    "LeakyRelu": lambda n: nn.LeakyReLU(n.attr("alpha", 0.01)),
    "Sigmoid": lambda n: nn.Sigmoid(),
    "Tanh": lambda n: nn.Tanh(),
    "Elu": lambda n: nn.ELU(n.attr("alpha", 1.0)),
    "Selu": _selu,
    "Softplus": lambda n: nn.Softplus(),
    "Gelu": lambda n: nn.GELU(approximate=n.attr("approximate", "none")),
    "HardSigmoid": _hardsigmoid,
    "HardSwish": lambda n: nn.Hardswish(),
    "Mish": lambda n: nn.Mish(),
}


@handles(*_ACTIVATIONS)
def activation(b: GraphBuilder, node: OnnxNode, inputs: list) -> list:
    return [b.call_module(node.name, _ACTIVATIONS[node.op_type](node), _activation(inputs[0]))]


@handles("PRelu")
def prelu(b: GraphBuilder, node: OnnxNode, inputs: list) -> list:
    x = _activation(inputs[0])
    slope = _constant(inputs[1], "slope").float()
    if slope.numel() not in (1, x.shape[1] if x.ndim > 1 else 1):
        raise ImportFailure(f"has a slope of shape {list(slope.shape)}; only per-channel slopes")
    layer = nn.PReLU(slope.numel())
    with torch.no_grad():
        layer.weight.copy_(slope.reshape(-1))
    return [b.call_module(node.name, layer, x)]


@handles("Clip")
def clip(b: GraphBuilder, node: OnnxNode, inputs: list) -> list:
    x = _activation(inputs[0])
    if node.opset < 11:
        low, high = node.attr("min"), node.attr("max")
    else:
        bounds = [_constant(v, "bound").item() if v is not None else None for v in inputs[1:3]]
        low, high = [*bounds, None, None][:2]
    low = None if low is None or low <= _LOWEST else float(low)
    high = None if high is None or high >= -_LOWEST else float(high)
    if low == 0 and high is None:
        layer = nn.ReLU()
    elif low == 0 and high == 6:
        layer = nn.ReLU6()
    else:
        layer = nn.Hardtanh(-math.inf if low is None else low, math.inf if high is None else high)
    return [b.call_module(node.name, layer, x)]


@handles("Softmax", "LogSoftmax")
def softmax(b: GraphBuilder, node: OnnxNode, inputs: list) -> list:
    x = _activation(inputs[0])
    if node.outputs[0] == b.output_name:
        # A classifier's output softmax is monotonic: drop it so the model returns logits
        # (what the converter and the attacks need). The import is checked against the logits.
        b.removed_output = node.op_type
        b.output_name = node.proto.input[0]
        return [x]
    axis = _axis(node.attr("axis", -1 if node.opset >= 13 else 1), x.ndim)
    if node.opset < 13 and axis != x.ndim - 1:
        raise ImportFailure("normalises over several flattened dims (opset < 13 semantics)")
    cls = nn.Softmax if node.op_type == "Softmax" else nn.LogSoftmax
    return [b.call_module(node.name, cls(dim=axis), x)]


# ---- normalisation and pooling -------------------------------------------------------------


@handles("BatchNormalization")
def batch_norm(b: GraphBuilder, node: OnnxNode, inputs: list) -> list:
    x = _batch_first(_activation(inputs[0]))
    if node.attr("training_mode", 0) or any(b.uses(name) for name in node.outputs[1:] if name):
        raise ImportFailure("is in training mode (it updates running statistics)")
    scale, bias, mean, var = (_constant(v, "statistic").float() for v in inputs[1:5])
    if x.ndim == 4:
        layer = nn.BatchNorm2d(scale.numel(), eps=node.attr("epsilon", 1e-5))
    elif x.ndim in (2, 3):
        layer = nn.BatchNorm1d(scale.numel(), eps=node.attr("epsilon", 1e-5))
    else:
        raise ImportFailure(f"normalises a rank-{x.ndim} tensor; only ranks 2-4 are supported")
    with torch.no_grad():
        layer.weight.copy_(scale)
        layer.bias.copy_(bias)
        layer.running_mean.copy_(mean)
        layer.running_var.copy_(var)
    return [b.call_module(node.name, layer, x)]


@handles("MaxPool", "AveragePool")
def pool(b: GraphBuilder, node: OnnxNode, inputs: list) -> list:
    x = _batch_first(_activation(inputs[0]))
    if x.ndim != 4:
        raise ImportFailure(f"pools a rank-{x.ndim} tensor; only 2-D pooling is supported")
    if len(node.outputs) > 1 and node.outputs[1] and b.uses(node.outputs[1]):
        raise ImportFailure("returns argmax indices, which convertsnn does not support")
    kernel = list(node.attr("kernel_shape"))
    strides = list(node.attr("strides", [1, 1]))
    dilations = list(node.attr("dilations", [1, 1]))
    ceil_mode = bool(node.attr("ceil_mode", 0))
    begin, end = _spatial_pads(node, x, kernel, strides, dilations)
    fits = begin == end and all(
        2 * p <= (k - 1) * d + 1 for p, k, d in zip(begin, kernel, dilations, strict=True)
    )
    if node.op_type == "MaxPool":
        if not fits:
            x = b.call_function(F.pad, x, _torch_pad(begin, end), value=-math.inf)
            begin = [0, 0]
        layer = nn.MaxPool2d(kernel, strides, begin, dilations, ceil_mode=ceil_mode)
    else:
        if dilations != [1, 1]:
            raise ImportFailure("uses dilations, which torch's average pooling does not support")
        include_pad = bool(node.attr("count_include_pad", 0))
        if not fits:
            if not include_pad and any(begin + end):
                raise ImportFailure(
                    "pads unevenly without counting the padding (count_include_pad=0)"
                )
            x = b.call_function(F.pad, x, _torch_pad(begin, end))
            begin = [0, 0]
        layer = nn.AvgPool2d(
            kernel, strides, begin, ceil_mode=ceil_mode, count_include_pad=include_pad
        )
    return [b.call_module(node.name, layer, x)]


@handles("GlobalAveragePool")
def global_average_pool(b: GraphBuilder, node: OnnxNode, inputs: list) -> list:
    x = _batch_first(_activation(inputs[0]))
    if x.ndim == 4:
        return [b.call_module(node.name, nn.AdaptiveAvgPool2d((1, 1)), x)]
    return [b.call_function(torch.mean, x, dim=tuple(range(2, x.ndim)), keepdim=True)]


@handles("ReduceMean")
def reduce_mean(b: GraphBuilder, node: OnnxNode, inputs: list) -> list:
    x = _activation(inputs[0])
    axes = _opset_input(node, inputs, 1, "axes", since=18)
    if not axes:
        if node.attr("noop_with_empty_axes", 0):
            return [x]
        axes = list(range(x.ndim))
    axes = sorted({_axis(a, x.ndim) for a in axes})
    if x.batch_axis in axes:
        raise ImportFailure("averages over the batch dimension")
    keep = bool(node.attr("keepdims", 1))
    batch_axis = x.batch_axis if keep else x.batch_axis - sum(a < x.batch_axis for a in axes)
    return [b.call_function(torch.mean, x, dim=tuple(axes), keepdim=keep, batch_axis=batch_axis)]


# ---- shape and data movement ---------------------------------------------------------------


@handles("Identity", "Dropout")
def identity(b: GraphBuilder, node: OnnxNode, inputs: list) -> list:
    if node.op_type == "Dropout":
        if len(node.outputs) > 1 and node.outputs[1] and b.uses(node.outputs[1]):
            raise ImportFailure("returns its dropout mask, which convertsnn does not support")
        if len(inputs) > 2 and inputs[2] is not None and bool(_constant(inputs[2], "flag")):
            raise ImportFailure("is in training mode")
    return [inputs[0]]


@handles("Cast")
def cast(b: GraphBuilder, node: OnnxNode, inputs: list) -> list:
    if node.attr("to") != 1:  # TensorProto.FLOAT
        raise ImportFailure("casts activations to a type other than float32")
    return [inputs[0]]


@handles("Flatten")
def flatten(b: GraphBuilder, node: OnnxNode, inputs: list) -> list:
    x = _batch_first(_activation(inputs[0]))
    axis = _axis(node.attr("axis", 1), x.ndim)
    if axis == 0 or math.prod(x.shape[1:axis]) != 1:
        raise ImportFailure(f"flattens the batch together with other dims (axis={axis})")
    if axis == 1:
        return [b.call_function(torch.flatten, x, 1, batch_axis=0)]
    return [b.call_method("reshape", x, -1, math.prod(x.shape[axis:]), batch_axis=0)]


@handles("Reshape")
def reshape(b: GraphBuilder, node: OnnxNode, inputs: list) -> list:
    """Rebuild a reshape batch-agnostically: ``x.reshape(-1, *rest)``.

    The first target dim is taken as the batch when it is the batch sentinel (a shape read from
    the input), ``0`` (copy), ``-1`` with every other dim fixed, or the model's fixed batch size
    (files exported with batch 1 still run any batch).
    """
    x = _batch_first(_activation(inputs[0]))
    target = _ints(_constant(inputs[1], "target shape"))
    allow_zero = bool(node.attr("allowzero", 0))
    features = math.prod(x.shape[1:])
    first, rest = target[0], target[1:]
    if BATCH in rest:
        raise ImportFailure(f"moves the batch dimension (target {_show(target)})")
    for i, dim in enumerate(rest):
        if dim == 0 and not allow_zero:
            if i + 1 >= x.ndim:
                raise ImportFailure(
                    f"copies a dim the input does not have (target {_show(target)})"
                )
            rest[i] = x.shape[i + 1]
    if rest.count(-1) + (first == -1) > 1:
        raise ImportFailure(f"cannot tell the batch from the other dims (target {_show(target)})")
    if -1 in rest:
        known = math.prod(d for d in rest if d != -1)
        if known == 0 or features % known:
            raise ImportFailure(f"does not fit its input {x.shape} (target {_show(target)})")
        rest[rest.index(-1)] = features // known
    is_batch = first in (BATCH, -1) or (first == 0 and not allow_zero) or first == b.fixed_batch
    if not is_batch or math.prod(rest) != features:
        raise ImportFailure(
            f"changes the batch dimension (target {_show(target)}, input [N, "
            f"{', '.join(map(str, x.shape[1:]))}])"
        )
    if list(x.shape[1:]) == rest:
        return [x]
    if len(rest) == 1:
        return [b.call_function(torch.flatten, x, 1, batch_axis=0)]
    return [b.call_method("reshape", x, -1, *rest, batch_axis=0)]


def _show(target: list[int]) -> str:
    return "[" + ", ".join("N" if d == BATCH else str(d) for d in target) + "]"


@handles("Transpose")
def transpose(b: GraphBuilder, node: OnnxNode, inputs: list) -> list:
    x = _activation(inputs[0])
    perm = [_axis(p, x.ndim) for p in node.attr("perm", list(reversed(range(x.ndim))))]
    if x.node in b.permuted:  # two transposes that cancel (e.g. the NHWC input's and the first)
        source, before = b.permuted[x.node]
        if [before[p] for p in perm] == list(range(x.ndim)):
            return [source]
    if perm == list(range(x.ndim)):
        return [x]
    y = b.call_method("permute", x, *perm, batch_axis=perm.index(x.batch_axis))
    b.permuted[y.node] = (x, perm)
    return [y]


@handles("Squeeze")
def squeeze(b: GraphBuilder, node: OnnxNode, inputs: list) -> list:
    x = _activation(inputs[0])
    axes = _opset_input(node, inputs, 1, "axes", since=13)
    if axes is None:
        axes = [i for i, d in enumerate(x.shape) if d == 1 and i != x.batch_axis]
    axes = sorted({_axis(a, x.ndim) for a in axes})
    if x.batch_axis in axes:
        raise ImportFailure("removes the batch dimension")
    if any(x.shape[a] != 1 for a in axes):
        raise ImportFailure(f"squeezes a dim that is not 1 (axes {axes}, shape {list(x.shape)})")
    if not axes:
        return [x]
    batch_axis = x.batch_axis - sum(a < x.batch_axis for a in axes)
    return [b.call_method("squeeze", x, tuple(axes), batch_axis=batch_axis)]


@handles("Unsqueeze")
def unsqueeze(b: GraphBuilder, node: OnnxNode, inputs: list) -> list:
    x = _activation(inputs[0])
    axes = _opset_input(node, inputs, 1, "axes", since=13)
    rank = x.ndim + len(axes)
    for axis in sorted(_axis(a, rank) for a in axes):
        batch_axis = x.batch_axis + (axis <= x.batch_axis)
        x = b.call_method("unsqueeze", x, axis, batch_axis=batch_axis)
    return [x]


@handles("Concat")
def concat(b: GraphBuilder, node: OnnxNode, inputs: list) -> list:
    if not all(isinstance(v, Value) for v in inputs):
        raise ImportFailure("concatenates activations with constants")
    axis = _axis(node.attr("axis"), inputs[0].ndim)
    if any(v.batch_axis != inputs[0].batch_axis for v in inputs):
        raise ImportFailure("concatenates tensors whose batch dimensions differ")
    if axis == inputs[0].batch_axis:
        raise ImportFailure("concatenates along the batch dimension")
    return [b.call_function(torch.cat, list(inputs), dim=axis)]


_PAD_MODES = {"constant": "constant", "reflect": "reflect", "edge": "replicate", "wrap": "circular"}


@handles("Pad")
def pad(b: GraphBuilder, node: OnnxNode, inputs: list) -> list:
    x = _activation(inputs[0])
    mode = node.attr("mode", "constant")
    if mode not in _PAD_MODES:
        raise ImportFailure(f"uses pad mode '{mode}'")
    if node.opset < 11:
        pads, value = list(node.attr("pads")), float(node.attr("value", 0.0))
    else:
        pads = _ints(_constant(inputs[1], "pads"))
        value = (
            float(_constant(inputs[2], "value"))
            if len(inputs) > 2 and inputs[2] is not None
            else 0.0
        )
        if len(inputs) > 3 and inputs[3] is not None:
            axes = [_axis(a, x.ndim) for a in _ints(_constant(inputs[3], "axes"))]
            full = [0] * (2 * x.ndim)
            for i, axis in enumerate(axes):
                full[axis], full[axis + x.ndim] = pads[i], pads[i + len(axes)]
            pads = full
    begin, end = pads[: x.ndim], pads[x.ndim :]
    if begin[x.batch_axis] or end[x.batch_axis]:
        raise ImportFailure("pads the batch dimension")
    first = next((i for i in range(x.ndim) if begin[i] or end[i]), x.ndim)
    if first == x.ndim:
        return [x]
    kwargs = {"value": value} if mode == "constant" else {}
    return [
        b.call_function(
            F.pad, x, _torch_pad(begin[first:], end[first:]), mode=_PAD_MODES[mode], **kwargs
        )
    ]


@handles("Shape")
def shape(b: GraphBuilder, node: OnnxNode, inputs: list) -> list:
    x = _activation(inputs[0])
    dims = list(x.shape)
    dims[x.batch_axis] = BATCH
    start, end = node.attr("start", 0), node.attr("end", None)
    return [torch.tensor(dims[start:end], dtype=torch.int64)]


@handles("Slice")
def slice_(b: GraphBuilder, node: OnnxNode, inputs: list) -> list:
    x = _activation(inputs[0])
    if node.opset < 10:
        starts, ends = node.attr("starts"), node.attr("ends")
        axes, steps = node.attr("axes"), None
    else:
        starts, ends = (_ints(_constant(v, "bound")) for v in inputs[1:3])
        axes = (
            _ints(_constant(inputs[3], "axes"))
            if len(inputs) > 3 and inputs[3] is not None
            else None
        )
        steps = (
            _ints(_constant(inputs[4], "steps"))
            if len(inputs) > 4 and inputs[4] is not None
            else None
        )
    axes = [_axis(a, x.ndim) for a in (axes or range(len(starts)))]
    steps = steps or [1] * len(starts)
    index = [slice(None)] * x.ndim
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        if step < 1:
            raise ImportFailure("slices with a negative step")
        if axis == x.batch_axis:
            if start == 0 and end >= 2**31 - 1:
                continue
            raise ImportFailure("slices the batch dimension")
        size = x.shape[axis]
        start = min(max(start + size if start < 0 else start, 0), size)
        end = min(max(end + size if end < 0 else end, 0), size)
        index[axis] = slice(start, end, None if step == 1 else step)
    return [b.call_function(operator.getitem, x, tuple(index))]


@handles("Gather")
def gather(b: GraphBuilder, node: OnnxNode, inputs: list) -> list:
    x = _activation(inputs[0], "data")
    indices = _constant(inputs[1], "indices")
    axis = _axis(node.attr("axis", 0), x.ndim)
    if axis == x.batch_axis:
        raise ImportFailure("gathers along the batch dimension")
    if indices.ndim > 1:
        raise ImportFailure("gathers with multi-dimensional indices")
    chosen = [i + x.shape[axis] if i < 0 else i for i in _ints(indices)]
    index = (slice(None),) * axis + ((chosen[0],) if indices.ndim == 0 else (chosen,))
    batch_axis = x.batch_axis - (indices.ndim == 0 and axis < x.batch_axis)
    return [b.call_function(operator.getitem, x, index, batch_axis=batch_axis)]
