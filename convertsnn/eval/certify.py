"""Certified L2 robustness by randomised smoothing (Cohen, Rosenfeld & Kolter, ICML 2019).

The smoothed classifier ``g(x) = argmax_c P(f(x + noise) = c)`` is certified by CERTIFY: draw
``n0`` noisy predictions to pick the top class ``cA``, draw ``n`` more to count how often ``cA``
wins, take the one-sided Clopper-Pearson lower bound ``pA`` at level ``alpha``; abstain if
``pA < 1/2``, else ``g`` returns ``cA`` for every L2 perturbation of the image (pixel units,
images in [0, 1]) of norm below ``R = sigma * PhiInv(pA)``. With probability at least
``1 - alpha`` a returned certificate is correct.

Which noise is certified. A Gaussian-coded SNN (encoder ``gaussian:SIGMA``, seed 002's RSC)
adds independent noise of std SIGMA to the image at each of its T steps; optionally
``extra_sigma`` adds noise of that std once per sample, before the encoder (the only noise for a
direct-coded model). The base classifier sees the T noisy copies ``x + e + e_t`` as one input in
R^(T*d), and an image perturbation ``delta`` moves that input's mean by ``(delta, ..., delta)``.
The noise covariance has this direction as an eigenvector with variance
``extra_sigma^2 + SIGMA^2 / T`` per pixel of ``delta``, so Cohen's theorem (in whitened
coordinates) certifies image perturbations up to ``R = sigma_eff * PhiInv(pA)`` with::

    sigma_eff = sqrt(extra_sigma^2 + SIGMA^2 / T)

Noise drawn anew at each step smooths like noise of std ``SIGMA / sqrt(T)`` drawn once: the
bound is tight for an SNN that only sees the time-average of its input. Any remaining
randomness of the base classifier (e.g. Poisson coding) is allowed (the smoothing lemma of
Salman et al., NeurIPS 2019, holds for randomised base classifiers), but Poisson coding is not
Gaussian and certifies nothing by itself.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from scipy.stats import beta, norm
from torch import nn
from tqdm.auto import tqdm

from convertsnn.errors import ConvertSNNError
from convertsnn.snn.encoding import GaussianEncoder
from convertsnn.snn.network import SpikingNetwork

ABSTAIN = -1


@dataclass
class Certificate:
    """CERTIFY's answer for one image: ``prediction`` (``ABSTAIN`` = -1) and ``radius``
    (0 when abstaining), with the count of the top class among ``n`` draws and its lower bound."""

    index: int
    label: int
    prediction: int
    radius: float
    top_count: int
    draws: int
    p_lower: float

    @property
    def correct(self) -> bool:
        return self.prediction == self.label


def effective_sigma(model: nn.Module, extra_sigma: float = 0.0) -> float:
    """``sqrt(extra_sigma^2 + SIGMA^2 / T)`` for a ``gaussian:SIGMA`` SNN, else ``extra_sigma``;
    a one-line error when there is no Gaussian noise to certify with."""
    if not extra_sigma >= 0:
        raise ConvertSNNError(f"--sigma must be at least 0, got {extra_sigma}")
    encoder = getattr(model, "encoder", None)
    variance = extra_sigma**2
    if isinstance(model, SpikingNetwork) and isinstance(encoder, GaussianEncoder):
        variance += encoder.sigma**2 / model.timesteps
    if variance == 0:
        name = f"an SNN with the '{encoder}' encoder" if encoder is not None else "this model"
        raise ConvertSNNError(
            f"nothing to certify with: {name} adds no Gaussian noise; certify a model "
            "finetuned with --encoder gaussian:SIGMA, or pass --sigma to add noise"
        )
    return math.sqrt(variance)


def lower_confidence_bound(count: int, draws: int, alpha: float) -> float:
    """One-sided Clopper-Pearson lower bound on a binomial proportion at level ``1 - alpha``."""
    return float(beta.ppf(alpha, count, draws - count + 1)) if count > 0 else 0.0


def largest_radius(sigma: float, draws: int, alpha: float) -> float:
    """The largest radius CERTIFY can return with ``draws`` samples (all of them ``cA``)."""
    return sigma * float(norm.ppf(lower_confidence_bound(draws, draws, alpha)))


def sample_counts(
    model: nn.Module, x: torch.Tensor, draws: int, classes: int, extra_sigma: float, batch_size: int
) -> torch.Tensor:
    """How often each class wins among ``draws`` noisy predictions for one image ``x``
    ``[C, H, W]``; ``[classes]`` counts."""
    counts = torch.zeros(classes, dtype=torch.long, device=x.device)
    remaining = draws
    with torch.no_grad():
        while remaining > 0:
            size = min(batch_size, remaining)
            batch = x.unsqueeze(0).expand(size, *x.shape)
            if extra_sigma > 0:
                batch = batch + extra_sigma * torch.randn_like(batch)
            predictions = model(batch).argmax(dim=1)
            counts += torch.bincount(predictions, minlength=classes)
            remaining -= size
    return counts


def certify_one(
    model: nn.Module,
    x: torch.Tensor,
    label: int,
    n0: int,
    n: int,
    alpha: float,
    sigma: float,
    classes: int,
    extra_sigma: float = 0.0,
    batch_size: int = 1000,
    index: int = 0,
) -> Certificate:
    """Cohen et al.'s CERTIFY for one image (``sigma``: the effective noise std)."""
    selection = sample_counts(model, x, n0, classes, extra_sigma, batch_size)
    top = int(selection.argmax())
    count = int(sample_counts(model, x, n, classes, extra_sigma, batch_size)[top])
    p_lower = lower_confidence_bound(count, n, alpha)
    if p_lower < 0.5:
        return Certificate(index, label, ABSTAIN, 0.0, count, n, p_lower)
    return Certificate(index, label, top, sigma * float(norm.ppf(p_lower)), count, n, p_lower)


