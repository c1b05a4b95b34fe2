"""Walk an ONNX graph in order: fold nodes whose inputs are all constant, hand the rest to the
op handlers, and return the torch.fx module they built."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from onnx.reference import ReferenceEvaluator
from torch import fx

from convertsnn.importers.onnx.builder import BATCH, GraphBuilder, ImportFailure, OnnxNode, Value
from convertsnn.importers.onnx.handlers import HANDLERS

# Folded ops that may carry the batch sentinel: they only move shape entries around.
_SHAPE_MOVES = frozenset(
    {"Gather", "Slice", "Concat", "Unsqueeze", "Squeeze", "Identity", "Reshape", "Flatten"}
)


@dataclass
class Translation:
    """The rebuilt module and what the import changed or found."""

    module: fx.GraphModule
    output: torch.Tensor  # the module's output on the probe batch
    output_name: str  # the ONNX value the module reproduces
    removed_output: str | None  # an output Softmax that was dropped, if any
    mean: tuple[float, ...] | None = None  # the graph's own input normalisation, taken out of
    std: tuple[float, ...] | None = None  # the module (it belongs in front of it, as Normalize)


def to_tensor(array: np.ndarray) -> torch.Tensor:
    array = np.asarray(array)
    if array.dtype.kind == "V" or array.dtype.name in ("bfloat16", "float8e4m3fn"):
        array = array.astype(np.float32)
    return torch.from_numpy(np.array(array, copy=True))


def _fold(node: OnnxNode, inputs: list, opsets: list[onnx.OperatorSetIdProto]) -> list:
    """Evaluate a node with constant inputs with onnx's reference implementation."""
    carries_batch = any(
        isinstance(t, torch.Tensor) and t.dtype == torch.int64 and bool((t == BATCH).any())
        for t in inputs
    )
    if carries_batch and not (
        node.op_type in _SHAPE_MOVES or (node.op_type == "Cast" and node.attr("to") == 7)
    ):
        raise ImportFailure(
            "computes with the batch size; export the model without shape arithmetic on the "
            "batch (e.g. x.flatten(1) instead of x.view(x.size(0) * k, ...))"
        )
    feeds, graph_inputs = {}, []
    for name, value in zip(node.proto.input, inputs, strict=True):
        if name and name not in feeds:
            feeds[name] = value.numpy()
            dtype = onnx.helper.np_dtype_to_tensor_dtype(feeds[name].dtype)
            graph_inputs.append(onnx.helper.make_tensor_value_info(name, dtype, None))
    outputs = [onnx.helper.make_value_info(name, onnx.TypeProto()) for name in node.outputs if name]
    graph = onnx.helper.make_graph([node.proto], "fold", graph_inputs, outputs)
    model = onnx.helper.make_model(graph, opset_imports=opsets)
    results = ReferenceEvaluator(model).run(None, feeds)
    return [to_tensor(r) for r in results]


def _per_channel(value: torch.Tensor, channels: int, layout: str) -> tuple[float, ...] | None:
    """The values of a constant that varies at most along the channel axis of the input."""
    axis = value.ndim - (1 if layout == "NHWC" else 3)
    if value.ndim > 4 or value.numel() not in (1, channels):
        return None
    if value.numel() > 1 and not (0 <= axis < value.ndim and value.shape[axis] == channels):
        return None
    # shortest decimal that is the same float32 (0.4, not 0.4000000059604645)
    return tuple(float(str(v)) for v in value.float().reshape(-1).expand(channels).numpy())


def input_normalization(
    graph: onnx.GraphProto, input_name: str, constants: dict, channels: int, layout: str
) -> tuple[tuple[float, ...], tuple[float, ...], str, set[int]] | None:
    """``Sub(x, mean)`` then ``Div(., std)`` / ``Mul(., 1/std)`` (either may be missing) by
    per-channel constants, right at the input: mean, std, the normalised value's name and the
    indices of those nodes. None when the graph does not start that way."""
    mean, std, name, used = None, None, input_name, set()
    outputs = {o.name for o in graph.output}
    for allowed in (("Sub",), ("Div", "Mul")):
        readers = [(i, n) for i, n in enumerate(graph.node) if name in n.input]
        if len(readers) != 1 or name in outputs:
            break
        index, node = readers[0]
        if node.op_type not in allowed or list(node.input[:1]) != [name]:
            continue
        value = constants.get(node.input[1])
        values = None if value is None else _per_channel(value, channels, layout)
        if values is None:
            break
        if node.op_type == "Sub":
            mean = values
        else:
            std = values if node.op_type == "Div" else tuple(1 / v for v in values)
        name = node.output[0]
        used.add(index)
    if not used:
        return None
    return mean or (0.0,) * channels, std or (1.0,) * channels, name, used


