"""Data-free thresholds from BatchNorm statistics (the default when no calibration data is given).

A BatchNorm layer stores what its output looks like on the training data: per channel, mean
``beta`` and standard deviation ``|gamma|`` (times ``sqrt(var / (var + eps))``). The converter
keeps these numbers when it folds BN into a conv (``node.meta["bn_stats"]``), and this method
propagates per-channel means and variances through the graph, treating each pre-activation as
Gaussian (as in data-free quantisation, e.g. Nagel et al. 2019, "Data-free quantization through
weight equalization and bias correction"):

- after a (folded or kept) BatchNorm: its stored statistics;
- ReLU: the rectified-Gaussian mean and variance; residual adds: means and variances add
  (branches taken as independent); pooling, flattening, padding and slicing: unchanged
  (zero-padded channels get zero);
- a conv/linear without BatchNorm: ``mean = W mean_in + b``, ``var = W^2 var_in`` (independent
  inputs); the input image is taken as pixels with mean 0.45 and std 0.25 per channel.

Each activation's threshold is ``max_c (mean_c + K * std_c)`` of its input (``K = 3`` by
default). No data is read, so this is instant, but it is only as good as the Gaussian picture:
calibrate with a few hundred real training images (``--calib``) for better accuracy.

Spec: ``bnstats[:K]``.
"""

from __future__ import annotations

import math
import operator
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.utils.data import DataLoader

from convertsnn.convert.calibration.registry import (
    CalibrationMethod,
    parse_options,
    register_calibration,
)
from convertsnn.convert.graph import describe
from convertsnn.convert.ops import ACTIVATION_TYPES
from convertsnn.errors import ConvertSNNError
from convertsnn.layers import Normalize
from convertsnn.snn.pooling import SpikingMaxPool2d

PIXEL_MEAN, PIXEL_STD = 0.45, 0.25

_UNCHANGED_MODULES = (
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.MaxPool2d,
    SpikingMaxPool2d,
    nn.Flatten,
    nn.ZeroPad2d,
)
_UNCHANGED_CALLS = {
    torch.flatten,
    torch.mean,
    F.avg_pool2d,
    F.adaptive_avg_pool2d,
    F.max_pool2d,
    "view",
    "reshape",
    "flatten",
    "contiguous",
    "mean",
    "squeeze",
    "unsqueeze",
}
_ADD = {operator.add, operator.iadd, torch.add, "add"}
_SUB = {operator.sub, torch.sub, "sub"}
_MUL = {operator.mul, torch.mul, "mul"}
_DIV = {operator.truediv, "div"}