def image_seed(seed: int, index: int) -> int:
    """The seed of image ``index``'s draws (so any subset of images reproduces)."""
    return (seed * 1_000_003 + index) % (2**63)


def check_settings(n0: int, n: int, alpha: float, batch_size: int) -> None:
    """One-line errors for impossible CERTIFY settings."""
    for name, value in (("n0", n0), ("n", n), ("batch size", batch_size)):
        if int(value) != value or value < 1:
            raise ConvertSNNError(f"{name} must be a positive integer, got {value}")
    if not 0 < alpha < 0.5:
        raise ConvertSNNError(f"alpha must be in (0, 0.5), e.g. 0.001; got {alpha}")


def certify_dataset(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    n0: int = 100,
    n: int = 10_000,
    alpha: float = 0.001,
    extra_sigma: float = 0.0,
    batch_size: int = 1000,
    seed: int = 0,
    indices: Sequence[int] | None = None,
    done: Sequence[Certificate] = (),
    on_certificate: Callable[[Certificate], None] | None = None,
    progress: bool = True,
) -> list[Certificate]:
    """CERTIFY every image (``indices``: their numbers in the dataset, for seeds and reports).

    ``done`` holds certificates of a previous, interrupted run (skipped); ``on_certificate`` is
    called with each new one (e.g. to append it to a state file).
    """
    check_settings(n0, n, alpha, batch_size)
    sigma = effective_sigma(model, extra_sigma)
    indices = list(range(len(images))) if indices is None else list(indices)
    classes = int(model(images[:1]).shape[1]) if len(images) else 0
    model.eval()
    known = {c.index: c for c in done}
    certificates = []
    for x, label, index in tqdm(
        zip(images, labels.tolist(), indices, strict=True), total=len(images),
        desc="certify", disable=not progress, dynamic_ncols=True,
    ):  # fmt: skip
        if index in known:
            certificates.append(known[index])
            continue
        torch.manual_seed(image_seed(seed, index))
        certificate = certify_one(model, x, label, n0, n, alpha, sigma, classes, extra_sigma,
                                  batch_size, index)  # fmt: skip
        certificates.append(certificate)
        if on_certificate is not None:
            on_certificate(certificate)
    return certificates


def certified_accuracy(certificates: Sequence[Certificate], radius: float) -> float:
    """Share of images predicted correctly with a certified radius of at least ``radius``."""
    if not certificates:
        return 0.0
    hits = sum(c.correct and c.radius >= radius for c in certificates)
    return hits / len(certificates)


def accuracy_curve(
    certificates: Sequence[Certificate], radii: Sequence[float]
) -> list[tuple[float, float]]:
    """``(radius, certified accuracy)`` for each radius."""
    return [(float(r), certified_accuracy(certificates, r)) for r in radii]


def plot_certified_accuracy(curves: dict[str, Sequence[Certificate]], path, title: str = ""):
    """Certified accuracy against radius (a step curve per entry of ``curves``) as a PNG."""
    from convertsnn.eval.plots import _pyplot, _save

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for label, certificates in curves.items():
        radii = sorted({0.0, *(c.radius for c in certificates if c.correct)})
        accuracy = [100 * certified_accuracy(certificates, r) for r in radii]
        ax.step(radii, accuracy, where="pre", label=label)
    ax.set(xlabel="L2 radius (pixels in [0, 1])", ylabel="certified accuracy (%)",
           ylim=(0, 100), title=title or "certified accuracy vs radius")  # fmt: skip
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)
