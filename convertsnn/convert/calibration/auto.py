"""``auto``: try several calibration methods and keep the one whose SNN agrees best with the ANN.

Which method wins depends on the network and on T (measured in docs/conversion.md: T-aware
thresholds and bias calibration at low T, percentiles at large T). This method splits the
calibration images: each candidate calibrates on the first part, converts for the SNN's T, and
is scored on the held-out rest by the fraction of images on which the SNN's class equals the
ANN's (no labels needed). The best candidate's SNN is kept (ties go to the earlier candidate)
and the choice and every score are recorded in the file's metadata (``auto_calibration``).
A model selection step over existing methods, in the spirit of SNN Calibration's per-layer
threshold search (Li et al., ICML 2021), applied to whole methods.

Spec: ``auto[:CANDIDATE+CANDIDATE+...]``, default
``auto:bnmse+mse+channelwise+delay:biascal:mse+delay:biascal:mse:channel=1,scale=0.7`` (the
candidates are separated by ``+``; QCFS finetunes the ANN and cannot be a candidate).
``delay:biascal:mse`` is ``biascal:mse`` with the delayed readout chosen on the calibration
images (the plain mean when that agrees best), so it replaces ``biascal:mse`` at the cost of one
more SNN pass; the chosen candidate's readout is kept. Its twin searches one threshold per
channel and starts from 0.7 of that fit: deep layers then fire earlier, and each channel gets
the resolution its own range needs. On ResNet-20 it read 67.4 / 83.6 / 89.5 % at T = 4 / 8 / 16
against 64.3 / 79.8 / 89.5 % for the former twin with one threshold per layer (``scale=0.7``
without ``channel=1``), on ResNet-56 and ResNet-2B it was level or ahead at every T too (1,000
test images; docs/conversion.md, "Deep ResNets without training"), and the held-out images
decide between the two ``delay`` candidates. They cost most of ``auto``'s time (two bias
calibrations).
``holdout`` (a quarter of the calibration images, at most 256) are kept for scoring.
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import fx
from torch.utils.data import DataLoader

from convertsnn.convert.calibration.registry import (
    CalibrationMethod,
    get_calibration,
    register_calibration,
)
from convertsnn.errors import ConvertSNNError
from convertsnn.snn.network import SpikingNetwork
from convertsnn.snn.neurons import IFNeuron

DEFAULT_CANDIDATES = "bnmse+mse+channelwise+delay:biascal:mse+delay:biascal:mse:channel=1,scale=0.7"
MAX_HOLDOUT = 256
MIN_IMAGES = 4  # a held-out quarter of at least one image


@register_calibration
class Auto(CalibrationMethod):
    """``auto[:A+B+...]``: the candidate whose SNN agrees most with the ANN on held-out images."""

    name = "auto"
    depends_on_timesteps = True

    def __init__(self, arg: str | None = None) -> None:
        specs = [s.strip() for s in (arg or DEFAULT_CANDIDATES).split("+") if s.strip()]
        self.candidates = [get_calibration(spec) for spec in specs]
        for method in self.candidates:
            chain = [method]
            while hasattr(chain[-1], "base"):
                chain.append(chain[-1].base)
            if any(m.name in ("qcfs", "auto") for m in chain):
                raise ConvertSNNError(
                    f"auto cannot try '{method}': it finetunes the ANN or is itself 'auto'; "
                    "pass it as --calibration directly"
                )
        self.ann: fx.GraphModule | None = None

    def thresholds(
        self,
        ann: fx.GraphModule,
        activations: list[str],
        loader: DataLoader | None,
        device: torch.device,
    ) -> dict[str, torch.Tensor]:
        """Keeps a copy of the ANN; the thresholds are placeholders until :meth:`correct_snn`."""
        self.ann, self.activations = copy.deepcopy(ann), activations
        return {name: torch.tensor(1.0) for name in activations}

    def correct_snn(self, snn, loader: DataLoader | None, device: torch.device) -> None:
        # imported here: the converter imports this package
        from convertsnn.convert.converter import replace_activations

        fit, holdout = split_batches(loader)
        x = torch.cat([images for images, _ in holdout])
        with torch.no_grad():
            reference = self.ann.eval().to(device)(x.to(device)).argmax(1)
        neuron = next(m for m in snn.body.modules() if isinstance(m, IFNeuron))
        settings = neuron.config()
        scores, skipped, best, best_score = {}, {}, None, -1.0
        for method in self.candidates:
            body = copy.deepcopy(self.ann)
            try:
                with warnings.catch_warnings():
                    # "no BatchNorm statistics, pass --calib" is moot: auto scores it on data
                    warnings.filterwarnings("ignore", message="bnstats: the model has no BatchNorm")
                    thresholds = method.thresholds(body, self.activations, fit, device)
            except ConvertSNNError as error:  # e.g. bnstats through a layer it cannot model
                skipped[str(method)] = str(error)
                continue
            body = replace_activations(body, thresholds, **settings)
            candidate = SpikingNetwork(body, snn.timesteps, metadata=copy.deepcopy(snn.metadata))
            candidate.to(device)
            candidate.runtime = snn.runtime
            method.correct_snn(candidate, fit, device)
            score = agreement(candidate.eval(), x, reference, device)
            scores[str(method)] = score
            if score > best_score:
                best, best_score = (method, candidate), score
        if best is None:
            raise ConvertSNNError(
                "auto: no candidate could calibrate this model: "
                + "; ".join(f"{name}: {reason}" for name, reason in skipped.items())
            )
        method, chosen = best
        snn.body = chosen.body
        snn.readout = chosen.readout
        snn.metadata.clear()
        snn.metadata.update(chosen.metadata)
        snn.metadata["auto_calibration"] = {
            "chosen": str(method),
            "timesteps": snn.timesteps,
            "holdout_images": len(x),
            "agreement_with_ann": scores,
            "skipped": skipped,
        }

    def __str__(self) -> str:
        return "auto:" + "+".join(str(m) for m in self.candidates)


def split_batches(loader: DataLoader | None, method: str = "auto") -> tuple[list, list]:
    """The calibration batches as (fit, held-out) lists of ``(images, labels)``."""
    if loader is None:
        raise ConvertSNNError(f"{method} calibration needs data: pass calibration images (--calib)")
    images = [x for x, _ in loader]
    labels = [y for _, y in loader]
    x, y = torch.cat(images), torch.cat(labels)
    held = min(MAX_HOLDOUT, len(x) // 4)
    if len(x) < MIN_IMAGES:
        raise ConvertSNNError(
            f"{method} calibration needs at least {MIN_IMAGES} calibration images (a quarter is "
            f"held out to score the candidates), got {len(x)}"
        )
    size = len(images[0])
    fit = [(x[i : i + size], y[i : i + size]) for i in range(0, len(x) - held, size)]
    return fit, [(x[len(x) - held :], y[len(x) - held :])]


def agreement(snn, x: torch.Tensor, reference: torch.Tensor, device: torch.device) -> float:
    """Fraction of ``x`` on which the SNN's class equals ``reference`` (the ANN's)."""
    with torch.no_grad():
        predicted = torch.cat([snn(b.to(device)).argmax(1) for b in x.split(64)])
    return (predicted == reference).float().mean().item()
