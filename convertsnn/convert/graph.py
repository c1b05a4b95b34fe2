"""Trace an ANN with torch.fx and normalise its graph for conversion.

Normalisation, in order:

1. functional ReLUs (``F.relu``, ``torch.relu``, ``x.relu()``, in-place variants, ``F.relu6``,
   ``F.hardtanh`` with ``min_val=0``) become activation modules, so every activation is a module
   the converter can replace;
2. an activation module called at several places (torchvision's ResNet blocks call
   ``self.relu`` twice) gets one copy per call, so every call site becomes its own spiking layer
   with its own threshold;
3. Dropout and Identity modules and functional dropout calls are removed (they are the identity
   at inference);
4. max-pooling (``nn.MaxPool2d``, ``F.max_pool2d``) becomes
   :class:`~convertsnn.snn.pooling.SpikingMaxPool2d`, a plain max-pool in the ANN and a
   spike-count gated max-pool in the SNN (see docs/conversion.md for the measured policy);
5. BatchNorm directly after a conv/linear layer (and used only there) is folded into it; a
   BatchNorm elsewhere (e.g. after a residual add in pre-activation ResNets) stays as a layer.
   The folded layer's node keeps the BatchNorm's output statistics in ``node.meta["bn_stats"]``
   (used by data-free calibration);
6. every remaining node is checked against the supported ops; anything else raises a one-line
   :class:`ConvertSNNError` naming the op and the node.
"""

from __future__ import annotations

import copy
import operator

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from convertsnn.convert import ops
from convertsnn.convert.ops import ACTIVATION_TYPES, REMOVED_MODULES
from convertsnn.errors import ConvertSNNError
from convertsnn.layers import Normalize
from convertsnn.snn.neurons import IFNeuron
from convertsnn.snn.pooling import SpikingMaxPool2d

_RELU_FUNCTIONS = {F.relu, torch.relu, torch.relu_}
_RELU_METHODS = {"relu", "relu_"}
_CLIP_FUNCTIONS = {F.relu6, F.hardtanh, torch.clamp, torch.clip}
_DROPOUT_FUNCTIONS = {F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout}
_MAXPOOL_FUNCTIONS = {F.max_pool2d, torch.max_pool2d}

_NON_RELU = {
    "gelu": "GELU",
    "silu": "SiLU/Swish",
    "swish": "SiLU/Swish",
    "sigmoid": "Sigmoid",
    "tanh": "Tanh",
    "leaky_relu": "LeakyReLU",
    "leakyrelu": "LeakyReLU",
    "elu": "ELU",
    "selu": "SELU",
    "celu": "CELU",
    "softplus": "Softplus",
    "mish": "Mish",
    "hardswish": "Hardswish",
    "hardsigmoid": "Hardsigmoid",
    "prelu": "PReLU",
    "softmax": "Softmax",
    "log_softmax": "LogSoftmax",
}


def _is_swish_gate(node: fx.Node, gm: fx.GraphModule) -> bool:
    """Whether ``node`` is the sigmoid of a SiLU/Swish written as ``x * sigmoid(x)`` (how ONNX
    exporters spell SiLU)."""
    if _op_name(node, gm) != "sigmoid" or not node.args:
        return False
    source = node.args[0]
    return any(
        user.target in (torch.mul, operator.mul, "mul") and source in user.args
        for user in node.users
    )


