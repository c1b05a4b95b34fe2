"""Activation checkpointing of a spiking network's body for BPTT (Chen et al. 2016, "Training
Deep Nets with Sublinear Memory Cost").

A BPTT step keeps every layer's activations for all T steps. Checkpointed, the traced body is cut
into segments of about sqrt(N) of its N spiking layers each (Chen et al.'s sqrt(N) rule); a
segment keeps only its inputs during the forward pass and runs again, with gradients, when the
backward pass reaches it. Memory: the segment boundaries (the spike trains entering each segment,
residual branches included) plus one segment's activations; time: about one more forward pass
per training step. The gradients are
the same: the recomputed segment does exactly what the first pass did (the neurons and stateless
layers are deterministic; random layers get their random state back).
"""

from __future__ import annotations

import math

import torch
from torch import fx, nn
from torch.fx.passes.split_module import split_module
from torch.utils.checkpoint import checkpoint

from convertsnn.errors import ConvertSNNError
from convertsnn.snn.neurons import IFNeuron


class _Checkpointed(nn.Module):
    """Runs ``segment`` under :func:`torch.utils.checkpoint.checkpoint` when it needs grad."""

    def __init__(self, segment: nn.Module) -> None:
        super().__init__()
        self.segment = segment

    def forward(self, *args):
        if torch.is_grad_enabled():
            return checkpoint(self.segment, *args, use_reentrant=False)
        return self.segment(*args)


def checkpointed_body(body: nn.Module) -> fx.GraphModule:
    """``body`` cut into checkpointed segments of ``ceil(sqrt(N))`` spiking layers each (the
    layers up to and including the last of them; the rest of the body is the last segment);
    the segments share the body's modules and parameters (training one trains the other)."""
    if not isinstance(body, fx.GraphModule):
        raise ConvertSNNError(
            "activation checkpointing needs a traced body (a converted model); this model's "
            f"body is a {type(body).__name__}: use memory 'full'"
        )
    spiking = [
        node
        for node in body.graph.nodes
        if node.op == "call_module" and isinstance(body.get_submodule(node.target), IFNeuron)
    ]
    per_segment = max(1, math.ceil(math.sqrt(len(spiking))))
    ends = set(spiking[per_segment - 1 :: per_segment])
    segment_of: dict[fx.Node, int] = {}
    segment = 0
    for node in body.graph.nodes:
        segment_of[node] = segment
        if node in ends:
            segment += 1
    split = split_module(body, body, lambda node: segment_of[node])
    for name, child in list(split.named_children()):
        setattr(split, name, _Checkpointed(child))
    return split
