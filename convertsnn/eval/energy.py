"""Spikes, synaptic operations and an energy estimate of an SNN against its source ANN.

For each spiking layer: spikes per image, firing rate (spikes per neuron per step; mean and the
distribution over neurons), spikes at each step. A spike is one event: the -1 spikes of signed
neurons count like +1 ones (``|s|``), a burst neuron that sends ``s`` spikes in a step
counts ``s``, and a population's unit counts the spikes of its K members (each worth theta / K;
its rate can exceed 1 per step, like a burst neuron's). For each synaptic layer (Conv2d, Linear):

- ANN: multiply-accumulates ``MACs = output elements * (in_channels / groups * kh * kw)`` per
  image (``in_features`` for Linear), once;
- SNN: when its input comes from spiking neurons (through pooling, flattening and sums),
  accumulates (synaptic operations, SOPs): every spike is added once into each output it
  reaches, so an input carrying ``|s|`` spikes (a -1 spike: 1; a burst of ``s``: ``s``) costs
  ``|s|`` accumulates per output. An input reached through average or max pooling, flattening
  and concatenation carries the pooled spike count rounded up (1 for any non-zero pool of binary
  spikes); any other non-zero input (e.g. a sum of two spike trains) counts once. They are
  counted exactly, per step, by convolving these counts with a kernel of ones (so padding
  borders are right). A layer fed by the analog input (the first layer under direct coding)
  does dense MACs at every step: ``T * MACs``.

Energy (Horowitz, "Computing's energy problem (and what we can do about it)", ISSCC 2014,
45 nm CMOS, 32-bit float: add 0.9 pJ, multiply 3.7 pJ): ``E_MAC = 4.6 pJ``, ``E_AC = 0.9 pJ``;

    E_ANN = MACs * E_MAC,        E_SNN = SOPs * E_AC + T * MACs_analog * E_MAC

as in the SNN energy estimates of Rathi & Roy (DIET-SNN, 2021) and Zhou et al. (Spikformer,
2023). Neuron state updates, bias additions and memory traffic are not counted (memory access
dominates on real chips, so this is an estimate of arithmetic only).

Latency: the model's T, and per image the first step after which the running prediction no
longer changes (mean and the fraction of images settled before T). With a delayed readout
(``readout="delay:D"``) the first D steps are warm-up: they run (their spikes and operations are
counted like any other step's) but are not read out, so the running prediction is the mean of
steps ``D..t`` and no image settles before step D + 1; accuracy is that of the delayed readout.
"""

from __future__ import annotations

import copy
import operator
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import fx, nn

from convertsnn.errors import ConvertSNNError
from convertsnn.layers import Normalize
from convertsnn.snn.network import SpikingNetwork, read_out
from convertsnn.snn.neurons import IFNeuron
from convertsnn.snn.pooling import SpikingMaxPool2d

E_MAC_PJ = 4.6  # 32-bit float multiply (3.7 pJ) + add (0.9 pJ), 45 nm (Horowitz 2014)
E_AC_PJ = 0.9  # 32-bit float add, 45 nm (Horowitz 2014)
SOURCE = 'M. Horowitz, "Computing\'s energy problem (and what we can do about it)", ISSCC 2014'


@dataclass
class NeuronLayer:
    name: str
    neurons: int
    spikes_per_image: float
    firing_rate: float  # spikes per neuron per step
    rate_quantiles: dict[str, float]  # over neurons: p10, p50, p90, max
    silent_fraction: float  # neurons that never fire on these images
    spikes_per_step: list[float]  # per image, at each step t


@dataclass
class SynapticLayer:
    name: str
    kind: str  # Conv2d or Linear
    input: str  # "spikes" or "analog"
    ann_macs: float  # per image
    snn_sops: float  # accumulates per image over all T steps (0 for analog layers)
    snn_macs: float  # multiply-accumulates per image over all T steps (analog layers)


