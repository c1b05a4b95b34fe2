"""Data-free thresholds from BatchNorm statistics (the default when no calibration data is given).

A BatchNorm layer stores what its output looks like on the training data: per channel, mean
``beta`` and standard deviation ``|gamma|`` (times ``sqrt(var / (var + eps))``). The converter
keeps these numbers when it folds BN into a conv (``node.meta["bn_stats"]``), and this method
propagates per-channel means and variances through the graph, treating each pre-activation as
Gaussian (as in data-free quantisation, e.g. Nagel et al. 2019, "Data-free quantization through
weight equalization and bias correction"):

- after a (folded or kept) BatchNorm: its stored statistics;
- ReLU: the rectified-Gaussian mean and variance; residual adds: means and variances add
  (the two branches are assumed independent, so the variance of a sum is the sum of the
  variances; a positive correlation between a block's input and its residual branch makes the
  true variance larger); pooling, padding and slicing: unchanged (zero-padded channels get
  zero);
- layout ops (``permute``, ``transpose``, ``flatten``, ``view``/``reshape``, ``squeeze``,
  ``unsqueeze``, ``mean``): the statistics stay per channel and follow the channel axis, so
  channels-last (NHWC) graphs work; flattening a channels-last tensor puts the channel index
  innermost in the features, which the next linear layer sees in that order;
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
from dataclasses import dataclass, replace

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
    nn.ZeroPad2d,
)
_UNCHANGED_CALLS = {F.avg_pool2d, F.adaptive_avg_pool2d, F.max_pool2d, "contiguous"}
_FLATTEN = {torch.flatten, "flatten"}
_RESHAPE = {torch.reshape, "view", "reshape"}
_PERMUTE = {torch.permute, "permute"}
_TRANSPOSE = {torch.transpose, "transpose"}
_MEAN = {torch.mean, "mean"}
_ADD = {operator.add, operator.iadd, torch.add, "add"}
_SUB = {operator.sub, torch.sub, "sub"}
_MUL = {operator.mul, torch.mul, "mul"}
_DIV = {operator.truediv, "div"}


@dataclass
class Moments:
    """Per-channel mean and variance of a tensor (length 1: the same for every channel).

    ``dim`` is the tensor axis the channels run along and ``ndim`` the tensor's number of
    dimensions (None while unknown, e.g. for the input); ``inner`` marks features flattened
    from a channels-last tensor (channel index innermost)."""

    mean: torch.Tensor
    var: torch.Tensor
    dim: int = 1
    ndim: int | None = None
    inner: bool = False

    def channels(self, n: int) -> Moments:
        """These moments for ``n`` channels (broadcast, or repeated for flattened features)."""
        size = len(self.mean)
        if size == n:
            return self
        if size == 1 or n % size == 0:
            repeat = torch.Tensor.repeat if self.inner else torch.Tensor.repeat_interleave
            return replace(self, mean=repeat(self.mean, n // size), var=repeat(self.var, n // size))
        raise ValueError(f"cannot match {size} channels to {n}")

    def pooled(self) -> Moments:
        """The moments of a value drawn from a random channel (one Gaussian for all)."""
        mean = self.mean.mean()
        var = (self.var + (self.mean - mean) ** 2).mean()
        return Moments(mean.view(1), var.view(1), ndim=self.ndim)

    def axis(self, i: int, ndim: int | None = None) -> int:
        """Axis ``i`` as a non-negative index (negative ones need a known ``ndim``)."""
        ndim = self.ndim if ndim is None else ndim
        if i >= 0:
            return i
        if ndim is None:
            raise ValueError("a negative axis on a tensor of unknown rank")
        return ndim + i


def relu_moments(m: Moments) -> Moments:
    """Mean and variance of ``max(0, X)`` for ``X ~ N(mean, var)``."""
    std = m.var.clamp(min=1e-12).sqrt()
    a = m.mean / std
    cdf = torch.special.ndtr(a)
    pdf = torch.exp(-0.5 * a * a) / math.sqrt(2 * math.pi)
    first = m.mean * cdf + std * pdf
    second = (m.mean**2 + m.var) * cdf + m.mean * std * pdf
    return replace(m, mean=first, var=(second - first**2).clamp(min=0))


def _linear_moments(module: nn.Module, m: Moments) -> Moments:
    weight = module.weight.detach()
    if isinstance(module, nn.Linear):
        last = m.ndim is not None and m.dim == m.ndim - 1
        if len(m.mean) > 1 and not last and m.ndim not in (None, 2):
            m = m.pooled()  # the layer mixes an axis other than the channels
        m = m.channels(weight.shape[1])
        mean, var = weight @ m.mean, (weight**2) @ m.var
        ndim = m.ndim or 2
        return _with_bias(module, Moments(mean, var, dim=ndim - 1, ndim=ndim))
    groups = module.groups
    if len(m.mean) > 1 and m.dim != 1:
        raise ValueError(f"channels on axis {m.dim}, not 1, enter a convolution")
    m = m.channels(module.in_channels)
    w = weight.reshape(groups, weight.shape[0] // groups, weight.shape[1], -1)
    mean_in = m.mean.view(groups, 1, -1)
    var_in = m.var.view(groups, 1, -1)
    mean = (w.sum(-1) * mean_in).sum(-1).flatten()
    var = ((w**2).sum(-1) * var_in).sum(-1).flatten()
    return _with_bias(module, Moments(mean, var, ndim=_conv_ndim(module)))


def _conv_ndim(module: nn.Module) -> int:
    return 2 + len(module.kernel_size)


def _with_bias(module: nn.Module, m: Moments) -> Moments:
    if module.bias is not None:
        m.mean = m.mean + module.bias.detach()
    return m


def _constant(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) else None


class _Propagation:
    """Walks the graph once, computing Moments per node and a threshold per activation."""

    def __init__(self, gm: fx.GraphModule, k: float) -> None:
        self.gm, self.k = gm, k
        self.env: dict[fx.Node, Moments | None] = {}
        self.thresholds: dict[str, torch.Tensor] = {}
        self.inputs: dict[str, Moments] = {}  # per activation, the moments of its input
        self.batchnorms = 0

    def fail(self, node: fx.Node, why: str = "") -> ConvertSNNError:
        return ConvertSNNError(
            f"bnstats cannot estimate activation statistics through {describe(node, self.gm)}"
            f"{why}; pass calibration images with --calib and a data-driven calibration "
            "(e.g. --calibration biascal:mse), which handles any layer the converter accepts"
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
        if target in _FLATTEN or target in _RESHAPE or target in _PERMUTE:
            return self.visit_layout(node, target)
        if target in _TRANSPOSE or target in _MEAN or target in ("squeeze", "unsqueeze"):
            return self.visit_layout(node, target)
        if target in _ADD or target in _SUB:
            return self.visit_sum(node, -1.0 if target in _SUB else 1.0)
        if target in _MUL or target in _DIV or target is operator.neg:
            c = -1.0 if target is operator.neg else _constant(node.args[1])
            if c is None:
                raise self.fail(node, " (only scaling by a constant is supported)")
            c = 1.0 / c if target in _DIV else c
            m = self.arg(node)
            return replace(m, mean=m.mean * c, var=m.var * c * c)
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
            self.inputs[node.target] = m
            return relu_moments(m)
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            if "bn_stats" in node.meta:
                self.batchnorms += 1
                mean, std = node.meta["bn_stats"]
                linear = isinstance(module, nn.Linear)
                ndim = (self.arg(node).ndim or 2) if linear else _conv_ndim(module)
                return Moments(mean.cpu(), std.cpu() ** 2, ndim - 1 if linear else 1, ndim)
            return _linear_moments(module, self.arg(node))
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            self.batchnorms += 1
            std = (module.running_var / (module.running_var + module.eps)).sqrt().detach().cpu()
            ndim = self.arg(node).ndim
            if module.affine:
                bias, scale = module.bias.detach().cpu(), module.weight.detach().cpu()
                return Moments(bias, (scale * std) ** 2, ndim=ndim)
            return Moments(torch.zeros_like(std), std**2, ndim=ndim)
        if isinstance(module, Normalize):
            m = self.arg(node).channels(len(module.mean))
            mean, std = module.mean.cpu(), module.std.cpu()
            return replace(m, mean=(m.mean - mean) / std, var=m.var / std**2)
        if isinstance(module, nn.Flatten):
            return self.flatten(self.arg(node), module.start_dim, module.end_dim)
        if isinstance(module, _UNCHANGED_MODULES):
            return self.arg(node)
        raise self.fail(node)

    def visit_layout(self, node: fx.Node, target) -> Moments:
        """Layout ops: the per-channel statistics follow the channel axis."""
        m = self.arg(node)
        args = list(node.args[1:])
        if target in _FLATTEN:
            start = args[0] if args else node.kwargs.get("start_dim", 0)
            end = args[1] if len(args) > 1 else node.kwargs.get("end_dim", -1)
            return self.flatten(m, start, end)
        if target in _RESHAPE:
            shape = args[0] if len(args) == 1 and isinstance(args[0], (list, tuple)) else args
            if len(shape) == 2:  # (batch, features): a flatten from axis 1
                return self.flatten(m, 1, -1)
            return replace(m, ndim=len(shape))  # assumed to keep the channel axis in place
        if target in _PERMUTE:
            order = args[0] if len(args) == 1 and isinstance(args[0], (list, tuple)) else args
            order = [m.axis(a, len(order)) for a in order]
            return replace(m, dim=order.index(m.dim), ndim=len(order))
        if target in _TRANSPOSE:
            a, b = (m.axis(i) for i in args[:2])
            return replace(m, dim={a: b, b: a}.get(m.dim, m.dim))
        if target == "unsqueeze":
            ndim = None if m.ndim is None else m.ndim + 1
            at = m.axis(args[0] if args else node.kwargs["dim"], ndim)
            return replace(m, dim=m.dim + (at <= m.dim), ndim=ndim)
        # squeeze and mean remove axes (mean: unless keepdim)
        axes = args[0] if args else node.kwargs.get("dim")
        if target in _MEAN and (node.kwargs.get("keepdim") or (len(args) > 1 and args[1])):
            return m
        if axes is None:  # every axis: one number per image (or no singleton known)
            return m.pooled() if target in _MEAN else replace(m, ndim=None)
        axes = [m.axis(a) for a in (axes if isinstance(axes, (list, tuple)) else [axes])]
        if m.dim in axes and target in _MEAN:
            return m.pooled()
        ndim = None if m.ndim is None else m.ndim - len(axes)
        return replace(m, dim=m.dim - sum(a < m.dim for a in axes), ndim=ndim)

    def flatten(self, m: Moments, start: int, end: int) -> Moments:
        """Moments after flattening axes ``start..end``: the channels of a flattened axis run
        outermost (channels first) or innermost (channels last) in the features."""
        start = m.axis(start)
        if m.ndim is None:  # only the leading axes are known: channels first
            return replace(m, dim=min(m.dim, start), ndim=None)
        end = m.axis(end)
        ndim = m.ndim - (end - start)
        if m.dim < start:
            return replace(m, ndim=ndim)
        if m.dim > end:
            return replace(m, dim=m.dim - (end - start), ndim=ndim)
        if start < m.dim < end:
            raise ValueError("the channel axis is in the middle of a flatten")
        inner = m.dim == end and end > start
        return replace(m, dim=start, ndim=ndim, inner=inner or (m.inner and m.dim == start))

    def visit_sum(self, node: fx.Node, sign: float) -> Moments:
        a, b = node.args[0], node.args[1]
        if isinstance(a, fx.Node) and isinstance(b, fx.Node):
            ma, mb = self.arg(node, 0), self.arg(node, 1)
            n = max(len(ma.mean), len(mb.mean))
            ma, mb = ma.channels(n), mb.channels(n)
            # branches assumed independent: the variance of the sum is the sum of variances
            layout = ma if len(ma.mean) >= len(mb.mean) else mb
            return replace(layout, mean=ma.mean + sign * mb.mean, var=ma.var + mb.var)
        node_arg, const = (a, b) if isinstance(a, fx.Node) else (b, a)
        c = _constant(const)
        m = self.env.get(node_arg)
        if c is None or m is None:
            raise self.fail(node)
        return replace(m, mean=m.mean + (sign * c if node_arg is a else c))

    def visit_getitem(self, node: fx.Node) -> Moments:
        m = self.arg(node)
        index = node.args[1]
        if isinstance(index, tuple) and len(index) > m.dim and isinstance(index[m.dim], slice):
            if len(m.mean) > 1:
                return replace(m, mean=m.mean[index[m.dim]], var=m.var[index[m.dim]])
        return m

    def visit_pad(self, node: fx.Node) -> Moments:
        m = self.arg(node)
        pad = list(node.args[1]) if len(node.args) > 1 else list(node.kwargs["pad"])
        back = (m.ndim or 4) - 1 - m.dim  # pads come in pairs from the last axis backwards
        if len(pad) >= 2 * back + 2 and (pad[2 * back] or pad[2 * back + 1]) and len(m.mean) > 1:
            zeros = (pad[2 * back], pad[2 * back + 1])
            return replace(m, mean=F.pad(m.mean, zeros), var=F.pad(m.var, zeros))
        return m

    def visit_cat(self, node: fx.Node) -> Moments:
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        parts = [self.env.get(t) if isinstance(t, fx.Node) else None for t in node.args[0]]
        if any(p is None or len(p.mean) == 1 or p.axis(dim) != p.dim for p in parts):
            raise self.fail(node, " (only channel concatenation of known channels)")
        means, variances = [p.mean for p in parts], [p.var for p in parts]
        return replace(parts[0], mean=torch.cat(means), var=torch.cat(variances))


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
        self.inputs = propagation.inputs
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
