"""The ops a converted graph may contain: one table for the converter and the file format.

Every module type here can be rebuilt from a JSON config (so a converted model loads back
without pickle), and every function and method is addressed by a stable name.
"""

from __future__ import annotations

import operator
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from convertsnn.layers import Normalize
from convertsnn.snn.dlif import DLIFNeuron
from convertsnn.snn.neurons import IFNeuron
from convertsnn.snn.pooling import SpikingMaxPool2d


def _attrs(*names: str) -> Callable[[nn.Module], dict]:
    def config(m: nn.Module) -> dict:
        out = {}
        for name in names:
            value = getattr(m, name)
            if name == "bias":
                value = value is not None
            out[name] = list(value) if isinstance(value, tuple) else value
        return out

    return config


_CONV = _attrs(
    "in_channels",
    "out_channels",
    "kernel_size",
    "stride",
    "padding",
    "dilation",
    "groups",
    "bias",
    "padding_mode",
)
_BN = _attrs("num_features", "eps", "momentum", "affine", "track_running_stats")

# type name -> (class, function giving the constructor kwargs of an instance)
MODULES: dict[str, tuple[type[nn.Module], Callable[[nn.Module], dict]]] = {
    "Conv1d": (nn.Conv1d, _CONV),
    "Conv2d": (nn.Conv2d, _CONV),
    "Linear": (nn.Linear, _attrs("in_features", "out_features", "bias")),
    "BatchNorm1d": (nn.BatchNorm1d, _BN),
    "BatchNorm2d": (nn.BatchNorm2d, _BN),
    "AvgPool2d": (
        nn.AvgPool2d,
        _attrs("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad"),
    ),
    "MaxPool2d": (
        nn.MaxPool2d,
        _attrs("kernel_size", "stride", "padding", "dilation", "ceil_mode"),
    ),
    "SpikingMaxPool2d": (
        SpikingMaxPool2d,
        _attrs("kernel_size", "stride", "padding", "dilation", "ceil_mode"),
    ),
    "AdaptiveAvgPool2d": (nn.AdaptiveAvgPool2d, _attrs("output_size")),
    "Flatten": (nn.Flatten, _attrs("start_dim", "end_dim")),
    "ZeroPad2d": (nn.ZeroPad2d, _attrs("padding")),
    "ConstantPad2d": (nn.ConstantPad2d, _attrs("padding", "value")),
    "ReLU": (nn.ReLU, lambda m: {}),
    "ReLU6": (nn.ReLU6, lambda m: {}),
    "Hardtanh": (nn.Hardtanh, _attrs("min_val", "max_val")),
    "Normalize": (
        Normalize,
        lambda m: {"mean": [0.0] * m.mean.numel(), "std": [1.0] * m.std.numel()},
    ),
    "IFNeuron": (
        IFNeuron,
        lambda m: {"threshold": torch.zeros(m.threshold.shape).tolist(), **m.config()},
    ),
    "DLIFNeuron": (
        DLIFNeuron,
        lambda m: {
            "threshold": torch.zeros(m.threshold.shape).tolist(),
            "timesteps": m.gain.numel(),
            **m.config(),
        },
    ),
}

# Activations that become spiking neurons.
ACTIVATION_TYPES = (nn.ReLU, nn.ReLU6, nn.Hardtanh)

# Removed before conversion: the identity at inference.
REMOVED_MODULES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout, nn.Identity)

# Functions that are linear in their activation inputs or only move data around.
FUNCTIONS: dict[str, Callable] = {
    "operator.add": operator.add,
    "operator.iadd": operator.iadd,
    "operator.sub": operator.sub,
    "operator.mul": operator.mul,
    "operator.truediv": operator.truediv,
    "operator.neg": operator.neg,
    "operator.getitem": operator.getitem,
    "torch.add": torch.add,
    "torch.sub": torch.sub,
    "torch.mul": torch.mul,
    "torch.cat": torch.cat,
    "torch.flatten": torch.flatten,
    "torch.mean": torch.mean,
    "F.pad": F.pad,
    "F.avg_pool2d": F.avg_pool2d,
    "F.adaptive_avg_pool2d": F.adaptive_avg_pool2d,
    "F.max_pool2d": F.max_pool2d,
}

METHODS = frozenset(
    {
        "add", "sub", "mul", "div", "view", "reshape", "flatten", "size", "mean", "contiguous",
        "permute", "squeeze", "unsqueeze",
    }
)  # fmt: skip

# Ops that multiply or divide their arguments: allowed only with one constant side.
PRODUCT_OPS = frozenset({"operator.mul", "torch.mul", "operator.truediv", "mul", "div"})


def module_type_name(module: nn.Module) -> str | None:
    """The registry name of ``module``'s exact type, or None if it is not supported."""
    name = type(module).__name__
    return name if name in MODULES and MODULES[name][0] is type(module) else None


def function_name(fn: Callable) -> str | None:
    """The registry name of a supported function, or None."""
    for name, candidate in FUNCTIONS.items():
        if candidate is fn:
            return name
    return None