@dataclass
class Profile:
    model: str
    data: str
    images: int
    timesteps: int
    e_mac_pj: float
    e_ac_pj: float
    neuron_layers: list[NeuronLayer] = field(default_factory=list)
    synaptic_layers: list[SynapticLayer] = field(default_factory=list)
    accuracy: float = 0.0
    settle_step_mean: float = 0.0  # counted from step 1, warm-up steps included
    settled_before_t: float = 0.0
    readout_delay: int = 0  # warm-up steps D of a delayed readout (run, counted, not read out)

    @property
    def spikes_per_image(self) -> float:
        return sum(layer.spikes_per_image for layer in self.neuron_layers)

    @property
    def ann_macs(self) -> float:
        return sum(layer.ann_macs for layer in self.synaptic_layers)

    @property
    def snn_sops(self) -> float:
        return sum(layer.snn_sops for layer in self.synaptic_layers)

    @property
    def snn_macs(self) -> float:
        return sum(layer.snn_macs for layer in self.synaptic_layers)

    @property
    def ann_energy_uj(self) -> float:
        return self.ann_macs * self.e_mac_pj * 1e-6

    @property
    def snn_energy_uj(self) -> float:
        return (self.snn_sops * self.e_ac_pj + self.snn_macs * self.e_mac_pj) * 1e-6

    def summary(self) -> dict:
        """Everything as JSON-ready data, with the totals."""
        return {
            **asdict(self),
            "energy_source": SOURCE,
            "totals": {
                "spikes_per_image": self.spikes_per_image,
                "ann_macs": self.ann_macs,
                "snn_sops": self.snn_sops,
                "snn_macs": self.snn_macs,
                "ann_energy_uj": self.ann_energy_uj,
                "snn_energy_uj": self.snn_energy_uj,
                "energy_ratio_snn_ann": self.snn_energy_uj / self.ann_energy_uj
                if self.ann_energy_uj
                else float("nan"),
            },
        }


def _spike_driven(body: fx.GraphModule) -> dict[str, bool]:
    """For every fx node: True if its value depends only on spiking neurons (not on the input)."""
    driven: dict[str, bool] = {}
    for node in body.graph.nodes:
        inputs = [a for a in node.all_input_nodes if a.op != "get_attr"]
        if node.op == "placeholder":
            driven[node.name] = False
        elif node.op == "call_module" and isinstance(body.get_submodule(node.target), IFNeuron):
            driven[node.name] = True
        else:
            driven[node.name] = bool(inputs) and all(driven[a.name] for a in inputs)
    return driven


def _accumulates(
    module: nn.Module, x: torch.Tensor, spikes: torch.Tensor | None = None
) -> torch.Tensor:
    """Per sample of ``x``: how many accumulates it takes, each input adding ``spikes`` times
    (default: once per non-zero input) into every output it reaches."""
    mask = (x != 0).to(torch.float32) if spikes is None else spikes.to(torch.float32)
    if isinstance(module, nn.Linear):
        return mask.flatten(1).sum(1) * module.out_features
    ones = torch.ones(
        module.out_channels, *module.weight.shape[1:], device=x.device, dtype=torch.float32
    )
    reached = F.conv2d(
        mask, ones, None, module.stride, module.padding, module.dilation, module.groups
    )
    return reached.flatten(1).sum(1)


# what may lie between a spiking layer and a synaptic layer for its input to be a spike count
_SHAPE_MODULES = (nn.Flatten, nn.Identity, nn.Dropout)
_POOL_MODULES = (nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.MaxPool2d, SpikingMaxPool2d)
_FUNCTIONS = (torch.flatten, torch.reshape, torch.cat, F.avg_pool2d, F.adaptive_avg_pool2d,
              F.max_pool2d, operator.getitem, getattr)  # fmt: skip
_METHODS = ("view", "reshape", "flatten", "contiguous", "size", "permute", "transpose")


def _spike_sources(body: fx.GraphModule, node: fx.Node) -> list[fx.Node] | None:
    """The nodes from spiking layers to ``node`` (graph order) when ``node``'s value is their
    spikes through only pooling, reshaping and concatenation; else None."""
    seen: dict[fx.Node, None] = {}
    todo = [node]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen[current] = None
        if current.op == "call_module":
            module = body.get_submodule(current.target)
            if isinstance(module, IFNeuron):
                continue
            if not isinstance(module, _SHAPE_MODULES + _POOL_MODULES):
                return None
        elif not (
            (current.op == "call_function" and current.target in _FUNCTIONS)
            or (current.op == "call_method" and current.target in _METHODS)
        ):
            return None
        todo += current.all_input_nodes
    return [n for n in body.graph.nodes if n in seen]


