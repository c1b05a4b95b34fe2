"""Square attack: black-box random search with square-shaped updates (Andriushchenko et al.,
ECCV 2020). It only queries the model's logits, so gradient masking cannot stop it.

Each iteration proposes a change inside a random square window (side shrinking with the
schedule of the paper, from ``p_init`` of the image area) and keeps it when the margin
``z_y - max_{j != y} z_j`` decreases. L-inf: the window gets a random ``+-eps`` per channel,
starting from vertical stripes. L2: the perturbation mass of two windows is moved into the first
with a "meta pseudo-Gaussian" shape of random sign per channel, starting from a grid of such
shapes, always on the eps-sphere (Alg. 3 of the paper, written anew).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from convertsnn.attacks.base import Attack, margin
from convertsnn.errors import ConvertSNNError

_SCHEDULE = ((10, 1), (50, 2), (200, 4), (500, 8), (1000, 16), (2000, 32), (4000, 64),
             (6000, 128), (8000, 256))  # fmt: skip


def window_fraction(p_init: float, query: int, queries: int) -> float:
    """Fraction of the image a window covers at ``query`` of ``queries`` (paper's schedule)."""
    scaled = int(query / queries * 10000)
    divisor = 512
    for bound, div in _SCHEDULE:
        if scaled <= bound:
            divisor = div
            break
    return p_init / divisor


def pseudo_gaussian(rows: int, cols: int) -> torch.Tensor:
    """Concentric rectangles, each adding ``1/(k+1)^2`` (k from the centre out), unit L2 norm."""
    cr, cc = rows // 2, cols // 2
    r = (torch.arange(rows) - cr).abs()
    c = (torch.arange(cols) - cc).abs()
    dist = torch.maximum(r[:, None], c[None, :])
    rings = max(cr, cc) + 1
    weights = 1.0 / torch.arange(1, rings + 1, dtype=torch.float32) ** 2
    tail = weights.flip(0).cumsum(0).flip(0)  # tail[d] = sum_{k >= d} weights[k]
    pattern = tail[dist.clamp(max=rings - 1)]
    return pattern / pattern.norm()


def meta_pseudo_gaussian(side: int) -> torch.Tensor:
    """Two pseudo-Gaussian halves of opposite sign, randomly transposed, unit L2 norm."""
    top = side // 2
    pattern = torch.cat([pseudo_gaussian(max(top, 1), side)[:top],
                         -pseudo_gaussian(side - top, side)])  # fmt: skip
    pattern = pattern / pattern.norm()
    return pattern.T if torch.rand(()) < 0.5 else pattern


def window_masks(batch: int, size: tuple[int, int], side: int, device) -> tuple[torch.Tensor, ...]:
    """Random windows, one per sample: (mask [B, H, W], row offsets [B, H], col offsets [B, W])."""
    height, width = size
    top = torch.randint(0, height - side + 1, (batch,), device=device)
    left = torch.randint(0, width - side + 1, (batch,), device=device)
    rows = torch.arange(height, device=device)[None, :] - top[:, None]
    cols = torch.arange(width, device=device)[None, :] - left[:, None]
    inside_r = (rows >= 0) & (rows < side)
    inside_c = (cols >= 0) & (cols < side)
    return inside_r[:, :, None] & inside_c[:, None, :], rows, cols


class Square(Attack):
    """Square attack (L-inf or L2), margin loss, ``queries`` model evaluations per sample.

    Args:
        model, eps, norm, eot: see :class:`Attack` (with ``eot > 1`` each query averages the
            logits of ``eot`` draws).
        queries: query budget per sample (AutoAttack: 5000).
        p_init: initial window area as a fraction of the image (AutoAttack: 0.8).
        nearest: share of each batch that gets the queries: the samples closest to the decision
            boundary (smallest margin at the starting point); the others keep that point. On
            shattered SNN outputs the breaks of a long Square run come from the survivors nearest
            to the boundary (docs/evaluation.md), so ``nearest=0.25`` buys them 4x the queries.

    Samples stop using queries once misclassified (by every draw). Example:
    ``Square(snn, 8/255, queries=5000)``.
    """

    name = "square"
    blackbox = True

    def __init__(
        self,
        model: nn.Module,
        eps: float,
        norm: str = "linf",
        eot: int = 1,
        queries: int = 5000,
        p_init: float = 0.8,
        nearest: float = 1.0,
    ) -> None:
        super().__init__(model, eps, norm, eot)
        if queries < 1:
            raise ConvertSNNError(f"queries must be >= 1, got {queries}")
        if not 0 < p_init <= 1:
            raise ConvertSNNError(f"p_init must be in (0, 1], got {p_init}")
        if not 0 < nearest <= 1:
            raise ConvertSNNError(f"nearest must be in (0, 1], got {nearest}")
        self.queries = int(queries)
        self.p_init = float(p_init)
        self.nearest = float(nearest)

    def outcome(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(margin, correct)`` per sample: ``z_y - max_{j != y} z_j`` of the (EOT-mean)
        logits, the loss the search lowers, and the share of correct draws (see
        :meth:`Attack.judge`; 0: broken)."""
        logits, correct = self.judge(x, y)
        return margin(logits, y), correct

    def perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ConvertSNNError("the Square attack needs image batches [B, C, H, W]")
        x_best = self.project(x + self.initial_delta(x), x)
        margin, correct = self.outcome(x_best, y)
        searching = torch.zeros_like(margin, dtype=torch.bool)
        searching[margin.argsort()[: math.ceil(self.nearest * len(x))]] = True
        for query in range(1, self.queries):
            active = (searching & (correct > 0)).nonzero().squeeze(1)
            if len(active) == 0:
                break
            xa, best = x[active], x_best[active]
            p = window_fraction(self.p_init, query, self.queries)
            candidate = self.project(xa + self.propose(best - xa, p), xa)
            new_margin, new_correct = self.outcome(candidate, y[active])
            better = new_margin < margin[active]
            x_best[active[better]] = candidate[better]
            margin[active[better]] = new_margin[better]
            correct[active[better]] = new_correct[better]
        return x_best

    def initial_delta(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        if self.norm == "linf":  # vertical stripes of random sign
            return self.eps * torch.randint(0, 2, (b, c, 1, w), device=x.device).mul(2).sub(1)
        side = max(h // 5, 1)
        delta = torch.zeros_like(x)
        for top in range((h % side) // 2, h - side + 1, side):
            for left in range((w % side) // 2, w - side + 1, side):
                signs = torch.randint(0, 2, (b, c, 1, 1), device=x.device).mul(2).sub(1)
                pattern = meta_pseudo_gaussian(side).to(x.device)
                delta[:, :, top : top + side, left : left + side] += pattern * signs
        norms = delta.flatten(1).norm(dim=1).clamp(min=1e-12).view(-1, 1, 1, 1)
        return delta / norms * self.eps

    def propose(self, delta: torch.Tensor, p: float) -> torch.Tensor:
        """A new perturbation from ``delta`` with one random window changed."""
        b, c, h, w = delta.shape
        if self.norm == "linf":
            side = min(max(round(math.sqrt(p * h * w)), 1), h - 1 if h > 1 else 1)
            mask, _, _ = window_masks(b, (h, w), side, delta.device)
            signs = torch.randint(0, 2, (b, c, 1, 1), device=delta.device).mul(2).sub(1)
            return torch.where(mask[:, None], self.eps * signs.to(delta.dtype), delta)
        side = min(max(round(math.sqrt(p * h * w)), 3) | 1, h, w)  # odd, at least 3
        mask1, rows, cols = window_masks(b, (h, w), side, delta.device)
        mask2, _, _ = window_masks(b, (h, w), side, delta.device)
        both = (mask1 | mask2)[:, None]
        pattern = meta_pseudo_gaussian(side).to(delta.device)
        shaped = pattern[rows.clamp(0, side - 1)[:, :, None], cols.clamp(0, side - 1)[:, None, :]]
        signs = torch.randint(0, 2, (b, c, 1, 1), device=delta.device).mul(2).sub(1)
        new = shaped[:, None] * signs * mask1[:, None]
        old = delta * mask1[:, None]
        old = old / old.flatten(2).norm(dim=2).clamp(min=1e-12)[:, :, None, None]
        new = new + old
        # per channel: the mass of both windows plus an equal share of the unused budget
        unused = (self.eps**2 - delta.flatten(1).pow(2).sum(1)).clamp(min=0).view(-1, 1)
        mass = (delta * both).flatten(2).pow(2).sum(2) + unused / c
        new = new / new.flatten(2).norm(dim=2).clamp(min=1e-12)[:, :, None, None]
        new = new * mass.sqrt()[:, :, None, None]
        return torch.where(mask1[:, None], new, torch.where(both, torch.zeros_like(delta), delta))