class _Tracer(fx.Tracer):
    """Keeps convertsnn's own layers as leaves (they hold shape logic fx cannot trace)."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, (Normalize, IFNeuron, SpikingMaxPool2d)) or super().is_leaf_module(
            m, qualname
        )


def _unfuse_timm_blocks(model: nn.Module) -> None:
    """Replace, in place, timm blocks whose forward fx cannot trace by equivalent plain modules:
    ``BatchNormAct2d`` (asserts on ``x.ndim``) by ``nn.Sequential(BatchNorm2d, drop, act)``;
    VGG's ``ConvMlp`` (enlarges feature maps below its 7x7 kernel with an adaptive pool, a branch
    on the input shape) by ``nn.Sequential(fc1, act1, drop, fc2, act2)``, its forward for
    feature maps of at least 7x7 (ImageNet-sized inputs)."""
    try:
        from timm.layers import BatchNormAct2d
        from timm.models.vgg import ConvMlp
    except ImportError:  # pragma: no cover - timm is a dependency
        return
    for name, module in list(model.named_modules()):
        if isinstance(module, BatchNormAct2d):
            norm = nn.BatchNorm2d(
                module.num_features, module.eps, module.momentum, module.affine,
                module.track_running_stats,
            )  # fmt: skip
            norm.load_state_dict({k: v for k, v in module.state_dict().items() if "." not in k})
            plain = nn.Sequential(norm, module.drop, module.act)
        elif isinstance(module, ConvMlp):
            plain = nn.Sequential(module.fc1, module.act1, module.drop, module.fc2, module.act2)
        else:
            continue
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, plain)


def trace(model: nn.Module) -> fx.GraphModule:
    """Symbolically trace ``model`` (a deep copy, in eval mode, timm blocks unfused) into a
    GraphModule."""
    model = copy.deepcopy(model).eval()
    _unfuse_timm_blocks(model)
    try:
        graph = _Tracer().trace(model)
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConvertSNNError(
            f"cannot trace the model with torch.fx ({first}); data-dependent control flow is "
            "not supported: export it to ONNX or simplify its forward()"
        ) from None
    return fx.GraphModule(model, graph, model.__class__.__name__)


def describe(node: fx.Node, gm: fx.GraphModule) -> str:
    """``"call_module 'layer1.0.act' (GELU)"`` and the like, for error messages."""
    if node.op == "call_module":
        return f"node '{node.name}' (module {type(gm.get_submodule(node.target)).__name__})"
    if node.op in ("call_function", "call_method"):
        name = getattr(node.target, "__name__", str(node.target))
        return f"node '{node.name}' ({node.op.replace('call_', '')} {name})"
    return f"node '{node.name}' ({node.op})"


def _op_name(node: fx.Node, gm: fx.GraphModule) -> str:
    if node.op == "call_module":
        return type(gm.get_submodule(node.target)).__name__.lower()
    return getattr(node.target, "__name__", str(node.target)).lower().rstrip("_")


def _has_module(gm: fx.GraphModule, name: str) -> bool:
    try:
        gm.get_submodule(name)
    except AttributeError:
        return False
    return True


def _add_module(gm: fx.GraphModule, stem: str, module: nn.Module) -> str:
    """Add ``module`` under ``stem`` (or ``stem_1``, ``stem_2``, ... if taken); its name."""
    name, i = stem, 0
    while _has_module(gm, name):
        i += 1
        name = f"{stem}_{i}"
    gm.add_submodule(name, module)
    return name


def _as_activation_module(node: fx.Node) -> nn.Module | None:
    """The activation module equivalent to a functional ReLU/ReLU6/clip node, else None."""
    if node.op == "call_function" and node.target in _RELU_FUNCTIONS:
        return nn.ReLU()
    if node.op == "call_method" and node.target in _RELU_METHODS:
        return nn.ReLU()
    if node.op == "call_function" and node.target in _CLIP_FUNCTIONS:
        if node.target is F.relu6:
            return nn.ReLU6()
        args = [*list(node.args[1:]), None, None]
        low = node.kwargs.get("min_val", node.kwargs.get("min", args[0]))
        high = node.kwargs.get("max_val", node.kwargs.get("max", args[1]))
        if node.target is F.hardtanh:
            low = -1.0 if low is None else low
            high = 1.0 if high is None else high
        if low == 0 and isinstance(high, (int, float)):
            return nn.Hardtanh(0.0, float(high))
        if low == 0 and high is None:
            return nn.ReLU()
    return None


def _modularise_activations(gm: fx.GraphModule) -> None:
    for node in list(gm.graph.nodes):
        module = _as_activation_module(node)
        if module is None:
            continue
        name = _add_module(gm, f"act_{node.name}", module)
        with gm.graph.inserting_after(node):
            new = gm.graph.call_module(name, (node.args[0],))
        node.replace_all_uses_with(new)
        gm.graph.erase_node(node)


def _unshare_activations(gm: fx.GraphModule) -> None:
    """Give every call of a shared activation module its own copy (own neuron, own threshold)."""
    seen: set[str] = set()
    for node in gm.graph.nodes:
        if node.op != "call_module":
            continue
        module = gm.get_submodule(node.target)
        if not isinstance(module, ACTIVATION_TYPES):
            continue
        if node.target in seen:
            node.target = _add_module(gm, node.target, copy.deepcopy(module))
        seen.add(node.target)


def _remove_identities(gm: fx.GraphModule) -> None:
    for node in list(gm.graph.nodes):
        removed = node.op == "call_module" and isinstance(
            gm.get_submodule(node.target), REMOVED_MODULES
        )
        removed |= node.op == "call_function" and node.target in _DROPOUT_FUNCTIONS
        if removed:
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)


def _spiking_maxpools(gm: fx.GraphModule) -> None:
    """Replace max-pooling modules and calls with :class:`SpikingMaxPool2d`."""
    for node in list(gm.graph.nodes):
        if node.op == "call_module" and type(gm.get_submodule(node.target)) is nn.MaxPool2d:
            pool = gm.get_submodule(node.target)
            if pool.return_indices:
                continue  # left for check_supported to reject
            gm.add_submodule(
                node.target,
                SpikingMaxPool2d(
                    pool.kernel_size, pool.stride, pool.padding, pool.dilation, pool.ceil_mode
                ),
            )
        elif node.op == "call_function" and node.target in _MAXPOOL_FUNCTIONS:
            names = ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")
            kwargs = dict(zip(names, node.args[1:], strict=False))
            kwargs.update(node.kwargs)
            if kwargs.pop("return_indices", False) or "kernel_size" not in kwargs:
                continue
            if not kwargs.get("stride"):  # F.max_pool2d's stride=None / [] mean kernel_size
                kwargs["stride"] = None
            name = _add_module(gm, f"maxpool_{node.name}", SpikingMaxPool2d(**kwargs))
            with gm.graph.inserting_after(node):
                new = gm.graph.call_module(name, (node.args[0],))
            node.replace_all_uses_with(new)
            gm.graph.erase_node(node)


def _fold_batchnorm(gm: fx.GraphModule) -> int:
    folded = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_module":
            continue
        bn = gm.get_submodule(node.target)
        if not isinstance(bn, (nn.BatchNorm1d, nn.BatchNorm2d)) or not bn.track_running_stats:
            continue
        prev = node.args[0]
        if not (isinstance(prev, fx.Node) and prev.op == "call_module" and len(prev.users) == 1):
            continue
        layer = gm.get_submodule(prev.target)
        if not isinstance(layer, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            continue
        # BN output on its training data: mean beta, std |gamma| * sqrt(var / (var + eps)).
        std = (bn.running_var / (bn.running_var + bn.eps)).sqrt().detach()
        if bn.affine:
            prev.meta["bn_stats"] = (bn.bias.detach().clone(), bn.weight.detach().abs() * std)
        else:
            prev.meta["bn_stats"] = (torch.zeros_like(std), std)
        if isinstance(layer, (nn.Conv1d, nn.Conv2d)):
            fused = fuse_conv_bn_eval(layer.eval(), bn.eval())
        else:
            fused = fuse_linear_bn_eval(layer.eval(), bn.eval())
        fused.weight.requires_grad_(True)
        fused.bias.requires_grad_(True)
        gm.add_submodule(prev.target, fused)
        node.replace_all_uses_with(prev)
        gm.graph.erase_node(node)
        folded += 1
    return folded


def _input_dependent(gm: fx.GraphModule) -> set[fx.Node]:
    """Nodes whose value depends on the network input (not constants or parameters)."""
    dependent: set[fx.Node] = set()
    for node in gm.graph.nodes:
        if node.op == "placeholder" or any(a in dependent for a in node.all_input_nodes):
            if node.op == "call_method" and node.target == "size":
                continue  # shapes are structure, not activations
            dependent.add(node)
    return dependent


def check_supported(gm: fx.GraphModule) -> None:
    """Raise a one-line error for the first node the converter cannot handle."""
    dependent = _input_dependent(gm)
    for node in gm.graph.nodes:
        if node.op in ("placeholder", "output", "get_attr"):
            continue
        if node.op == "call_module":
            module = gm.get_submodule(node.target)
            ok = ops.module_type_name(module) is not None
            if type(module) is nn.Hardtanh:
                ok = module.min_val == 0
            key = node.target
        elif node.op == "call_function":
            key = ops.function_name(node.target)
            ok = key is not None
        else:
            key = node.target
            ok = key in ops.METHODS
        op = _op_name(node, gm)
        if not ok and op in _NON_RELU:
            name = "SiLU/Swish (x * sigmoid(x))" if _is_swish_gate(node, gm) else _NON_RELU[op]
            raise ConvertSNNError(
                f"cannot convert {describe(node, gm)}: {name} is not a ReLU, and an IF "
                "neuron's firing rate only approximates (clipped) ReLU; retrain or finetune the "
                "ANN with ReLU activations, then convert"
            )
        if not ok:
            raise ConvertSNNError(
                f"cannot convert {describe(node, gm)}: this op is not supported by the "
                "converter (see docs/conversion.md for the supported ops)"
            )
        if key in ops.PRODUCT_OPS and sum(a in dependent for a in node.args) > 1:
            raise ConvertSNNError(
                f"cannot convert {describe(node, gm)}: it multiplies or divides two "
                "activations (attention or squeeze-excitation gating), which spiking neurons "
                "cannot represent"
            )


def activation_names(gm: fx.GraphModule) -> list[str]:
    """Module names of the activations that become spiking neurons, in graph order."""
    return [
        node.target
        for node in gm.graph.nodes
        if node.op == "call_module" and isinstance(gm.get_submodule(node.target), ACTIVATION_TYPES)
    ]


def prepare_ann(model: nn.Module) -> fx.GraphModule:
    """Trace and normalise ``model``: the graph the converter and calibration work on."""
    gm = trace(model)
    _modularise_activations(gm)
    _unshare_activations(gm)
    _remove_identities(gm)
    _spiking_maxpools(gm)
    gm.graph.eliminate_dead_code()
    gm.recompile()
    _fold_batchnorm(gm)
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    check_supported(gm)
    if not activation_names(gm):
        raise ConvertSNNError(
            "the model has no ReLU activations, so there is nothing to turn into spiking neurons"
        )
    return gm