def _unit(body: fx.GraphModule, chain: list[fx.Node], shapes: dict[str, torch.Size]):
    """The value of one spike at every element of the last node of ``chain``
    (:func:`_spike_sources`): each neuron's threshold, carried through the chain."""
    env: dict[fx.Node, object] = {}
    for node in chain:
        module = body.get_submodule(node.target) if node.op == "call_module" else None
        if isinstance(module, IFNeuron):
            theta = module.threshold.detach().clamp(min=module.min_threshold) / module.population
            shape = (1, *shapes[node.name])
            theta = theta.view(-1, *[1] * (len(shape) - 2)) if theta.dim() else theta
            env[node] = theta.expand(shape).contiguous()
            continue
        args, kwargs = fx.node.map_arg((node.args, node.kwargs), lambda n: env[n])
        if module is not None:
            if isinstance(module, SpikingMaxPool2d):  # passes one neuron's spikes per window
                env[node] = F.max_pool2d(*args, module.kernel_size, module.stride, module.padding)
            else:
                env[node] = module(*args, **kwargs)
        elif node.op == "call_method":
            env[node] = getattr(args[0], node.target)(*args[1:], **kwargs)
        else:
            env[node] = node.target(*args, **kwargs)
    return env[chain[-1]]


def _spike_counts(x: torch.Tensor, unit: torch.Tensor) -> torch.Tensor:
    """Spikes carried by each element of ``x`` (``|x| / unit``; pooled fractions rounded up)."""
    ratio = x.abs() / unit
    nearest = ratio.round()
    return torch.where((ratio - nearest).abs() < 1e-4, nearest, ratio.ceil())


