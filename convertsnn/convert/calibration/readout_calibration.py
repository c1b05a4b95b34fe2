"""Readout calibration: refit the output layer to the ANN's logits on the SNN's own features.

The layer-wise calibration of Li et al. (ICML 2021, "A free lunch from ANN: towards efficient,
accurate spiking neural networks calibration") corrects each layer towards the ANN from the spike
trains of the calibrated layers before it; ``biascal`` and ``wcal`` do so for every layer that
feeds a neuron. This method does it for the output layer, which no neuron follows, with the
ANN's logits as the target, and chooses the delayed readout of Bu, Li and Yu (CVPR 2025) for it.

At low T the last spiking layer's rates of a deep network differ from the ANN's activations by a
large error, part of it systematic, while the classifier was trained on the ANN's activations.
The logits are linear in the classifier's weights and bias, so the classifier that best predicts
the ANN's logits from the SNN's time-averaged features has a closed form: ridge regression
(pulled towards the converted classifier), over ``images`` (1,024) calibration images. No
labels are used.

The readout window is chosen with it, as ``delay`` chooses it: for every delay D in ``0..T-1``
(logits averaged over steps ``D..T-1``, the ``readout`` setting of the SNN file) the converted
and the refitted classifier are scored by the fraction of images on which the SNN's class equals
the ANN's, the refit by 4-fold cross-validation (every image scored once by a fit that did not
see it; one held-out quarter picked worse delays on ResNet-56). The best of these 2T readouts is
kept (ties to the converted classifier, then to the smaller D), a kept refit fitted again on all
the images; every score is recorded in the file's metadata (``readout_calibration``). The window
replaces that of a ``delay:`` in BASE, which is therefore not needed.

The output layer must be an ``nn.Linear`` whose output is the network's; a model whose output
comes from anything else is refused with the node's name.

Spec: ``readoutcal`` (on top of ``biascal:mse:channel=1,scale=0.7``) or ``readoutcal:BASE``
with any other method, e.g. ``readoutcal:wcal:biascal:mse:channel=1,scale=0.7``. Cost: BASE,
the ANN's logits and one SNN pass on the images.
"""

from __future__ import annotations

import torch
from torch import fx, nn
from torch.utils.data import DataLoader

from convertsnn.convert.calibration.composed import OnTopOf
from convertsnn.convert.calibration.delayed_readout import window_means
from convertsnn.convert.calibration.registry import register_calibration
from convertsnn.convert.calibration.sequential import calibration_images
from convertsnn.errors import ConvertSNNError


def output_layer(body: fx.GraphModule) -> nn.Linear:
    """The ``nn.Linear`` whose output is ``body``'s output."""
    node = next(n for n in body.graph.nodes if n.op == "output").args[0]
    module = body.get_submodule(node.target) if getattr(node, "op", "") == "call_module" else None
    if not isinstance(module, nn.Linear):
        raise ConvertSNNError(
            f"readout calibration refits an nn.Linear output layer, but this model's output "
            f"comes from node '{node}'; choose a calibration without readoutcal, e.g. "
            "delay:biascal:mse"
        )
    return module


def ridge_fit(
    features: torch.Tensor, targets: torch.Tensor, prior: torch.Tensor, ridge: float
) -> torch.Tensor:
    """``[F + 1, K]`` weights and bias minimising ``|[X, 1] W - Z|^2 + ridge |W - prior|^2``."""
    x = torch.cat([features, torch.ones(len(features), 1, dtype=features.dtype)], 1).double()
    gram = x.T @ x + ridge * torch.eye(x.shape[1], dtype=torch.float64)
    return torch.linalg.solve(gram, x.T @ targets.double() + ridge * prior.double()).float()


