"""Build a torch.fx graph from ONNX nodes, running every op on a probe batch as it goes.

Each activation is a :class:`Value`: its fx node, its value on a probe batch (so every shape is
known exactly while the graph is built) and the axis that holds the batch. Constants (weights,
folded shape arithmetic) are plain tensors; in a shape taken from an activation the batch size
is the sentinel :data:`BATCH`, so reshapes stay batch-agnostic (the SNN folds time into the
batch, ``[T*B, ...]``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import onnx
import torch
from torch import fx, nn

BATCH = -(2**62)  # the batch size, inside folded shape tensors


class ImportFailure(Exception):
    """A node that cannot be imported; the message completes ``"... at node 'n' <message>"``."""


@dataclass(eq=False)
class Value:
    """An activation: its fx node, its value on the probe batch, the axis holding the batch."""

    node: fx.Node
    probe: torch.Tensor
    batch_axis: int = 0

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.probe.shape)

    @property
    def ndim(self) -> int:
        return self.probe.ndim


@dataclass
class OnnxNode:
    """One ONNX node with its attributes decoded, as the handlers see it."""

    proto: onnx.NodeProto
    index: int
    opset: int
    attrs: dict[str, Any] = field(init=False)

    def __post_init__(self) -> None:
        self.attrs = {}
        for attr in self.proto.attribute:
            value = onnx.helper.get_attribute_value(attr)
            self.attrs[attr.name] = value.decode() if isinstance(value, bytes) else value

    @property
    def op_type(self) -> str:
        return self.proto.op_type

    @property
    def name(self) -> str:
        return self.proto.name or f"{self.op_type}_{self.index}"

    @property
    def outputs(self) -> list[str]:
        return list(self.proto.output)

    def attr(self, name: str, default: Any = None) -> Any:
        return self.attrs.get(name, default)


def _identifier(text: str) -> str:
    name = re.sub(r"\W", "_", text).strip("_") or "node"
    return f"n_{name}" if name[0].isdigit() else name


class GraphBuilder:
    """Accumulates the fx graph, its modules and constant buffers.

    Args:
        use_counts: how many nodes (and graph outputs) read each ONNX value.
        output_name: the ONNX value the module returns (a handler may move it, e.g. to the
            input of a dropped output Softmax).
        fixed_batch: the batch size fixed in the file's input shape, or None when symbolic.
    """

    def __init__(self, use_counts: dict[str, int], output_name: str, fixed_batch: int | None):
        self.root = nn.Module()
        self.graph = fx.Graph()
        self.use_counts = use_counts
        self.output_name = output_name
        self.fixed_batch = fixed_batch
        self.removed_output: str | None = None
        self.permuted: dict[fx.Node, tuple[Value, list[int]]] = {}
        self._buffers = 0

    def uses(self, name: str) -> int:
        return self.use_counts.get(name, 0)

    def _unique(self, stem: str) -> str:
        name, i = _identifier(stem), 0
        base = name
        while hasattr(self.root, name):
            i += 1
            name = f"{base}_{i}"
        return name

    def placeholder(self, name: str, probe: torch.Tensor) -> Value:
        return Value(self.graph.placeholder(_identifier(name)), probe, 0)

    def buffer(self, tensor: torch.Tensor) -> fx.Node:
        """A get_attr node reading ``tensor`` (stored as a buffer, saved with the model)."""
        name = self._unique(f"const_{self._buffers}")
        self._buffers += 1
        self.root.register_buffer(name, tensor.detach().clone())
        return self.graph.get_attr(name)

    def module_of(self, value: Value) -> nn.Module | None:
        if value.node.op != "call_module":
            return None
        return self.root.get_submodule(value.node.target)

    def call_module(self, name: str, module: nn.Module, x: Value) -> Value:
        module.eval()
        target = self._unique(name)
        self.root.add_module(target, module)
        return self._emit("call_module", target, module, (x,), {}, None)

    def call_function(
        self, fn: Callable, *args: Any, batch_axis: int | None = None, **kwargs: Any
    ) -> Value:
        return self._emit("call_function", fn, fn, args, kwargs, batch_axis)

    def call_method(
        self, method: str, *args: Any, batch_axis: int | None = None, **kwargs: Any
    ) -> Value:
        def call(self_, *rest, **kw):
            return getattr(self_, method)(*rest, **kw)

        return self._emit("call_method", method, call, args, kwargs, batch_axis)

    def output(self, value: Value) -> None:
        self.graph.output(value.node)

    def build(self, class_name: str = "OnnxModel") -> fx.GraphModule:
        gm = fx.GraphModule(self.root, self.graph, class_name)
        gm.graph.eliminate_dead_code()  # e.g. an NHWC permute that cancelled out
        gm.delete_all_unused_submodules()
        gm.recompile()
        return gm.eval()

    def _emit(self, op, target, fn, args, kwargs, batch_axis) -> Value:
        values: list[Value] = []

        def to_node(a):
            if isinstance(a, Value):
                values.append(a)
                return a.node
            return self.buffer(a) if isinstance(a, torch.Tensor) else a

        def to_probe(a):
            return a.probe if isinstance(a, Value) else a

        node_args = fx.node.map_aggregate(args, to_node)
        node_kwargs = fx.node.map_aggregate(kwargs, to_node)
        with torch.no_grad():
            out = fn(
                *fx.node.map_aggregate(args, to_probe), **fx.node.map_aggregate(kwargs, to_probe)
            )
        node = self.graph.create_node(op, target, node_args, node_kwargs)
        if batch_axis is None:  # ops that keep the rank keep the batch where it was
            if out.ndim != values[0].ndim:
                raise ValueError(f"{target} changes the rank: say where the batch goes")
            batch_axis = values[0].batch_axis
        return Value(node, out, batch_axis)