def profile_snn(
    snn: SpikingNetwork,
    images: torch.Tensor,
    labels: torch.Tensor | None = None,
    batch_size: int = 100,
    e_mac_pj: float = E_MAC_PJ,
    e_ac_pj: float = E_AC_PJ,
    model: str = "",
    data: str = "",
) -> Profile:
    """Run ``snn`` on ``images`` ``[N, C, H, W]`` and count spikes and operations (module doc)."""
    if not isinstance(snn.body, fx.GraphModule):
        raise ConvertSNNError("profiling needs a converted model (a torch.fx graph)")
    if not (e_mac_pj >= 0 and e_ac_pj >= 0):
        raise ConvertSNNError("energy per operation must be >= 0 pJ")
    if len(images) == 0:
        raise ConvertSNNError("no images to profile on")
    snn.check_input(images[:1])
    snn = copy.deepcopy(snn).eval()
    steps, delay = snn.timesteps, snn.readout_delay
    read_out(torch.zeros(steps, 1), delay)  # one-line error unless T > D
    body = snn.body
    driven = _spike_driven(body)
    device = next(snn.parameters()).device
    counts: dict[str, torch.Tensor] = {}  # per neuron layer: spikes per neuron [numel]
    per_step: dict[str, torch.Tensor] = {}  # per neuron layer: spikes per step [T]
    ops: dict[str, list[float]] = {}  # per synaptic layer: [ann_macs, sops, snn_macs] summed
    shapes: dict[str, torch.Size] = {}  # per neuron layer: output shape without the batch
    units: dict[str, torch.Tensor] = {}  # per synaptic layer: the value of one input spike
    names: dict[nn.Module, str] = {}
    hooks = []
    for node in body.graph.nodes:
        if node.op != "call_module":
            continue
        module = body.get_submodule(node.target)
        names[module] = node.name
        if isinstance(module, IFNeuron):

            def count_spikes(mod, args, out, name=node.name):
                theta = mod.threshold.detach().clamp(min=mod.min_threshold) / mod.population
                view = theta.view(-1, *[1] * (out.dim() - 2)) if theta.dim() else theta
                spikes = (out.detach() / view).round().abs_().view(steps, -1, *out.shape[1:])
                shapes[name] = out.shape[1:]
                counts[name] = counts.get(name, 0) + spikes.sum((0, 1)).flatten()
                per_step[name] = per_step.get(name, 0) + spikes.flatten(2).sum((1, 2))

            hooks.append(module.register_forward_hook(count_spikes))
        elif isinstance(module, (nn.Conv2d, nn.Linear)):
            spiking = driven[node.all_input_nodes[0].name]
            chain = _spike_sources(body, node.all_input_nodes[0]) if spiking else None

            def count_ops(mod, args, out, name=node.name, spiking=spiking, chain=chain):
                x = args[0].detach()
                dense = out[0].numel() * mod.weight[0].numel()  # per sample
                entry = ops.setdefault(name, [0.0, 0.0, 0.0])
                samples = x.shape[0]  # T * B
                entry[0] += dense * samples / steps
                if spiking:
                    spikes = None
                    if chain:
                        if name not in units:
                            units[name] = _unit(body, chain, shapes).to(x.device)
                        spikes = _spike_counts(x, units[name])
                    entry[1] += float(_accumulates(mod, x, spikes).sum())
                else:
                    entry[2] += dense * samples

            hooks.append(module.register_forward_hook(count_ops))
        elif not isinstance(module, (Normalize, nn.Flatten, nn.AvgPool2d, nn.AdaptiveAvgPool2d,
                                     nn.MaxPool2d, nn.BatchNorm2d, nn.BatchNorm1d)) and any(
            True for _ in module.parameters()
        ):  # fmt: skip
            raise ConvertSNNError(
                f"cannot profile layer '{node.name}': {type(module).__name__} has weights but "
                "no operation count"
            )
    correct, settle, settled = 0, 0.0, 0
    try:
        with torch.no_grad():
            for start in range(0, len(images), batch_size):
                x = images[start : start + batch_size].to(device)
                sequence = snn.forward_sequence(x)  # [T, B, K]
                # the prediction after each read-out step D..T-1 (the mean of steps D..t)
                running = sequence[delay:].cumsum(0).argmax(-1)
                final = running[-1]
                changed = (running != final).flip(0).int().cumsum(0).flip(0) > 0  # [T-D, B]
                first = delay + changed.sum(0) + 1  # first step from which it stays final
                settle += float(first.sum())
                settled += int((first < steps).sum())
                if labels is not None:
                    correct += int(
                        (final == labels[start : start + batch_size].to(final.device)).sum()
                    )
    finally:
        for hook in hooks:
            hook.remove()
    n = len(images)
    result = Profile(model, data, n, steps, e_mac_pj, e_ac_pj, readout_delay=delay)
    for name, total in counts.items():
        rates = total.float().cpu() / (n * steps)
        quantiles = torch.quantile(rates, torch.tensor([0.1, 0.5, 0.9]))
        result.neuron_layers.append(
            NeuronLayer(
                name=name,
                neurons=rates.numel(),
                spikes_per_image=float(total.sum()) / n,
                firing_rate=float(rates.mean()),
                rate_quantiles={
                    "p10": float(quantiles[0]),
                    "p50": float(quantiles[1]),
                    "p90": float(quantiles[2]),
                    "max": float(rates.max()),
                },
                silent_fraction=float((rates == 0).float().mean()),
                spikes_per_step=(per_step[name].float().cpu() / n).tolist(),
            )
        )
    for node in body.graph.nodes:
        if node.name in ops:
            ann_macs, sops, macs = ops[node.name]
            module = body.get_submodule(node.target)
            result.synaptic_layers.append(
                SynapticLayer(
                    name=node.name,
                    kind=type(module).__name__,
                    input="spikes" if driven[node.all_input_nodes[0].name] else "analog",
                    ann_macs=ann_macs / n,
                    snn_sops=sops / n,
                    snn_macs=macs / n,
                )
            )
    result.accuracy = correct / n if labels is not None else float("nan")
    result.settle_step_mean = settle / n
    result.settled_before_t = settled / n
    return result