@register_calibration
class ReadoutCalibration(OnTopOf):
    """``readoutcal[:BASE]``: BASE's SNN with its output layer refitted to the ANN's logits and
    the readout window chosen for it."""

    name = "readoutcal"
    default_base = "biascal:mse:channel=1,scale=0.7"
    depends_on_timesteps = True
    images = 1024
    batch = 128
    ridge = 1.0  # pull towards the converted classifier (squared-feature units, summed)
    folds = 4  # cross-validation folds that score the refits

    def correct_snn(self, snn, loader: DataLoader | None, device: torch.device) -> None:
        images = calibration_images(loader, self.images)
        if len(images) < self.folds:
            raise ConvertSNNError(
                f"readout calibration needs at least {self.folds} calibration images (it "
                f"cross-validates its refit in {self.folds} folds), got {len(images)}"
            )
        output_layer(snn.body)  # refuse a model it cannot refit before any work
        snn.eval().to(device)
        with torch.no_grad(), snn.gradient("ann"):  # the ANN before BASE's corrections
            logits = torch.cat([snn(b.to(device)).cpu() for b in images.split(self.batch)])
        self.base.correct_snn(snn, self.base_loader(loader), device)
        head = output_layer(snn.body)  # after BASE, which may replace the body (auto)
        features = self.step_features(snn, head, images, device)
        self.refit(snn, head, features, logits)

    def step_features(
        self, snn, head: nn.Linear, images: torch.Tensor, device: torch.device
    ) -> torch.Tensor:
        """The output layer's input at every step, ``[T, N, F]`` (on the CPU)."""
        seen: list[torch.Tensor] = []
        hook = head.register_forward_hook(lambda module, args, out: seen.append(args[0].cpu()))
        try:
            with torch.no_grad():
                for batch in images.split(self.batch):
                    snn.forward_sequence(batch.to(device))
        finally:
            hook.remove()
        return torch.cat([f.reshape(snn.timesteps, -1, f.shape[-1]) for f in seen], dim=1).double()

    def refit(self, snn, head: nn.Linear, features: torch.Tensor, logits: torch.Tensor) -> None:
        """Choose the classifier (converted or refitted) and the delay by cross-validated
        agreement with the ANN; a chosen refit is then fitted on all the images."""
        steps, count = features.shape[:2]
        reference = logits.argmax(1)
        fold = torch.arange(count) % self.folds
        windows = window_means(features)  # [T, N, F]: the mean over steps D..T-1 for every D
        bias = (
            head.bias.detach() if head.bias is not None else head.weight.new_zeros(len(head.weight))
        )
        prior = torch.cat([head.weight.detach().T, bias[None]]).cpu()
        scores = {}
        for delay in range(steps):
            scores[f"converted, delay {delay}"] = agreement(windows[delay], prior, reference)
        for delay in range(steps):
            agreeing = 0.0
            for k in range(self.folds):  # fit on the other folds, count agreement on fold k
                held = fold == k
                weights = ridge_fit(windows[delay, ~held], logits[~held], prior, self.ridge)
                agreeing += agreement(windows[delay, held], weights, reference[held]) * held.sum()
            scores[f"refit, delay {delay}"] = float(agreeing) / count
        chosen = max(scores, key=scores.get)  # the first of the best: converted, smaller D
        kind, _, delay = chosen.partition(", delay ")
        delay = int(delay)
        if kind == "refit":
            weights = ridge_fit(windows[delay], logits, prior, self.ridge).to(head.weight)
            with torch.no_grad():
                head.weight.copy_(weights[:-1].T)
            head.bias = nn.Parameter(weights[-1].clone())
        snn.readout = f"delay:{delay}" if delay else "mean"
        snn.metadata["readout_calibration"] = {
            "chosen": chosen,
            "readout": snn.readout,
            "timesteps": steps,
            "images": count,
            "folds": self.folds,
            "agreement_with_ann": {name: round(score, 4) for name, score in scores.items()},
        }


def agreement(features: torch.Tensor, weights: torch.Tensor, reference: torch.Tensor) -> float:
    """Fraction of images whose class under ``weights`` equals ``reference``."""
    predicted = (features.float() @ weights[:-1] + weights[-1]).argmax(1)
    return (predicted == reference).float().mean().item()
