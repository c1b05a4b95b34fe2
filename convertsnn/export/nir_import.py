"""Read a NIR graph back into a :class:`~convertsnn.snn.network.SpikingNetwork`.

Supported nodes: Input, Output, Conv2d, Affine, Linear, SumPool2d, AvgPool2d, Flatten, Scale, IF
and LIF (leak-free input, ``v_leak = 0``, ``v_reset = 0``, one time constant for the layer and a
threshold that is one value per layer or per channel). Several edges into a node are summed.
NIR neurons emit binary spikes while convertsnn's emit ``theta * spike``, so each neuron is
followed by a multiplication by ``1 / theta``. The reset (NIR: to ``v_reset``) and the initial
membrane come from the graph metadata written by :mod:`convertsnn.export.nir` when present
(``convertsnn.reset``, ``convertsnn.v_init``); otherwise reset to zero and ``v_init = 0``, as NIR
specifies. Any other node (CubaLIF, LI, Delay, Threshold, Conv1d, subgraphs, ...) is refused,
naming it. LIF time constants use the exporter's step ``DT`` (``leak = 1 - DT / tau``).
"""

from __future__ import annotations

import operator
import os
from pathlib import Path

import numpy as np
import torch
from torch import fx, nn

from convertsnn.errors import ConvertSNNError
from convertsnn.export.nir import DT
from convertsnn.snn.network import SpikingNetwork
from convertsnn.snn.neurons import IFNeuron


def _tensor(value) -> torch.Tensor:
    return torch.as_tensor(np.asarray(value), dtype=torch.float32)


def _pair(value) -> tuple[int, int]:
    flat = np.asarray(value).reshape(-1).tolist()
    return (int(flat[0]), int(flat[-1]))


def _topological(names: list[str], edges: list[tuple[str, str]]) -> list[str]:
    order, done = [], set()
    pending = list(names)
    while pending:
        ready = [n for n in pending if all(s in done for s, d in edges if d == n)]
        if not ready:
            raise ConvertSNNError("the NIR graph has a cycle (recurrent connections)")
        for name in ready:
            pending.remove(name)
            done.add(name)
            order.append(name)
    return order


def _layer_threshold(name: str, node) -> torch.Tensor:
    """A scalar or per-channel threshold from NIR's per-neuron array, or a one-line error."""
    full = _tensor(node.v_threshold)
    if torch.all(full == full.reshape(-1)[0]):
        return full.reshape(-1)[0].clone()
    per_channel = full.reshape(full.shape[0], -1)
    if full.dim() > 1 and torch.all(per_channel == per_channel[:, :1]):
        return per_channel[:, 0].clone()
    raise ConvertSNNError(
        f"NIR node '{name}': thresholds vary within a channel; convertsnn holds one per channel"
    )


def _uniform(name: str, what: str, value) -> float:
    array = np.asarray(value, dtype=np.float64)
    if not np.allclose(array, array.reshape(-1)[0]):
        raise ConvertSNNError(f"NIR node '{name}': {what} varies across neurons; not supported")
    return float(array.reshape(-1)[0])


