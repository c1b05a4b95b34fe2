"""Base class of all attacks: pixel-space [0, 1] inputs, L-inf or L2 balls, EOT gradients.

After torchattacks: the base class owns the boring parts (eval mode, projection, losses, EOT),
subclasses write :meth:`Attack.perturb`. Gradients through an SNN come from the attack's
``gradient_mode`` (see :mod:`convertsnn.attacks.gradient_modes`; by default whatever mode the
model is set to). Every gradient is checked: all-zero and non-finite gradients are counted in
``attack.grad_stats`` (non-finite entries are zeroed) for the sanity checks of
:mod:`convertsnn.eval.sanity`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from convertsnn.attacks.gradient_modes import GradientMode, parse_gradient_mode
from convertsnn.errors import ConvertSNNError

NORMS = ("linf", "l2")
LOSSES = ("ce", "dlr")


def margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``z_y - max_{j != y} z_j`` per sample, ``[B]`` (negative: misclassified)."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    return true - logits.scatter(1, y[:, None], float("-inf")).max(dim=1).values


def dlr_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Difference-of-logits-ratio loss per sample (Croce & Hein 2020), ``[B]``.

    ``-(z_y - max_{j!=y} z_j) / (z_pi1 - z_pi3)``; with fewer than 3 classes the scale is 1.
    """
    sorted_logits, _ = logits.sort(dim=1)
    true_margin = margin(logits, y)
    scale = (
        sorted_logits[:, -1] - sorted_logits[:, -3] + 1e-12
        if logits.shape[1] >= 3
        else torch.ones_like(true_margin)
    )
    return -true_margin / scale


