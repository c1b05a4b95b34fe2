"""``robust``: scale BASE's thresholds by the factor whose SNN is most robust on held-out images.

Calibration methods fit thresholds for clean fidelity. On an adversarially trained ANN at low T
that is not the most robust choice: thresholds a little below the clean optimum give the SNN
finer steps over the range most activations use, at the price of clipping the largest ones,
and the SNN's robust accuracy rises (ResNet-2B PGD at T = 8, first 500 test images, quick suite:
32.4 % with the ``mse`` thresholds, 38.4 % at 0.7 x, 40.6 % at 0.6 x; docs/robustness_loss.md).
Which factor is best depends on the model and T, so it is chosen on data: BASE calibrates on the
first part of the calibration images; every spiking layer's threshold is multiplied by each
factor of ``SCALES`` in turn, and the ``quick`` attack suite (docs/evaluation.md) is run at
radius EPS on the held-out rest (a quarter, at most 256 images, with their labels). The factor
with the highest robust accuracy is kept (ties go to the factor nearer 1); every score is
recorded in the file's metadata (``robust_threshold_scale``).

This is model selection on a robustness estimate of a few hundred images: the chosen SNN must
still be evaluated on test images with ``convertsnn evaluate --suite standard`` before any claim.
The rescaling is that of seed 001's ``layerwise`` calibration (Özdenizci & Legenstein, TMLR
2024), which multiplies its thresholds by a fixed 0.3; here the factor is chosen for robustness
on held-out images.

Spec: ``robust:EPS`` (on top of ``auto``, the default calibration) or ``robust:EPS:BASE`` with
any other method, e.g. ``robust:2/255:mse`` or ``robust:0.1:biascal:mse``; EPS is the L-inf
radius of the attacks the SNN must resist (images in [0, 1]).
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from convertsnn.convert.calibration.auto import split_batches
from convertsnn.convert.calibration.composed import OnTopOf
from convertsnn.convert.calibration.registry import register_calibration
from convertsnn.errors import ConvertSNNError
from convertsnn.numbers import parse_number
from convertsnn.snn.neurons import IFNeuron

SCALES = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5)  # nearest 1 first: ties keep the smaller change


@register_calibration
class RobustThresholdScale(OnTopOf):
    """``robust:EPS[:BASE]``: BASE's SNN with thresholds x the most robust factor of ``SCALES``."""

    name = "robust"
    default_base = "auto"
    depends_on_timesteps = True
    suite = "quick"
    seed = 0

    def __init__(self, arg: str | None = None) -> None:
        eps_text, _, base = (arg or "").partition(":")
        if not eps_text.strip():
            raise ConvertSNNError(
                "calibration 'robust' needs the attack radius: robust:EPS[:BASE], e.g. "
                "robust:2/255 or robust:0.1:mse"
            )
        self.eps = parse_number(eps_text, "the radius of calibration 'robust'")
        if not 0 < self.eps < 1:
            raise ConvertSNNError(
                f"calibration 'robust' needs a radius in (0, 1) for images in [0, 1], got "
                f"'{eps_text}'"
            )
        self.eps_text = eps_text.strip()
        super().__init__(base or None)
        self.split_of: DataLoader | None = None

    def base_loader(self, loader: DataLoader | None) -> list:
        """The first part of the calibration batches; the rest is held out for the robust score."""
        if self.split_of is not loader:
            fit, holdout = split_batches(loader, self.name)
            self.split_of, self.fit, self.holdout = loader, fit, holdout[0]
        return self.fit

    def correct_on_top(self, snn, loader: DataLoader | None, device: torch.device) -> None:
        # imported here: the evaluation imports the converter's package
        from convertsnn.eval.settings import EvalSettings
        from convertsnn.eval.suites import run_suite

        x, y = (t.to(device) for t in self.holdout)
        neurons = [m for m in snn.body.modules() if isinstance(m, IFNeuron)]
        fitted = [n.threshold.detach().clone() for n in neurons]
        settings = EvalSettings(eps=self.eps, seed=self.seed, progress=False)
        scores, best, best_robust = {}, 1.0, -1.0
        snn.eval()
        for scale in SCALES:
            for neuron, theta in zip(neurons, fitted, strict=True):
                neuron.threshold.data = theta * scale
            torch.manual_seed(self.seed)
            result = run_suite(self.suite, snn, x, y, settings)
            scores[f"{scale:g}"] = {"clean": round(result.ensemble.clean, 4),
                                    "robust": round(result.robust, 4)}  # fmt: skip
            if result.robust > best_robust:
                best, best_robust = scale, result.robust
        for neuron, theta in zip(neurons, fitted, strict=True):
            neuron.threshold.data = theta * best
        snn.metadata["robust_threshold_scale"] = {
            "chosen": best,
            "eps": self.eps,
            "suite": self.suite,
            "timesteps": snn.timesteps,
            "holdout_images": len(x),
            "scores": scores,
        }

    def __str__(self) -> str:
        return f"robust:{self.eps_text}:{self.base}"