def _constants(graph: onnx.GraphProto) -> dict[str, torch.Tensor]:
    """Initializers and Constant-node tensors, by name."""
    constants = {t.name: to_tensor(numpy_helper.to_array(t)) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            constants[node.output[0]] = to_tensor(numpy_helper.to_array(node.attribute[0].t))
    return constants


def _describe(node: OnnxNode) -> str:
    return f"op '{node.op_type}' (opset {node.opset}) at node '{node.name}'"


def translate(
    model: onnx.ModelProto,
    input_name: str,
    probe: torch.Tensor,
    layout: str,
    fixed_batch: int | None,
    extract_normalization: bool = True,
) -> Translation:
    """Rebuild ``model``'s graph as a torch.fx module taking NCHW ``probe``-shaped batches.

    With ``extract_normalization``, per-channel Sub/Div nodes at the input are taken out and
    returned as mean/std (the caller puts a Normalize layer in front instead).
    """
    graph = model.graph
    opsets = {o.domain or "ai.onnx": o.version for o in model.opset_import}
    use_counts = Counter(name for n in graph.node for name in n.input if name)
    use_counts.update(o.name for o in graph.output)
    b = GraphBuilder(use_counts, graph.output[0].name, fixed_batch)
    env: dict[str, Value | torch.Tensor] = {
        t.name: to_tensor(numpy_helper.to_array(t)) for t in graph.initializer
    }
    x = b.placeholder("x", probe)
    if layout == "NHWC":
        nhwc = b.call_method("permute", x, 0, 2, 3, 1, batch_axis=0)
        b.permuted[nhwc.node] = (x, [0, 2, 3, 1])
        x = nhwc
    env[input_name] = x
    remaining = dict(use_counts)
    found = None
    if extract_normalization and probe.ndim == 4:
        found = input_normalization(graph, input_name, _constants(graph), probe.shape[1], layout)
    skipped = set()
    if found is not None:
        *_, normalized, skipped = found
        env[normalized] = x
    for index, proto in enumerate(graph.node):
        if index in skipped:
            continue
        node = OnnxNode(proto, index, opsets.get(proto.domain or "ai.onnx", 0))
        try:
            missing = [name for name in proto.input if name and name not in env]
            if missing:
                raise ImportFailure(f"reads '{missing[0]}', which no earlier node produces")
            inputs = [env[name] if name else None for name in proto.input]
            if proto.domain not in ("", "ai.onnx"):
                raise ImportFailure(f"is not supported (custom domain '{proto.domain}')")
            if any(isinstance(v, Value) for v in inputs):
                if proto.op_type not in HANDLERS:
                    raise ImportFailure(
                        "is not supported; see docs/importers.md for the ops convertsnn imports"
                    )
                outputs = HANDLERS[proto.op_type](b, node, inputs)
            else:
                outputs = _fold(node, inputs, list(model.opset_import))
        except ImportFailure as err:
            raise ImportFailure(f"{_describe(node)} {err}") from None
        except Exception as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ImportFailure(
                f"{_describe(node)} could not be rebuilt in torch ({first[:200]})"
            ) from None
        for name, value in zip(proto.output, outputs, strict=False):
            if name:
                env[name] = value
        for name in proto.input:
            if name:
                remaining[name] -= 1
                if remaining[name] == 0 and name != b.output_name:
                    env.pop(name, None)
    result = env.get(b.output_name)
    if not isinstance(result, Value):
        raise ImportFailure(f"the output '{b.output_name}' does not depend on the input")
    if result.batch_axis != 0:
        raise ImportFailure(f"the output '{b.output_name}' does not have the batch first")
    b.output(result)
    translation = Translation(b.build(), result.probe, b.output_name, b.removed_output)
    if found is not None:
        translation.mean, translation.std = found[0], found[1]
    return translation