def dlr_targeted_loss(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Targeted DLR loss per sample (Croce & Hein 2020), ``[B]``; needs at least 4 classes.

    ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)``, maximised when class ``t`` wins.
    """
    sorted_logits, _ = logits.sort(dim=1)
    true = logits.gather(1, y[:, None]).squeeze(1)
    wanted = logits.gather(1, target[:, None]).squeeze(1)
    scale = sorted_logits[:, -1] - 0.5 * (sorted_logits[:, -3] + sorted_logits[:, -4]) + 1e-12
    return -(true - wanted) / scale


def per_sample_loss(
    name: str, logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None = None
) -> torch.Tensor:
    """Loss to maximise, per sample ``[B]``: ``ce``, ``dlr`` or ``dlr-targeted`` (needs target)."""
    if name == "ce":
        return F.cross_entropy(logits, y, reduction="none")
    if name == "dlr-targeted":
        return dlr_targeted_loss(logits, y, target)
    return dlr_loss(logits, y)


@dataclass
class GradientStats:
    """Counts over (sample, step) pairs of samples still classified correctly (the gradients
    that matter; a misclassified sample may sit where a loss such as DLR is flat): how many
    input gradients were all zero or non-finite."""

    samples: int = 0
    zero: int = 0
    nonfinite: int = 0

    def check(self, grad: torch.Tensor, counted: torch.Tensor) -> torch.Tensor:
        """Count ``grad`` ``[B, ...]`` where ``counted`` ``[B]``; return it with non-finite
        entries set to 0."""
        finite = torch.isfinite(grad)
        grad = torch.where(finite, grad, torch.zeros_like(grad))
        self.samples += int(counted.sum())
        self.nonfinite += int(((~finite).flatten(1).any(dim=1) & counted).sum())
        self.zero += int(((grad.flatten(1) == 0).all(dim=1) & counted).sum())
        return grad


@contextmanager
def frozen_parameters(model: nn.Module) -> Iterator[None]:
    """Parameters do not require gradients inside the block (restored after): an attack needs
    only input gradients, so layers keep no inputs for weight gradients and neurons compute no
    threshold gradients."""
    learning = [p for p in model.parameters() if p.requires_grad]
    for parameter in learning:
        parameter.requires_grad_(False)
    try:
        yield
    finally:
        for parameter in learning:
            parameter.requires_grad_(True)


class Attack:
    """An untargeted evasion attack on a classifier taking images in [0, 1].

    Args:
        model: returns logits ``[B, K]`` for images ``[B, C, H, W]``.
        eps: radius of the threat model (e.g. 8/255 for L-inf).
        norm: ``"linf"`` or ``"l2"``.
        eot: draws averaged per gradient and per prediction (stochastic models; 1 otherwise).
        gradient_mode: how gradients pass the spiking neurons, e.g. ``"bptt:triangle:0.5"``,
            ``"bptr"``, ``"ann"``, ``"adaptive"`` (see :mod:`convertsnn.attacks.gradient_modes`);
            ``None`` keeps the model's own mode.
    """

    name = "attack"
    blackbox = False  # True for attacks that only query the model (no gradients of it)

    def __init__(
        self,
        model: nn.Module,
        eps: float,
        norm: str = "linf",
        eot: int = 1,
        gradient_mode: str | GradientMode | None = None,
    ) -> None:
        if not eps >= 0:
            raise ConvertSNNError(f"eps must be >= 0, got {eps}")
        if norm not in NORMS:
            raise ConvertSNNError(f"unknown norm '{norm}'; choose one of {', '.join(NORMS)}")
        if eot < 1:
            raise ConvertSNNError(f"eot must be at least 1, got {eot}")
        self.model = model
        self.eps = float(eps)
        self.norm = norm
        self.eot = int(eot)
        self.gradient_mode = parse_gradient_mode(gradient_mode)
        self.grad_stats = GradientStats()
        self._binding = None

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Adversarial examples for ``(x, y)``; the model is run in eval mode with its
        parameters frozen (see :func:`frozen_parameters`)."""
        was_training = self.model.training
        self.model.eval()
        self._binding = self.gradient_mode.bind(self.model)  # one binding per run
        try:
            with frozen_parameters(self.model):
                x_adv = self.perturb(x.detach(), y.detach())
        finally:
            self._binding = None
            self.model.train(was_training)
        return self.project(x_adv.detach(), x.detach())

    def perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def costed_models(self) -> tuple[nn.Module, ...]:
        """The models this attack runs: their passes are its cost (see
        :mod:`convertsnn.attacks.passes`)."""
        return (self.model,)

    def project(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Project onto the eps-ball around ``x`` and the image box [0, 1]."""
        delta = x_adv - x
        if self.norm == "linf":
            delta = delta.clamp(-self.eps, self.eps)
        else:
            norms = delta.flatten(1).norm(dim=1).clamp(min=1e-12)
            factor = (self.eps / norms).clamp(max=1.0)
            delta = delta * factor.view(-1, *([1] * (x.dim() - 1)))
        return (x + delta).clamp(0, 1)

    def step(self, grad: torch.Tensor, size: float) -> torch.Tensor:
        """Steepest-ascent step of length ``size`` for the norm (sign for L-inf)."""
        if self.norm == "linf":
            return size * grad.sign()
        norms = grad.flatten(1).norm(dim=1).clamp(min=1e-12)
        return size * grad / norms.view(-1, *([1] * (grad.dim() - 1)))

    def random_start(self, x: torch.Tensor) -> torch.Tensor:
        """A uniform random point in the ball (L-inf) or on a random direction (L2)."""
        if self.norm == "linf":
            delta = torch.empty_like(x).uniform_(-self.eps, self.eps)
        else:
            delta = torch.randn_like(x)
            norms = delta.flatten(1).norm(dim=1).view(-1, *([1] * (x.dim() - 1)))
            radius = torch.rand(x.shape[0], *([1] * (x.dim() - 1)), device=x.device)
            delta = delta / norms * radius * self.eps
        return (x + delta).clamp(0, 1)

    def gradient(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        loss: str = "ce",
        target: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Input gradient of the summed loss in the attack's gradient mode, averaged over ``eot``
        draws (expectation over transformation, Athalye et al. 2018).

        Returns ``(grad, per-sample loss, logits, correct)``; loss and logits are EOT means of
        the model itself and ``correct`` the fraction of its draws that classify each sample
        correctly (in ``ann`` mode all three from extra forward passes of the model, not of the
        proxy).
        """
        binding = self._binding or self.gradient_mode.bind(self.model)
        grad = torch.zeros_like(x)
        total_loss = torch.zeros(x.shape[0], device=x.device)
        total_logits = torch.zeros((), device=x.device)
        right = torch.zeros(x.shape[0], device=x.device)
        for _ in range(self.eot):
            x_in = x.clone().requires_grad_(True)
            with binding():
                logits = self.model(x_in)
                losses = per_sample_loss(loss, logits, y, target)
                (g,) = torch.autograd.grad(losses.sum(), x_in)
            grad += g
            total_loss += losses.detach()
            total_logits = total_logits + logits.detach()
            right += logits.detach().argmax(1) == y
        logits, correct = total_logits / self.eot, right / self.eot
        if not self.gradient_mode.exact:
            logits, correct = self.judge(x, y)
            total_loss = per_sample_loss(loss, logits, y, target) * self.eot
        grad = self.grad_stats.check(grad / self.eot, correct > 0)
        return grad, total_loss / self.eot, logits, correct

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the model (EOT mean over ``eot`` draws), no gradients."""
        with torch.no_grad():
            return sum(self.model(x) for _ in range(self.eot)) / self.eot

    def judge(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits, correct)`` of the model at ``x``, no gradients: the EOT mean of the logits
        and the fraction of the ``eot`` draws that classify each sample correctly.

        Attacks count a sample as broken only when ``correct`` is 0 (every draw misclassifies
        it, the rule by which :class:`~convertsnn.attacks.ensemble.WorstCase` lets a sample
        leave), not when the mean logits do: on a random model the mean first crosses the
        boundary where many draws are still right (docs/evaluation.md, "Stochastic models").
        """
        with torch.no_grad():
            total, right = torch.zeros((), device=x.device), torch.zeros(len(x), device=x.device)
            for _ in range(self.eot):
                logits = self.model(x)
                total = total + logits
                right += logits.argmax(1) == y
        return total / self.eot, right / self.eot

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Predicted labels (EOT mean of the logits for stochastic models)."""
        return self.logits(x).argmax(dim=1)
