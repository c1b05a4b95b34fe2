"""ANN -> SNN conversion: normalise the graph, calibrate thresholds, swap ReLUs for neurons.

The executor (this module) is separate from the algorithm (a calibration method from
:mod:`convertsnn.convert.calibration`) and from neuron construction (:class:`IFNeuron`), after
SpikingJelly's ann2snn design.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import fx, nn
from torch.utils.data import DataLoader

from convertsnn.convert.calibration import CalibrationMethod, get_calibration
from convertsnn.convert.graph import activation_names, prepare_ann
from convertsnn.errors import ConvertSNNError
from convertsnn.snn.compiled import check_runtime
from convertsnn.snn.network import SpikingNetwork, check_timesteps
from convertsnn.snn.neurons import IFNeuron, check_burst, check_dither, check_population

NEURON_TYPES = ("if", "lif")


def replace_activations(
    ann: fx.GraphModule, thresholds: dict[str, torch.Tensor], **neuron_kwargs
) -> fx.GraphModule:
    """Swap each activation module named in ``thresholds`` for an IFNeuron (in place)."""
    for name, theta in thresholds.items():
        theta = torch.as_tensor(theta, dtype=torch.float32).detach().cpu()
        if not torch.isfinite(theta).all() or (theta <= 0).any():
            raise ConvertSNNError(
                f"calibration gave layer '{name}' the threshold {theta.tolist()}: the layer never "
                "activated on the calibration data; use more or more varied calibration images"
            )
        ann.add_submodule(name, IFNeuron(threshold=theta, **neuron_kwargs))
    ann.recompile()
    return ann


def check_calibration_data(calib: Iterable, input_size: list[int] | None = None) -> None:
    """Refuse calibration data that is not re-iterable (images, labels) batches of finite
    ``[B, C, H, W]`` images in [0, 1] (of ``input_size`` when given)."""
    if iter(calib) is calib:
        raise ConvertSNNError(
            "calibration data must be re-iterable (a DataLoader or a list of batches), not an "
            "iterator: calibration reads it more than once"
        )
    seen = 0
    for batch in calib:
        if not (isinstance(batch, (tuple, list)) and batch and torch.is_tensor(batch[0])):
            raise ConvertSNNError(
                "calibration data must yield (images, labels) batches, e.g. a DataLoader over "
                f"convertsnn.data.load_dataset(...); got a batch of type {type(batch).__name__}"
            )
        x = batch[0]
        if x.ndim != 4 or not x.is_floating_point():
            raise ConvertSNNError(
                f"calibration images must be float [B, C, H, W] in [0, 1], got {x.dtype} of "
                f"shape {tuple(x.shape)}"
            )
        if input_size and tuple(x.shape[1:]) != tuple(input_size):
            raise ConvertSNNError(
                f"calibration images are {tuple(x.shape[1:])} but the model expects "
                f"{tuple(input_size)}; use images of the model's size"
            )
        if not torch.isfinite(x).all():
            raise ConvertSNNError("calibration images contain NaN or infinite values")
        if x.numel() and (x.min() < 0 or x.max() > 1):
            raise ConvertSNNError(
                f"calibration images span [{x.min().item():.4g}, {x.max().item():.4g}]; the ANN "
                "takes images in [0, 1] (divide uint8 images by 255, do not normalise them)"
            )
        seen += len(x)
    if not seen:
        raise ConvertSNNError("the calibration data is empty; pass at least one image")


def convert(
    ann: nn.Module,
    calib: DataLoader | None = None,
    timesteps: int = 8,
    calibration: str | CalibrationMethod = "percentile:99.99",
    neuron: str = "if",
    leak: float = 1.0,
    reset: str = "subtract",
    v_init: float = 0.5,
    surrogate: str = "triangle:1",
    device: str | torch.device = "cpu",
    metadata: dict | None = None,
    signed: bool = False,
    burst: int = 1,
    dither: float = 0.0,
    population: int = 1,
    runtime: str = "eager",
) -> SpikingNetwork:
    """Convert a ReLU ANN (taking images in [0, 1]) into a :class:`SpikingNetwork`.

    Args:
        ann: the source network; normalisation must be inside it.
        calib: batches of (image, label) used to calibrate thresholds.
        timesteps: simulation length T the SNN runs by default.
        calibration: method spec, e.g. ``"max"`` or ``"percentile:99.9"``.
        neuron: ``"if"`` or ``"lif"`` (LIF uses ``leak``).
        leak: membrane leak of a LIF neuron, in (0, 1).
        reset: ``"subtract"`` or ``"zero"``, see :class:`IFNeuron`.
        v_init: initial membrane potential as a fraction of the threshold, in [0, 1].
        surrogate: surrogate gradient ``FAMILY[:G]``, see :class:`IFNeuron`.
        device: where calibration runs; the SNN is returned on this device.
        metadata: extra facts to store with the model (source, preprocessing, ...).
        signed: signed (ternary) spikes that take back over-firing, a hardware-cost variant
            (see :class:`IFNeuron`; off by default).
        burst: the most spikes a neuron sends per step, K (Li and Zeng, IJCAI 2022; see
            :class:`IFNeuron`); 1, the default, is binary, K >= 2 a hardware-cost variant.
        dither: half-width of each neuron's random initial membrane ``theta * U[v_init -
            dither, v_init + dither]``, drawn per input (see :class:`IFNeuron`; 0, the
            default, is deterministic). Set after calibration, which sees ``v_init``.
        population: binary member neurons per unit, K (staggered initial membranes, outputs
            averaged; see :class:`IFNeuron`); 1, the default, is one neuron, K >= 2 a
            hardware-cost variant that binary-spike hardware can run.
        runtime: ``"eager"`` or ``"compiled"``, how the neurons run during calibration and
            afterwards (see :mod:`convertsnn.snn.compiled`; the same spikes, so the same SNN).

    On CPU with glibc, call :func:`convertsnn.allocator.keep_freed_memory` first, as the command
    line does: bias calibration then runs about twice as fast (ResNet-56, ``auto``, 4 members:
    144 s against 76 s; docs/performance.md).
    """
    if not isinstance(ann, nn.Module):
        raise ConvertSNNError(f"convert takes a torch.nn.Module ANN, got {type(ann).__name__}")
    check_timesteps(timesteps)
    if not 0 <= v_init <= 1:
        raise ConvertSNNError(
            f"v_init is the initial membrane potential as a fraction of the threshold and must "
            f"be in [0, 1], got {v_init}"
        )
    if calib is not None:
        check_calibration_data(calib, (metadata or {}).get("input_size"))
    if signed and reset != "subtract":
        raise ConvertSNNError("signed spikes need reset by subtraction (reset='subtract')")
    check_burst(burst, reset, signed)
    check_dither(dither, v_init)
    check_population(population, reset, signed, burst, v_init, dither)
    check_runtime(runtime)
    if neuron not in NEURON_TYPES:
        raise ConvertSNNError(f"unknown neuron '{neuron}'; choose one of {', '.join(NEURON_TYPES)}")
    if neuron == "if":
        leak = 1.0
    elif not 0 < leak < 1:
        raise ConvertSNNError(f"a LIF neuron needs a leak in (0, 1), got {leak}")
    device = torch.device(device)
    method = get_calibration(calibration)
    if calib is None and method.needs_data:
        raise ConvertSNNError(f"calibration '{method}' needs calibration images; pass --calib DATA")
    gm = prepare_ann(ann).to(device)
    if (metadata or {}).get("input_size"):
        method.input_size = tuple(metadata["input_size"])
    gm = method.prepare_ann(gm, calib, device)
    names = activation_names(gm)
    thresholds = method.thresholds(gm, names, calib, device)
    body = replace_activations(
        gm, thresholds, leak=leak, reset=reset, v_init=v_init, surrogate=surrogate, signed=signed,
        burst=burst, population=population,
    )  # fmt: skip
    meta = dict(metadata or {})
    meta["conversion"] = {
        "calibration": str(method),
        "neuron": neuron,
        "leak": leak,
        "reset": reset,
        "v_init": v_init,
        "surrogate": surrogate,
    }
    if signed:
        meta["conversion"]["signed_spikes"] = (
            "hardware-cost variant: spikes of -1 take back over-firing"
        )
    if burst > 1:
        meta["conversion"]["burst_spikes"] = (
            f"hardware-cost variant: up to {burst} spikes per neuron and step"
        )
    if population > 1:
        meta["conversion"]["population"] = (
            f"hardware-cost variant: {population} binary neurons per unit, staggered initial "
            "membranes, outputs averaged"
        )
    if dither:
        meta["conversion"]["dither"] = dither
    snn = SpikingNetwork(body, timesteps, metadata=meta).to(device)
    snn.runtime = runtime
    method.correct_snn(snn, calib, device)
    snn.set_dither(dither)
    return snn.eval()