class _Reader:
    def __init__(self, graph, reset: str | None) -> None:
        self.graph = graph
        self.root = nn.Module()
        self.fx = fx.Graph()
        self.values: dict[str, fx.Node] = {}
        metadata = dict(getattr(graph, "metadata", None) or {})
        self.reset = reset or str(metadata.get("convertsnn.reset", "zero")) or "zero"
        if self.reset not in ("zero", "subtract"):
            raise ConvertSNNError(f"NIR graph metadata: unknown convertsnn.reset '{self.reset}'")
        self.v_init = float(str(metadata.get("convertsnn.v_init", "0")).split(",")[0] or 0)
        self.timesteps = metadata.get("convertsnn.timesteps")
        self.input_size: tuple[int, ...] | None = None
        self.buffers = 0

    def module(self, name: str, module: nn.Module, source: fx.Node) -> fx.Node:
        self.root.add_module(name, module)
        return self.fx.call_module(name, (source,))

    def constant(self, value: torch.Tensor) -> fx.Node | float:
        if value.dim() == 0:
            return float(value)
        name = f"constant_{self.buffers}"
        self.buffers += 1
        self.root.register_buffer(name, value)
        return self.fx.get_attr(name)

    def inputs(self, name: str) -> fx.Node:
        sources = [self.values[s] for s, d in self.graph.edges if d == name]
        if not sources:
            raise ConvertSNNError(f"NIR node '{name}' has no input")
        total = sources[0]
        for other in sources[1:]:
            total = self.fx.call_function(operator.add, (total, other))
        return total

    def node(self, name: str, node) -> None:
        import nir

        kind = type(node).__name__
        safe = "".join(c if c.isalnum() else "_" for c in name)
        if not safe.isidentifier() or hasattr(nn.Module, safe) or safe in ("input", "output"):
            safe = f"n_{safe}"
        if isinstance(node, nir.Input):
            self.input_size = tuple(int(v) for v in np.asarray(node.input_type["input"]).tolist())
            self.values[name] = self.fx.placeholder("input")
            return
        x = self.inputs(name)
        if isinstance(node, nir.Output):
            self.fx.output(x)
        elif isinstance(node, nir.Conv2d):
            if isinstance(node.padding, str):
                raise ConvertSNNError(f"NIR node '{name}': padding '{node.padding}' not supported")
            weight, bias = _tensor(node.weight), _tensor(node.bias)
            conv = nn.Conv2d(
                weight.shape[1] * int(node.groups), weight.shape[0], tuple(weight.shape[2:]),
                stride=_pair(node.stride), padding=_pair(node.padding),
                dilation=_pair(node.dilation), groups=int(node.groups),
            )  # fmt: skip
            conv.weight.data, conv.bias.data = weight, bias.expand(weight.shape[0]).clone()
            self.values[name] = self.module(safe, conv, x)
        elif isinstance(node, (nir.Affine, nir.Linear)):
            weight = _tensor(node.weight)
            has_bias = isinstance(node, nir.Affine)
            linear = nn.Linear(weight.shape[1], weight.shape[0], bias=has_bias)
            linear.weight.data = weight
            if has_bias:
                linear.bias.data = _tensor(node.bias)
            self.values[name] = self.module(safe, linear, x)
        elif isinstance(node, (nir.SumPool2d, nir.AvgPool2d)):
            kernel = _pair(node.kernel_size)
            pool = nn.AvgPool2d(kernel, _pair(node.stride), _pair(node.padding))
            out = self.module(safe, pool, x)
            if isinstance(node, nir.SumPool2d):
                out = self.fx.call_function(operator.mul, (out, float(kernel[0] * kernel[1])))
            self.values[name] = out
        elif isinstance(node, nir.Flatten):
            start, end = int(node.start_dim), int(node.end_dim)  # NIR dims exclude the batch
            start, end = (start + 1 if start >= 0 else start), (end + 1 if end >= 0 else end)
            self.values[name] = self.module(safe, nn.Flatten(start, end), x)
        elif isinstance(node, nir.Scale):
            scale = _tensor(node.scale)
            self.values[name] = self.fx.call_function(operator.mul, (x, self.constant(scale)))
        elif isinstance(node, (nir.IF, nir.LIF)):
            self.values[name] = self.neuron(name, safe, node, x)
        else:
            raise ConvertSNNError(
                f"NIR node '{name}' of type {kind} is not supported by convertsnn (supported: "
                "Input, Output, Conv2d, Affine, Linear, SumPool2d, AvgPool2d, Flatten, Scale, "
                "IF, LIF)"
            )

    def neuron(self, name: str, safe: str, node, x: fx.Node) -> fx.Node:
        import nir

        if node.v_reset is not None and np.any(np.asarray(node.v_reset) != 0):
            raise ConvertSNNError(f"NIR node '{name}': v_reset other than 0 is not supported")
        theta = _layer_threshold(name, node)
        if isinstance(node, nir.IF):
            if _uniform(name, "r", node.r) != 1:
                x = self.fx.call_function(operator.mul, (x, _uniform(name, "r", node.r)))
            leak = 1.0
        else:
            if np.any(np.asarray(node.v_leak) != 0):
                raise ConvertSNNError(f"NIR node '{name}': LIF with v_leak other than 0")
            tau = _uniform(name, "tau", node.tau)
            gain = _uniform(name, "r", node.r) * DT / tau
            if not np.isclose(gain, 1.0):
                x = self.fx.call_function(operator.mul, (x, gain))
            leak = 1.0 - DT / tau
            if not 0 < leak <= 1:
                raise ConvertSNNError(
                    f"NIR node '{name}': tau={tau:g} gives leak {leak:g} at step {DT:g} s"
                )
        neuron = IFNeuron(theta, leak=leak, reset=self.reset, v_init=self.v_init)
        out = self.module(safe, neuron, x)
        inverse = (
            1 / theta
            if theta.dim() == 0
            else (1 / theta).view(-1, *[1] * (len(node.v_threshold.shape) - 1))
        )
        return self.fx.call_function(operator.mul, (out, self.constant(inverse)))


def from_nir(
    graph, timesteps: int | None = None, source: str = "nir", reset: str | None = None
) -> SpikingNetwork:
    """A SpikingNetwork computing what the NIR ``graph`` describes (see the module doc);
    ``reset`` (``"zero"`` or ``"subtract"``) overrides the reset of every neuron (e.g. for
    Sinabs files, whose IF neurons reset by subtraction although NIR's IF resets to zero)."""
    import nir

    if not isinstance(graph, nir.NIRGraph):
        raise ConvertSNNError(f"expected a NIR graph, got a single {type(graph).__name__} node")
    reader = _Reader(graph, reset)
    for name in _topological(list(graph.nodes), list(graph.edges)):
        reader.node(name, graph.nodes[name])
    if reader.input_size is None:
        raise ConvertSNNError("the NIR graph has no Input node")
    body = fx.GraphModule(reader.root, reader.fx)
    steps = int(timesteps or reader.timesteps or 0)
    if steps < 1:
        raise ConvertSNNError("the NIR graph does not say how many steps to run; give --timesteps")
    metadata = {"source": source, "input_size": list(reader.input_size), "imported_from": "nir"}
    return SpikingNetwork(body, steps, "direct", metadata).eval()


def read_nir(
    path: str | os.PathLike, timesteps: int | None = None, reset: str | None = None
) -> SpikingNetwork:
    """Load a NIR file (HDF5) as a SpikingNetwork, with one-line errors for unreadable files."""
    import nir

    path = Path(path)
    if not path.is_file():
        raise ConvertSNNError(f"NIR file not found: {path}")
    try:
        graph = nir.read(str(path))
    except (OSError, KeyError, ValueError, TypeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConvertSNNError(f"{path} is not a readable NIR file ({first})") from None
    return from_nir(graph, timesteps, source=f"nir:{path.name}", reset=reset)
