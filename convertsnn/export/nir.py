"""Export a SpikingNetwork as a NIR graph (Neuromorphic Intermediate Representation).

NIR (Pedersen et al., Nature Communications 2024, "Neuromorphic intermediate representation")
is the exchange format of SpikingJelly, snnTorch, Norse, Sinabs, Rockpool, Lava and SpiNNaker2.
The exported graph uses only Input, Conv2d, Affine, SumPool2d, Flatten, IF/LIF and Output nodes;
sums (residual adds) are several edges into one node. How each feature is carried:

- input normalisation ``(x - mean) / std``: a first 1x1 Conv2d (exact);
- BatchNorm left in the graph: a 1x1 Conv2d (exact);
- ``theta * spike`` outputs: NIR neurons emit binary spikes, so theta is folded into the weights
  of the next Conv2d/Affine (through SumPool2d and Flatten, which commute with it); where spikes
  reach a sum or the output directly, a 1x1 Conv2d (or diagonal Affine) scales them;
- average pooling: SumPool2d with the 1/k^2 folded into the next weights like theta;
  ``count_include_pad=False`` with padding and ``ceil_mode`` are refused;
- IF neuron: ``IF(r=1, v_threshold=theta)``; NIR's IF specifies reset to ``v_reset`` (0);
  reset by subtraction (convertsnn's default) has no NIR field, so it is written to the graph
  metadata (``convertsnn.reset``) and Sinabs (like SynSense hardware) simulates IF with
  subtraction; ``reset="zero"`` is NIR's own semantics;
- LIF neuron (leak < 1): ``LIF(tau, r, v_leak=0, v_threshold)`` for a time step ``DT`` (1e-4 s,
  snnTorch's import convention): ``tau = DT / (1 - leak)`` and ``r = tau / DT`` so that one
  Euler step of ``tau dv/dt = -v + r I`` is ``v <- leak * v + I``;
- initial membrane ``v_init * theta``: NIR nodes carry no initial state; it is dropped (consumers
  start at 0) and ``v_init`` is written to the graph metadata, or with ``v_init="bias"`` spread
  over the T steps as extra bias ``v_init * theta / T`` (approximate); the export says which;
- ResNet "option A" shortcuts (``x[:, :, ::2, ::2]`` and zero padding of channels): 1x1
  Conv2d nodes that select channels (exact);
- spiking max-pool, DLIF input gains, signed spikes, burst neurons, populations, concatenation and other functions: refused,
  naming the layer; so is a delayed readout (``readout="delay:D"``).

The last layer stays non-spiking: the graph outputs its currents at each step, and the logits are
their mean over T (as in convertsnn). Each step feeds the same normalised image (direct coding).
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import numpy as np
import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from convertsnn.convert import ops
from convertsnn.errors import ConvertSNNError
from convertsnn.layers import Normalize
from convertsnn.snn.dlif import DLIFNeuron
from convertsnn.snn.network import SpikingNetwork
from convertsnn.snn.neurons import IFNeuron
from convertsnn.snn.pooling import SpikingMaxPool2d
from convertsnn.snn.serialize import atomic_write

DT = 1e-4  # seconds per step, for the LIF time constant (snnTorch's NIR convention)

ADDS = {"operator.add", "operator.iadd", "torch.add", "add"}
FLATTENS = {"torch.flatten", "flatten", "view", "reshape"}


def _array(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().to(torch.float32).numpy()


class _Builder:
    """Walks the converted fx graph and builds NIR nodes and edges.

    Every fx value is held as a list of terms ``(nir_node, scale)`` whose sum, with ``scale``
    multiplying channel ``c`` (dimension 0 of the NIR shape, which excludes the batch), is the
    value convertsnn computes. Scales are folded into the next weights or materialised.
    """

    def __init__(
        self, body: fx.GraphModule, shapes: dict[str, tuple[int, ...]], v_init: str, steps: int
    ) -> None:
        self.body = body
        self.shapes = shapes
        self.v_init = v_init
        self.steps = steps
        self.users = {node.name: len(node.users) for node in body.graph.nodes}
        self.nodes: dict = {}
        self.edges: list[tuple[str, str]] = []
        self.notes: list[str] = []

    def add(self, name: str, node, sources: list[str]) -> str:
        self.nodes[name] = node
        self.edges += [(source, name) for source in sources]
        return name

    # scales -------------------------------------------------------------------------------
    @staticmethod
    def _is_one(scale: torch.Tensor) -> bool:
        return bool(torch.all(scale == 1))

    def materialise(self, term: tuple[str, torch.Tensor], shape: tuple[int, ...]) -> str:
        """A node whose output is ``scale * term`` (a 1x1 conv or a diagonal affine)."""
        import nir

        source, scale = term
        if self._is_one(scale):
            return source
        channels = shape[0]
        scale = scale.expand(channels) if scale.dim() == 0 else scale
        name = f"{source}_scaled"
        if len(shape) == 3:
            node = _channel_conv(scale, torch.zeros(channels), shape)
        elif len(shape) == 1:
            node = nir.Affine(weight=_array(torch.diag(scale)), bias=np.zeros(channels, np.float32))
        else:
            raise ConvertSNNError(f"cannot scale the spikes of '{source}' of shape {shape} in NIR")
        return self.add(name, node, [source])

    def merged(self, terms, shape) -> tuple[list[str], torch.Tensor]:
        """Sources whose sum times one common scale is the value of ``terms``."""
        scales = [s for _, s in terms]
        if all(s.shape == scales[0].shape and torch.equal(s, scales[0]) for s in scales):
            return [source for source, _ in terms], scales[0]
        return [self.materialise(t, shape) for t in terms], torch.ones(())

    # layers -------------------------------------------------------------------------------
    def linear_layer(self, name: str, module: nn.Module, terms, in_shape) -> list:
        import nir

        sources, scale = self.merged(terms, in_shape)
        weight = module.weight.detach().float()
        bias = module.bias.detach().float() if module.bias is not None else None
        if isinstance(module, nn.Conv2d):
            if module.padding_mode != "zeros" or isinstance(module.padding, str):
                raise ConvertSNNError(
                    f"cannot export layer '{name}' to NIR: padding mode '{module.padding}' / "
                    f"'{module.padding_mode}' (only numeric zero padding)"
                )
            per_in = scale.expand(in_shape[0]) if scale.dim() == 0 else scale
            per_group = per_in.view(module.groups, -1)  # [groups, in/groups]
            out_per_group = weight.shape[0] // module.groups
            factor = per_group.repeat_interleave(out_per_group, 0)  # [out, in/groups]
            node = nir.Conv2d(
                input_shape=tuple(in_shape[1:]),
                weight=_array(weight * factor[:, :, None, None]),
                stride=tuple(module.stride),
                padding=tuple(module.padding),
                dilation=tuple(module.dilation),
                groups=module.groups,
                bias=_array(bias if bias is not None else torch.zeros(weight.shape[0])),
            )
        else:
            node = nir.Affine(
                weight=_array(weight * scale),
                bias=_array(bias if bias is not None else torch.zeros(weight.shape[0])),
            )
        return [(self.add(name, node, sources), torch.ones(()))]

    def channel_affine(self, name: str, weight, bias, terms, in_shape) -> list:
        """``weight[c] * x + bias[c]`` per channel as a 1x1 conv (normalisation, BN)."""
        sources, scale = self.merged(terms, in_shape)
        channels = in_shape[0]
        weight = weight.float().expand(channels) * scale
        node = _channel_conv(weight, bias.float().expand(channels), in_shape)
        return [(self.add(name, node, sources), torch.ones(()))]

    def neuron(self, name: str, module: IFNeuron, terms, shape, input_node: fx.Node) -> list:
        import nir

        sources = [self.materialise(t, shape) for t in terms]
        theta = module.threshold.detach().float().clamp(min=module.min_threshold)
        full = (theta.view(-1, *[1] * (len(shape) - 1)) if theta.dim() else theta).expand(shape)
        threshold = _array(full.contiguous())
        ones = np.ones(shape, np.float32)
        if module.leak == 1:
            node = nir.IF(r=ones, v_threshold=threshold, v_reset=np.zeros(shape, np.float32))
        else:
            tau = DT / (1 - module.leak)
            node = nir.LIF(
                tau=ones * tau,
                r=ones * (tau / DT),
                v_leak=np.zeros(shape, np.float32),
                v_threshold=threshold,
                v_reset=np.zeros(shape, np.float32),
            )
        if self.v_init == "bias" and module.v_init:
            self.fold_v_init(name, sources, module.v_init * theta / self.steps, input_node)
        self.add(name, node, sources)
        return [(name, theta)]

    def fold_v_init(self, name: str, sources: list[str], charge: torch.Tensor, input_node) -> None:
        """Add the initial charge ``v_init * theta``, spread over the T steps, to the bias of a
        Conv2d/Affine node that feeds only this neuron."""
        import nir

        owned = [
            s
            for s in sources
            if isinstance(self.nodes[s], (nir.Conv2d, nir.Affine))
            and self.users.get(s) == 1
            and self.users.get(input_node.name) == 1
        ]
        if not owned:
            raise _fail(name, "no Conv2d/Affine of its own feeds it, so --v-init bias has no bias "
                        "to fold into; use --v-init drop")  # fmt: skip
        node = self.nodes[owned[0]]
        node.bias = node.bias + _array(charge.expand(node.bias.shape[0]))

    def pool(self, name: str, kernel, stride, padding, terms, in_shape) -> list:
        import nir

        kernel, stride, padding = (
            tuple(v) if isinstance(v, (tuple, list)) else (v, v) for v in (kernel, stride, padding)
        )
        sources, scale = self.merged(terms, in_shape)
        node = nir.SumPool2d(
            kernel_size=np.array(kernel), stride=np.array(stride), padding=np.array(padding)
        )
        node.input_type = {"input": np.array(in_shape)}
        self.add(name, node, sources)
        return [(name, scale / (kernel[0] * kernel[1]))]

    def flatten(self, name: str, terms, in_shape) -> list:
        import nir

        sources, scale = self.merged(terms, in_shape)
        if scale.dim() == 1 and len(in_shape) > 1:
            scale = scale.repeat_interleave(int(np.prod(in_shape[1:])))
        node = nir.Flatten(input_type={"input": np.array(in_shape)}, start_dim=0, end_dim=-1)
        self.add(name, node, sources)
        return [(name, scale)]


def _channel_conv(weight: torch.Tensor, bias: torch.Tensor, shape: tuple[int, ...]):
    """``weight[c] * x[c] + bias[c]`` as a 1x1 Conv2d with a diagonal weight (``groups=1``:
    NIR's type inference reads the input channels from the weight, which grouped convs break)."""
    import nir

    return nir.Conv2d(
        input_shape=tuple(shape[1:]),
        weight=_array(torch.diag(weight.expand(shape[0]))[:, :, None, None]),
        stride=1,
        padding=0,
        dilation=1,
        groups=1,
        bias=_array(bias),
    )


def _fail(name: str, what: str) -> ConvertSNNError:
    return ConvertSNNError(f"cannot export layer '{name}' to NIR: {what}")


def _node_shapes(snn: SpikingNetwork) -> tuple[fx.GraphModule, dict[str, tuple[int, ...]]]:
    """A CPU copy of the body at T=1 and the output shape (without batch) of every node."""
    if not isinstance(snn.body, fx.GraphModule):
        raise ConvertSNNError("only converted models (torch.fx graphs) can be exported to NIR")
    if not snn.input_size:
        raise ConvertSNNError("the model has no input_size in its metadata; cannot export it")
    body = copy.deepcopy(snn.body).cpu().eval()
    for name, module in body.named_modules():
        if isinstance(module, DLIFNeuron):  # (its gains cannot run at the T=1 used for shapes)
            raise _fail(name, "DLIF input gains per time step have no NIR node")
        if isinstance(module, IFNeuron) and module.signed:
            raise _fail(name, "signed (ternary) spikes have no NIR node; export it to ONNX")
        if isinstance(module, IFNeuron) and module.population > 1:
            raise _fail(
                name,
                "a population of member neurons (outputs averaged) has no NIR node; export it "
                "to ONNX",
            )
        if isinstance(module, IFNeuron) and module.burst > 1:
            raise _fail(
                name, "burst neurons (several spikes per step) have no NIR node; export it to ONNX"
            )
        if isinstance(module, (IFNeuron, SpikingMaxPool2d)):
            module.timesteps = 1
    with torch.no_grad():
        ShapeProp(body).propagate(torch.zeros(1, *snn.input_size))
    shapes = {}
    for node in body.graph.nodes:
        meta = node.meta.get("tensor_meta")
        if meta is not None and hasattr(meta, "shape"):
            shapes[node.name] = tuple(meta.shape[1:])
    return body, shapes


V_INIT_MODES = ("drop", "bias")


def to_nir(snn: SpikingNetwork, v_init: str = "bias"):
    """The NIR graph of ``snn`` and notes on what was mapped (see the module doc).

    ``v_init``: ``"drop"`` starts every membrane at 0 (NIR has no initial state); ``"bias"``
    adds ``v_init * theta / T`` to the bias of the layer feeding each neuron instead: the same
    total charge over the model's T steps, spread evenly (an approximation tied to T).
    """
    import nir

    if v_init not in V_INIT_MODES:
        raise ConvertSNNError(f"unknown v_init mode '{v_init}'; use drop or bias")

    if snn.stochastic:
        raise ConvertSNNError(
            f"the model is random ({snn.randomness}); NIR export supports deterministic models "
            "only (direct coding, no dither; `export --dither 0` or `snn.set_dither(0)` gives a "
            "dithered model's deterministic view)"
        )
    if snn.readout != "mean":
        raise ConvertSNNError(
            f"the model reads out its logits with '{snn.readout}' (steps skipped), which a NIR "
            "graph cannot say; export it to ONNX, or set snn.readout = 'mean' first"
        )
    body, shapes = _node_shapes(snn)
    builder = _Builder(body, shapes, v_init, snn.timesteps)
    values: dict[str, list] = {}
    reset = set()
    v_init_values = set()
    for node in body.graph.nodes:
        name = node.name
        args = [a for a in node.args if isinstance(a, fx.Node)]
        in_shape = shapes.get(args[0].name) if args else None
        if node.op == "placeholder":
            builder.add("input", nir.Input(input_type={"input": np.array(snn.input_size)}), [])
            values[name] = [("input", torch.ones(()))]
        elif node.op == "call_module":
            module = body.get_submodule(node.target)
            terms = values[args[0].name]
            if isinstance(module, Normalize):
                values[name] = builder.channel_affine(
                    name, 1 / module.std, -module.mean / module.std, terms, in_shape
                )
            elif isinstance(module, (nn.BatchNorm2d,)):
                std = torch.sqrt(module.running_var + module.eps)
                gamma = module.weight if module.affine else torch.ones_like(std)
                beta = module.bias if module.affine else torch.zeros_like(std)
                values[name] = builder.channel_affine(
                    name, gamma.detach() / std, beta.detach() - module.running_mean * gamma.detach() / std,
                    terms, in_shape,
                )  # fmt: skip
            elif isinstance(module, (nn.Conv2d, nn.Linear)):
                values[name] = builder.linear_layer(name, module, terms, in_shape)
            elif isinstance(module, IFNeuron):
                values[name] = builder.neuron(name, module, terms, shapes[name], args[0])
                reset.add(module.reset)
                v_init_values.add(module.v_init)
            elif isinstance(module, nn.AvgPool2d):
                if module.ceil_mode or (module.padding and not module.count_include_pad):
                    raise _fail(name, "average pooling with ceil_mode or count_include_pad=False")
                if module.divisor_override:
                    raise _fail(name, "average pooling with divisor_override")
                values[name] = builder.pool(
                    name, module.kernel_size, module.stride or module.kernel_size,
                    module.padding, terms, in_shape,
                )  # fmt: skip
            elif isinstance(module, nn.AdaptiveAvgPool2d):
                values[name] = _global_pool(builder, name, module.output_size, terms, in_shape)
            elif isinstance(module, nn.Flatten):
                if module.start_dim != 1 or module.end_dim != -1:
                    raise _fail(name, "Flatten other than from dimension 1 to the end")
                values[name] = builder.flatten(name, terms, in_shape)
            else:
                raise _fail(name, f"{type(module).__name__} has no NIR node")
        elif node.op in ("call_function", "call_method"):
            target = ops.function_name(node.target) if node.op == "call_function" else node.target
            if target in ADDS and len(args) == 2 and len(node.args) == 2 and not node.kwargs:
                values[name] = values[args[0].name] + values[args[1].name]
            elif target in FLATTENS and len(shapes.get(name, ())) == 1:
                values[name] = builder.flatten(name, values[args[0].name], in_shape)
            elif target == "F.adaptive_avg_pool2d":
                size = node.args[1] if len(node.args) > 1 else node.kwargs.get("output_size")
                values[name] = _global_pool(builder, name, size, values[args[0].name], in_shape)
            elif target in ("operator.getitem", "F.pad"):
                conv = _selection_conv(name, target, node, in_shape)
                values[name] = builder.linear_layer(name, conv, values[args[0].name], in_shape)
            elif target == "size":
                continue
            else:
                raise _fail(name, f"{target} has no NIR equivalent")
        elif node.op == "output":
            result = node.args[0]
            if not isinstance(result, fx.Node):
                raise _fail(name, "the model returns more than one tensor")
            out_shape = shapes[result.name]
            sources = [builder.materialise(t, out_shape) for t in values[result.name]]
            builder.add("output", nir.Output(output_type={"output": np.array(out_shape)}), sources)
        else:
            raise _fail(name, f"graph op '{node.op}' (constants inside the graph)")
    if v_init_values - {0.0} and v_init == "bias":
        builder.notes.append(
            f"initial membrane v_init={sorted(v_init_values)} x threshold folded into the biases "
            f"as v_init x threshold / T per step (T={snn.timesteps}; the same charge spread over "
            "the steps, approximate)"
        )
    elif v_init_values - {0.0}:
        builder.notes.append(
            f"initial membrane v_init={sorted(v_init_values)} x threshold dropped: NIR nodes have no "
            "initial state (consumers start at 0; `convertsnn import` restores it from the metadata)"
        )
    if "subtract" in reset:
        builder.notes.append(
            "reset by subtraction written as graph metadata convertsnn.reset=subtract (NIR's IF "
            "resets to v_reset; Sinabs simulates IF with subtraction)"
        )
    metadata = {
        "convertsnn.reset": ",".join(sorted(reset)),
        "convertsnn.v_init": "0.0"
        if v_init == "bias"
        else ",".join(str(v) for v in sorted(v_init_values)),
        "convertsnn.v_init_mode": v_init,
        "convertsnn.timesteps": snn.timesteps,
        "convertsnn.readout": "mean of the output currents over the time steps",
    }
    graph = nir.NIRGraph(builder.nodes, builder.edges, metadata=metadata)
    return graph, builder.notes


def _selection_conv(name: str, target: str, node: fx.Node, in_shape) -> nn.Conv2d:
    """ResNet "option A" shortcuts as a 1x1 Conv2d without bias: ``x[:, :, ::s, ::s]`` is a
    stride-s identity, ``F.pad`` of channels only maps channel c to c + front (zeros elsewhere)."""
    channels = in_shape[0]
    if target == "operator.getitem":
        index = node.args[1]
        full = slice(None, None, None)
        if not (
            isinstance(index, tuple)
            and len(index) == 4
            and index[:2] == (full, full)
            and all(
                isinstance(i, slice) and i.start in (None, 0) and i.stop is None for i in index[2:]
            )
        ):
            raise _fail(name, f"indexing {index} (only x[:, :, ::s, ::s] has a NIR form)")
        stride = tuple(i.step or 1 for i in index[2:])
        conv = nn.Conv2d(channels, channels, 1, stride=stride, bias=False)
        conv.weight.data = torch.eye(channels)[:, :, None, None]
        return conv
    pad = node.args[1] if len(node.args) > 1 else node.kwargs.get("pad")
    mode = node.kwargs.get("mode", node.args[2] if len(node.args) > 2 else "constant")
    value = node.kwargs.get("value", node.args[3] if len(node.args) > 3 else None)
    if mode != "constant" or value not in (None, 0) or len(pad) != 6 or any(pad[:4]):
        raise _fail(name, f"padding {tuple(pad)} (only zero padding of channels has a NIR form)")
    front, back = pad[4], pad[5]
    conv = nn.Conv2d(channels, channels + front + back, 1, bias=False)
    conv.weight.data = torch.zeros(channels + front + back, channels, 1, 1)
    conv.weight.data[front : front + channels, :, 0, 0] = torch.eye(channels)
    return conv


def _global_pool(builder: _Builder, name: str, size, terms, in_shape) -> list:
    size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
    if size != (1, 1):
        raise _fail(name, f"adaptive average pooling to {size} (only to 1x1)")
    return builder.pool(name, tuple(in_shape[1:]), tuple(in_shape[1:]), 0, terms, in_shape)


def export_nir(
    snn: SpikingNetwork, path: str | os.PathLike, v_init: str = "bias"
) -> tuple[Path, list[str]]:
    """Write ``snn`` as a NIR file (HDF5); returns the path and notes on what was mapped."""
    import nir

    graph, notes = to_nir(snn, v_init)
    path = Path(path)
    atomic_write(path, lambda tmp: nir.write(tmp, graph))
    return path, notes