@dataclass
class Moments:
    """Per-channel mean and variance of a tensor (length 1: the same for every channel)."""

    mean: torch.Tensor
    var: torch.Tensor

    def channels(self, n: int) -> Moments:
        """These moments for ``n`` channels (broadcast, or repeated for flattened features)."""
        size = len(self.mean)
        if size == n:
            return self
        if size == 1 or n % size == 0:
            return Moments(
                self.mean.repeat_interleave(n // size), self.var.repeat_interleave(n // size)
            )
        raise ValueError(f"cannot match {size} channels to {n}")


def relu_moments(m: Moments) -> Moments:
    """Mean and variance of ``max(0, X)`` for ``X ~ N(mean, var)``."""
    std = m.var.clamp(min=1e-12).sqrt()
    a = m.mean / std
    cdf = torch.special.ndtr(a)
    pdf = torch.exp(-0.5 * a * a) / math.sqrt(2 * math.pi)
    first = m.mean * cdf + std * pdf
    second = (m.mean**2 + m.var) * cdf + m.mean * std * pdf
    return Moments(first, (second - first**2).clamp(min=0))


def _linear_moments(module: nn.Module, m: Moments) -> Moments:
    weight = module.weight.detach()
    if isinstance(module, nn.Linear):
        m = m.channels(weight.shape[1])
        mean, var = weight @ m.mean, (weight**2) @ m.var
    else:
        groups = module.groups
        m = m.channels(module.in_channels)
        w = weight.reshape(groups, weight.shape[0] // groups, weight.shape[1], -1)
        mean_in = m.mean.view(groups, 1, -1)
        var_in = m.var.view(groups, 1, -1)
        mean = (w.sum(-1) * mean_in).sum(-1).flatten()
        var = ((w**2).sum(-1) * var_in).sum(-1).flatten()
    if module.bias is not None:
        mean = mean + module.bias.detach()
    return Moments(mean, var)


def _constant(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) else None


class _Propagation:
    """Walks the graph once, computing Moments per node and a threshold per activation."""

    def __init__(self, gm: fx.GraphModule, k: float) -> None:
        self.gm, self.k = gm, k
        self.env: dict[fx.Node, Moments | None] = {}
        self.thresholds: dict[str, torch.Tensor] = {}
        self.batchnorms = 0

    def fail(self, node: fx.Node, why: str = "") -> ConvertSNNError:
        return ConvertSNNError(
            f"bnstats cannot estimate activation statistics through {describe(node, self.gm)}"
            f"{why}; pass calibration images with --calib"
        )

    def run(self) -> dict[str, torch.Tensor]:
        for node in self.gm.graph.nodes:
            if node.op == "output":
                break
            try:
                self.env[node] = self.visit(node)
            except ValueError as err:
                raise self.fail(node, f" ({err})") from None
        return self.thresholds

    def arg(self, node: fx.Node, i: int = 0) -> Moments:
        value = self.env.get(node.args[i]) if isinstance(node.args[i], fx.Node) else None
        if value is None:
            raise self.fail(node)
        return value

    def visit(self, node: fx.Node) -> Moments | None:
        if node.op == "placeholder":
            return Moments(torch.tensor([PIXEL_MEAN]), torch.tensor([PIXEL_STD**2]))
        if node.op == "get_attr" or (node.op == "call_method" and node.target == "size"):
            return None
        if node.op == "call_module":
            return self.visit_module(node, self.gm.get_submodule(node.target))
        target = node.target
        if target in _UNCHANGED_CALLS:
            return self.arg(node)
        if target in _ADD or target in _SUB:
            return self.visit_sum(node, -1.0 if target in _SUB else 1.0)
        if target in _MUL or target in _DIV or target is operator.neg:
            c = -1.0 if target is operator.neg else _constant(node.args[1])
            if c is None:
                raise self.fail(node, " (only scaling by a constant is supported)")
            c = 1.0 / c if target in _DIV else c
            m = self.arg(node)
            return Moments(m.mean * c, m.var * c * c)
        if target is operator.getitem:
            return self.visit_getitem(node)
        if target is F.pad:
            return self.visit_pad(node)
        if target is torch.cat:
            return self.visit_cat(node)
        raise self.fail(node)

    def visit_module(self, node: fx.Node, module: nn.Module) -> Moments:
        if isinstance(module, ACTIVATION_TYPES):
            m = self.arg(node)
            theta = (m.mean + self.k * m.var.sqrt()).max()
            if not theta > 0:
                raise ConvertSNNError(
                    f"bnstats: activation '{node.target}' is predicted never to fire; pass "
                    "calibration images with --calib"
                )
            clip = getattr(module, "max_val", None)
            self.thresholds[node.target] = theta.clamp(max=clip) if clip is not None else theta
            return relu_moments(m)
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            if "bn_stats" in node.meta:
                self.batchnorms += 1
                mean, std = node.meta["bn_stats"]
                return Moments(mean.cpu(), std.cpu() ** 2)
            return _linear_moments(module, self.arg(node))
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            self.batchnorms += 1
            std = (module.running_var / (module.running_var + module.eps)).sqrt().detach().cpu()
            if module.affine:
                return Moments(
                    module.bias.detach().cpu(), (module.weight.detach().cpu() * std) ** 2
                )
            return Moments(torch.zeros_like(std), std**2)
        if isinstance(module, Normalize):
            m = self.arg(node).channels(len(module.mean))
            mean, std = module.mean.cpu(), module.std.cpu()
            return Moments((m.mean - mean) / std, m.var / std**2)
        if isinstance(module, _UNCHANGED_MODULES):
            return self.arg(node)
        raise self.fail(node)

    def visit_sum(self, node: fx.Node, sign: float) -> Moments:
        a, b = node.args[0], node.args[1]
        if isinstance(a, fx.Node) and isinstance(b, fx.Node):
            ma, mb = self.arg(node, 0), self.arg(node, 1)
            n = max(len(ma.mean), len(mb.mean))
            ma, mb = ma.channels(n), mb.channels(n)
            return Moments(ma.mean + sign * mb.mean, ma.var + mb.var)
        node_arg, const = (a, b) if isinstance(a, fx.Node) else (b, a)
        c = _constant(const)
        m = self.env.get(node_arg)
        if c is None or m is None:
            raise self.fail(node)
        return Moments(m.mean + (sign * c if node_arg is a else c), m.var)

    def visit_getitem(self, node: fx.Node) -> Moments:
        m = self.arg(node)
        index = node.args[1]
        if isinstance(index, tuple) and len(index) > 1 and isinstance(index[1], slice):
            if len(m.mean) > 1:
                return Moments(m.mean[index[1]], m.var[index[1]])
        return m

    def visit_pad(self, node: fx.Node) -> Moments:
        m = self.arg(node)
        pad = list(node.args[1]) if len(node.args) > 1 else list(node.kwargs["pad"])
        if len(pad) >= 6 and (pad[4] or pad[5]) and len(m.mean) > 1:
            zeros = (pad[4], pad[5])
            return Moments(F.pad(m.mean, zeros), F.pad(m.var, zeros))
        return m

    def visit_cat(self, node: fx.Node) -> Moments:
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        parts = [self.env.get(t) if isinstance(t, fx.Node) else None for t in node.args[0]]
        if dim != 1 or any(p is None or len(p.mean) == 1 for p in parts):
            raise self.fail(node, " (only channel concatenation of known channels)")
        return Moments(torch.cat([p.mean for p in parts]), torch.cat([p.var for p in parts]))


@register_calibration
class BNStats(CalibrationMethod):
    """``bnstats[:K]``: data-free, threshold = max over channels of mean + K std (default 3)."""

    name = "bnstats"
    needs_data = False

    def __init__(self, arg: str | None = None) -> None:
        self.k = parse_options(self.name, arg, {"K": 3.0})["K"]
        if not self.k > 0:
            raise ConvertSNNError(f"bnstats needs K > 0, got {self.k}")

    def thresholds(
        self,
        ann: fx.GraphModule,
        activations: list[str],
        loader: DataLoader | None,
        device: torch.device,
    ) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            propagation = _Propagation(ann, self.k)
            found = propagation.run()
        if not propagation.batchnorms:
            warnings.warn(
                "bnstats: the model has no BatchNorm statistics (none in the architecture, or "
                "folded by an ONNX exporter), so thresholds come from the weights alone and are "
                "crude; pass calibration images (--calib) for better ones",
                stacklevel=2,
            )
        return {name: found[name] for name in activations}

    def __str__(self) -> str:
        return f"bnstats:{self.k:g}"
