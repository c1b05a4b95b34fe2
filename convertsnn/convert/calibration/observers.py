"""Record activation statistics of an ANN over calibration batches (no_grad, progress bar)."""

from __future__ import annotations

import torch
from torch import fx
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from convertsnn.errors import ConvertSNNError


class ActivationObserver:
    """Collects, per activation output, the running max and a random sample of positive values.

    ``per_channel=True`` also keeps the max per channel (dimension 1).
    """

    def __init__(self, sample_per_batch: int = 20_000, seed: int = 0) -> None:
        self.sample_per_batch = sample_per_batch
        self.generator = torch.Generator().manual_seed(seed)
        self.max: torch.Tensor | None = None
        self.channel_max: torch.Tensor | None = None
        self.samples: list[torch.Tensor] = []

    def update(self, out: torch.Tensor) -> None:
        out = out.detach().float()
        batch_max = out.max()
        self.max = batch_max if self.max is None else torch.maximum(self.max, batch_max)
        dims = [d for d in range(out.dim()) if d != 1]
        chan = out.amax(dim=dims) if out.dim() > 1 else out.amax().view(1)
        self.channel_max = (
            chan if self.channel_max is None else torch.maximum(self.channel_max, chan)
        )
        positive = out[out > 0].cpu()
        if positive.numel() > self.sample_per_batch:
            idx = torch.randint(
                positive.numel(), (self.sample_per_batch,), generator=self.generator
            )
            positive = positive[idx]
        self.samples.append(positive)

    def percentile(self, p: float) -> torch.Tensor:
        """The p-th percentile (0-100) of the positive activations seen (0 if none)."""
        values = torch.cat(self.samples) if self.samples else torch.zeros(0)
        if values.numel() == 0:
            return torch.tensor(0.0)
        return torch.quantile(values, p / 100.0)


def observe_activations(
    ann: fx.GraphModule,
    activations: list[str],
    loader: DataLoader,
    device: torch.device,
    desc: str = "calibrating",
) -> dict[str, ActivationObserver]:
    """Run ``ann`` over ``loader`` and observe the output of each activation module."""
    if loader is None:
        raise ConvertSNNError("this calibration needs data: pass calibration images (--calib)")
    observers = {name: ActivationObserver() for name in activations}
    hooks = [
        ann.get_submodule(name).register_forward_hook(
            lambda _m, _i, out, obs=observers[name]: obs.update(out)
        )
        for name in activations
    ]
    ann.eval().to(device)
    try:
        with torch.no_grad():
            for x, _ in tqdm(loader, desc=desc, leave=False):
                ann(x.to(device))
    finally:
        for hook in hooks:
            hook.remove()
    if observers and observers[activations[0]].max is None:
        raise ConvertSNNError("the calibration data is empty; pass at least one image")
    return observers
