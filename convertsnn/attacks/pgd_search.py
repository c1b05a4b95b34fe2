"""PGD, then a greedy local random search from its end point (for shattered SNN outputs).

A low-T SNN's logits are spike counts: piecewise constant in the input, with a jump wherever
one spike appears or vanishes. On the zoo's finetuned CIFAR-10 SNNs an input change of 0.1/255
moves the logit margin as much as a full gradient step of 2/255 lowers it
(``benchmarks/results/masking.md``): the output is *shattered* (Athalye et al. 2018). A
surrogate gradient follows only the smooth trend below the jumps; every extra model evaluation
near a low point of that trend is another chance to land on the wrong side of a jump, which is
why Square (Andriushchenko et al. 2020), pure random search with the margin loss, beats
gradient attacks on these models. This attack does both: PGD moves to a low point of the trend
(cheap in gradient steps), then ``queries`` forward-only proposals mirror a random ``flip``
share of the perturbation's coordinates (``delta_i -> -delta_i``, so the point stays in the
L-inf or L2 ball) and keep a proposal when it lowers the margin ``z_y - max_{j != y} z_j``
(Square's acceptance rule, with its window proposals replaced by scattered sign flips).

With ``give_up`` > 0 the search stops early on samples it is unlikely to break: after
:data:`WARMUP` proposals, a sample whose margin is more than ``give_up`` times its mean absolute
margin change per proposal (how far one proposal moves it) is left alone. On the shattered
CIFAR-10 SNN every sample a 1000-proposal search broke after its first 20 proposals sat below
4.1 such steps from the boundary; on the robust MNIST SNN, where the search broke nothing, 80 %
of the survivors sat above 6 (``benchmarks/results/masking.md``). So a large budget goes to the
samples near a jump and costs little on robust samples.
"""

from __future__ import annotations

import torch
from torch import nn

from convertsnn.attacks.base import margin
from convertsnn.attacks.pgd import PGD
from convertsnn.errors import ConvertSNNError

WARMUP = 20


class PGDSearch(PGD):
    """:class:`PGD` followed by a greedy local random search on the samples it did not break.

    Args:
        model, eps, norm, eot: see :class:`PGD`; ``pgd``: its other arguments (``steps``,
            ``step``, ``restarts``, ``loss``, ``gradient_mode``, ...).
        queries: forward-only proposals per surviving sample after PGD (default 100).
        flip: share of the perturbation's coordinates mirrored per proposal (default 0.02).
        give_up: after :data:`WARMUP` proposals, stop on a sample whose margin exceeds
            ``give_up`` times its mean absolute margin change per proposal (0: never stop).

    Example: ``PGDSearch(snn, eps=2/255, step=0.25, gradient_mode="bptt:sigmoid:4")(x, y)``.
    """

    name = "pgd-search"

    def __init__(
        self,
        model: nn.Module,
        eps: float,
        norm: str = "linf",
        eot: int = 1,
        queries: int = 100,
        flip: float = 0.02,
        give_up: float = 0.0,
        **pgd,
    ) -> None:
        super().__init__(model, eps, norm, eot, **pgd)
        if queries < 0:
            raise ConvertSNNError(f"queries must be >= 0, got {queries}")
        if not 0 < flip <= 1:
            raise ConvertSNNError(f"flip must be in (0, 1], got {flip}")
        if give_up < 0:
            raise ConvertSNNError(f"give_up must be >= 0 (0: search every query), got {give_up}")
        self.queries = int(queries)
        self.flip = float(flip)
        self.give_up = float(give_up)

    def perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.search(super().perturb(x, y), x, y)

    def search(self, x_best: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Greedy random search from ``x_best``: mirror a random ``flip`` share of the
        perturbation's coordinates, keep the proposal where it lowers the margin."""
        logits, correct = self.judge(x_best, y)
        best = margin(logits, y)
        moved = torch.zeros_like(best)  # summed |margin change| per proposal, for give_up
        for query in range(self.queries):
            searching = correct > 0
            if self.give_up and query >= WARMUP:
                searching &= best <= self.give_up * moved / query
            active = searching.nonzero().squeeze(1)
            if len(active) == 0:
                break
            delta = x_best[active] - x[active]
            mirrored = torch.rand_like(delta) < self.flip
            candidate = self.project(x[active] + torch.where(mirrored, -delta, delta), x[active])
            logits, proposed_correct = self.judge(candidate, y[active])
            proposed = margin(logits, y[active])
            moved[active] += (proposed - best[active]).abs()
            better = proposed < best[active]
            x_best[active[better]] = candidate[better]
            best[active[better]] = proposed[better]
            correct[active[better]] = proposed_correct[better]
        return x_best
