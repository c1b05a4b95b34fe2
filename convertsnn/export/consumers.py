"""Run an exported NIR graph in an independent simulator and in convertsnn, side by side.

Sinabs (SynSense, ``pip install sinabs``) loads the graph with its own NIR import
(``sinabs.nir.from_nir``). Its IF neuron (``IAFSqueeze``) resets by subtraction like convertsnn's,
with two defaults that differ from convertsnn and are switched off after loading (the only
changes made to the imported model): ``MultiSpike`` (several spikes per step when the membrane
exceeds several thresholds) becomes ``SingleSpike``, and the lower bound ``min_v_mem = -theta``
on the membrane is removed. Both simulators run the same NIR graph: convertsnn through
:func:`~convertsnn.export.nir_import.from_nir`, with every membrane starting at 0 as in Sinabs
(NIR carries no initial state).

Sinabs loads graphs through nirtorch's ``load``, whose executor runs the nodes in depth-first
order from the input; at a residual sum this can run the sum before one of its inputs, which is
then silently dropped. The executor's order is therefore replaced by a topological order of the
same nodes (Kahn's algorithm) before running; graphs without branches are unaffected.
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from convertsnn.errors import ConvertSNNError
from convertsnn.snn.network import SpikingNetwork
from convertsnn.snn.neurons import IFNeuron


def graph_reference(graph, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """convertsnn running the NIR ``graph`` (membranes from 0): logits and spikes per layer."""
    from convertsnn.export.nir_import import from_nir

    return convertsnn_reference(from_nir(graph), images, zero_v_init=True)


def convertsnn_reference(
    snn: SpikingNetwork, images: torch.Tensor, zero_v_init: bool = True
) -> tuple[torch.Tensor, dict[str, float]]:
    """convertsnn's logits and spikes per image per neuron layer (``v_init = 0`` if asked),
    layers named by their fx node names as in the exported NIR graph."""
    model = copy.deepcopy(snn).cpu().eval()
    counts: dict[str, float] = {}
    hooks = []
    for node in model.body.graph.nodes:  # keyed by fx node name, as the NIR nodes are
        module = model.body.get_submodule(node.target) if node.op == "call_module" else None
        if isinstance(module, IFNeuron):
            name = node.name
            if zero_v_init:
                module.v_init = 0.0
            theta = module.threshold.detach().clamp(min=module.min_threshold)

            def record(mod, args, out, name=name, theta=theta):
                view = theta.view(-1, *[1] * (out.dim() - 2)) if theta.dim() else theta
                counts[name] = counts.get(name, 0.0) + float((out / view).round().sum())

            hooks.append(module.register_forward_hook(record))
    with torch.no_grad():
        logits = model(images.cpu())
    for hook in hooks:
        hook.remove()
    return logits, {k: v / len(images) for k, v in counts.items()}


def run_sinabs(
    graph, images: torch.Tensor, timesteps: int
) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean output over ``timesteps`` of the NIR ``graph`` simulated by Sinabs, and spikes per
    image per neuron node; ``images`` ``[B, C, H, W]`` are fed at every step (direct coding)."""
    try:
        import sinabs
        import sinabs.layers as sl
        from sinabs.nir import from_nir
    except ImportError:
        raise ConvertSNNError("the Sinabs check needs `pip install sinabs`") from None
    batch = len(images)
    model = from_nir(graph, batch_size=batch, num_timesteps=timesteps).eval()
    model.execution_order = _topological(model.execution_order, graph.edges)
    (last,) = [src for src, dst in graph.edges if dst == "output"]
    modules = dict(model.named_modules())
    captured: dict[str, torch.Tensor] = {}
    counts: dict[str, float] = {}

    def keep(name):
        return lambda mod, args, out: captured.__setitem__(name, out)

    hooks = [modules[_sanitize(last)].register_forward_hook(keep("logits"))]
    for name in graph.nodes:
        module = modules.get(_sanitize(name))
        if isinstance(module, sl.IAFSqueeze):
            module.spike_fn = sinabs.activation.SingleSpike
            module.min_v_mem = None
            hooks.append(module.register_forward_hook(keep(name)))
    sequence = images.cpu().unsqueeze(1).expand(batch, timesteps, *images.shape[1:])
    with torch.no_grad():
        model(sequence.flatten(0, 1))
    for hook in hooks:
        hook.remove()
    for name, spikes in captured.items():
        if name != "logits":
            counts[name] = float(spikes.sum()) / batch
    logits = captured["logits"].view(batch, timesteps, -1).mean(1)
    return logits, counts


def _topological(order: list, edges: list[tuple[str, str]]) -> list:
    """The executor's nodes, each after all its sources (ties keep the executor's order)."""
    names = {_sanitize(src) for edge in edges for src in edge}
    sources = {
        node.name: {_sanitize(s) for s, d in edges if _sanitize(d) == node.name} for node in order
    }
    done: set[str] = set()
    result = []
    pending = list(order)
    while pending:
        ready = next(
            (n for n in pending if not (sources[n.name] & names) - done - {n.name}), pending[0]
        )
        pending.remove(ready)
        done.add(ready.name)
        result.append(ready)
    return result


def _sanitize(name: str) -> str:
    from nirtorch.utils import sanitize_name

    return sanitize_name(name)


def compare(reference: tuple, other: tuple) -> dict:
    """Max |logit difference|, prediction agreement and per-layer spike counts of two runs."""
    (ref_logits, ref_counts), (logits, counts) = reference, other
    layers = {
        name: {"convertsnn": ref_counts[name], "consumer": counts.get(name, float("nan"))}
        for name in ref_counts
    }
    worst = max(
        (abs(v["convertsnn"] - v["consumer"]) / max(v["convertsnn"], 1.0) for v in layers.values()),
        default=0.0,
    )
    return {
        "max_abs_logit_diff": float((ref_logits - logits).abs().max()),
        "prediction_agreement": float((ref_logits.argmax(1) == logits.argmax(1)).float().mean()),
        "max_rel_spike_count_diff": float(np.nan_to_num(worst, nan=1.0)),
        "layers": layers,
    }
