"""ANN -> SNN conversion: normalise the graph, calibrate thresholds, swap ReLUs for neurons.

The executor (this module) is separate from the algorithm (a calibration method from
:mod:`convertsnn.convert.calibration`) and from neuron construction (:class:`IFNeuron`), after
SpikingJelly's ann2snn design.
"""

from __future__ import annotations

import torch
from torch import fx, nn
from torch.utils.data import DataLoader

from convertsnn.convert.calibration import CalibrationMethod, get_calibration
from convertsnn.convert.graph import activation_names, prepare_ann
from convertsnn.errors import ConvertSNNError
from convertsnn.snn.network import SpikingNetwork
from convertsnn.snn.neurons import IFNeuron

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
) -> SpikingNetwork:
    """Convert a ReLU ANN (taking images in [0, 1]) into a :class:`SpikingNetwork`.

    Args:
        ann: the source network; normalisation must be inside it.
        calib: batches of (image, label) used to calibrate thresholds.
        timesteps: simulation length T the SNN runs by default.
        calibration: method spec, e.g. ``"max"`` or ``"percentile:99.9"``.
        neuron: ``"if"`` or ``"lif"`` (LIF uses ``leak``).
        leak, reset, v_init, surrogate: neuron settings, see :class:`IFNeuron`.
        device: where calibration runs; the SNN is returned on this device.
        metadata: extra facts to store with the model (source, preprocessing, ...).
    """
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
    gm = method.prepare_ann(gm, calib, device)
    names = activation_names(gm)
    thresholds = method.thresholds(gm, names, calib, device)
    body = replace_activations(
        gm, thresholds, leak=leak, reset=reset, v_init=v_init, surrogate=surrogate
    )
    meta = dict(metadata or {})
    meta["conversion"] = {
        "calibration": str(method),
        "neuron": neuron,
        "leak": leak,
        "reset": reset,
        "v_init": v_init,
        "surrogate": surrogate,
    }
    snn = SpikingNetwork(body, timesteps, metadata=meta).to(device)
    method.correct_snn(snn, calib, device)
    return snn.eval()
