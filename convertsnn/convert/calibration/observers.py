"""Record activation statistics of an ANN over calibration batches (no_grad, progress bar)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import ClassVar

import torch
from torch import fx
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from convertsnn.convert.calibration.registry import CalibrationMethod
from convertsnn.errors import ConvertSNNError


class ActivationObserver:
    """Collects, per activation output, the running max (overall and per channel, dimension 1)
    and a random sample of positive values; ``per_channel=True`` also samples each channel."""

    def __init__(
        self, sample_per_batch: int = 20_000, seed: int = 0, per_channel: bool = False
    ) -> None:
        self.sample_per_batch = sample_per_batch
        self.generator = torch.Generator().manual_seed(seed)
        self.per_channel = per_channel
        self.max: torch.Tensor | None = None
        self.channel_max: torch.Tensor | None = None
        self.samples: list[torch.Tensor] = []
        self.channel_samples: list[torch.Tensor] = []

    def update(self, out: torch.Tensor) -> None:
        out = out.detach().float()
        batch_max = out.max()
        self.max = batch_max if self.max is None else torch.maximum(self.max, batch_max)
        dims = [d for d in range(out.dim()) if d != 1]
        chan = out.amax(dim=dims) if out.dim() > 1 else out.amax().view(1)
        self.channel_max = (
            chan if self.channel_max is None else torch.maximum(self.channel_max, chan)
        )
        self.samples.append(self._positive_sample(out.reshape(-1)))
        if self.per_channel:
            self.channel_samples.append(self._channel_sample(out))

    def _positive_sample(self, flat: torch.Tensor) -> torch.Tensor:
        """Up to ``sample_per_batch`` positive values of ``flat``, drawn uniformly with
        replacement. Random positions are drawn first (enough to hold that many positive values
        with near certainty) and only those are read, instead of compacting every positive
        value of the batch."""
        positives = int((flat > 0).sum())
        if positives <= self.sample_per_batch:
            return flat[flat > 0].cpu()
        draws = math.ceil(1.2 * self.sample_per_batch * flat.numel() / positives) + 100
        idx = torch.randint(flat.numel(), (draws,), generator=self.generator)
        values = flat[idx.to(flat.device)].cpu()
        return values[values > 0][: self.sample_per_batch]

    def _channel_sample(self, out: torch.Tensor) -> torch.Tensor:
        """``[C, n]``: every channel's values at ``n <= sample_per_batch / 4`` random positions
        (the same for all channels; grid ``[B, C, positions]``), read without copying the batch."""
        grid = out.reshape(1, 1, -1) if out.dim() == 1 else out.reshape(*out.shape[:2], -1)
        count = grid.shape[0] * grid.shape[2]
        if count <= self.sample_per_batch // 4:
            return grid.transpose(0, 1).reshape(grid.shape[1], -1).cpu()
        idx = torch.randint(count, (self.sample_per_batch // 4,), generator=self.generator)
        idx = idx.to(out.device)
        return grid[idx // grid.shape[2], :, idx % grid.shape[2]].t().cpu()

    def percentile(self, p: float) -> torch.Tensor:
        """The p-th percentile (0-100) of the positive activations seen (0 if none)."""
        values = torch.cat(self.samples) if self.samples else torch.zeros(0)
        if values.numel() == 0:
            return torch.tensor(0.0)
        return torch.quantile(values, p / 100.0)

    def channel_percentile(self, p: float) -> torch.Tensor:
        """Per channel, the p-th percentile of its positive activations (NaN where none)."""
        values = torch.cat(self.channel_samples, dim=1)
        limit = 2**23 // values.shape[0]  # torch.quantile's input size limit, with margin
        if values.shape[1] > limit:
            values = values[:, torch.randperm(values.shape[1], generator=self.generator)[:limit]]
        values = values.masked_fill(values <= 0, float("nan"))
        return torch.nanquantile(values, p / 100.0, dim=1)


def run_ann(
    ann: fx.GraphModule,
    batches: Iterable,
    device: torch.device,
    desc: str,
    total: int | None = None,
) -> None:
    """Run ``ann`` (eval mode, no_grad, progress bar) over ``(images, labels)`` batches; images
    it cannot run on stop with one line."""
    ann.eval().to(device)
    with torch.no_grad():
        for x, _ in tqdm(batches, total=total, desc=desc, leave=False):
            try:
                ann(x.to(device))
            except RuntimeError as err:  # e.g. images too small or with the wrong channels
                raise ConvertSNNError(
                    f"the model cannot run on calibration images of shape "
                    f"{tuple(x.shape[1:])} ({str(err).strip().splitlines()[0]}); pass "
                    "images of the size and channels the model was made for"
                ) from None


def observe_activations(
    ann: fx.GraphModule,
    activations: list[str],
    loader: DataLoader,
    device: torch.device,
    desc: str = "calibrating",
    per_channel: bool = False,
) -> dict[str, ActivationObserver]:
    """Run ``ann`` over ``loader`` and observe the output of each activation module."""
    if loader is None:
        raise ConvertSNNError("this calibration needs data: pass calibration images (--calib)")
    observers = {name: ActivationObserver(per_channel=per_channel) for name in activations}
    hooks = [
        ann.get_submodule(name).register_forward_hook(
            lambda _m, _i, out, obs=observers[name]: obs.update(out)
        )
        for name in activations
    ]
    try:
        run_ann(ann, loader, device, desc)
    finally:
        for hook in hooks:
            hook.remove()
    if observers and observers[activations[0]].max is None:
        raise ConvertSNNError("the calibration data is empty; pass at least one image")
    return observers


class ActivationStatistic(CalibrationMethod):
    """A method whose threshold for each activation is one statistic of its observed outputs.

    Subclasses write :meth:`statistic`; ``per_channel`` makes the observers sample each channel.
    The observers of the last :meth:`thresholds` call stay in ``observers`` (for
    :meth:`correct_snn`).
    """

    per_channel: ClassVar[bool] = False

    def statistic(self, observer: ActivationObserver) -> torch.Tensor:
        """The threshold (scalar or per-channel tensor) for one observed activation."""
        raise NotImplementedError

    def thresholds(
        self,
        ann: fx.GraphModule,
        activations: list[str],
        loader: DataLoader | None,
        device: torch.device,
    ) -> dict[str, torch.Tensor]:
        self.observers = observe_activations(
            ann, activations, loader, device, per_channel=self.per_channel
        )
        return {name: self.statistic(obs) for name, obs in self.observers.items()}
