"""``synthetic``: data-free calibration on images synthesised from the ANN's BatchNorm statistics
(ZeroQ: Cai et al., CVPR 2020, "ZeroQ: a novel zero shot quantization framework").

Every BatchNorm layer stores, per channel, the mean and standard deviation of its output on the
training data (``node.meta["bn_stats"]`` of the layer it was folded into). Starting from random
images, Adam changes the pixels until the batch statistics of every such layer's output match the
stored ones: ``sum_l mean_c (mu_lc - beta_lc)^2 + (sigma_lc - gamma_lc)^2``. The images
(``images``, 128, through a sigmoid so they stay in [0, 1]; ``steps`` 300 at learning rate 0.1)
then stand in for calibration data, labelled by the ANN's classes, and BASE calibrates on them
(default ``delay:biascal:mse:channel=1,scale=0.7``: on synthetic images the ``mse`` thresholds
come out too high for the real ones, and the 0.7 scale gave ResNet-20 60.3 / 79.3 / 88.3 % at
T = 4 / 8 / 16 against 54.9 / 72.9 / 85.4 % unscaled, and ResNet-56 41.4 / 78.3 % at T = 8 / 16
against 36.8 / 66.7 %; one threshold per channel, ``channel=1``, then 62.6 / 81.2 / 89.7 % and
48.0 / 82.5 %; 1,000 test images, docs/conversion.md). Unlike ``bnstats``,
which propagates Gaussian statistics through the graph, the synthetic images carry the real
dependencies between channels and layers, so methods that simulate the SNN (bias calibration,
the delayed readout) work without data.

More images: ``images=N`` synthesises them in batches of 128, each batch matched to the
statistics on its own (its own random start), so every batch looks like the training data as a
whole. Methods that fit many parameters on the images gain from them: weight calibration
(``wcal``) on ResNet-56 at T = 8 read 67.4 % on 128 synthetic images and 71.0 % on 512 (3.2
points below ``wcal`` on 512 real images; 1,000 test images,
benchmarks/results/fidelity_deep_synthetic512.md); methods that only set thresholds and biases
did not (256 images changed nothing on ResNet-20, benchmarks/results/synthetic_calibration.md).

Cost: ``steps`` forward and backward passes of the ANN on every batch of 128 images (measured
here, one thread with other jobs running: ResNet-20 about 2 minutes of CPU, ResNet-56 about 6,
per batch). It needs BatchNorm statistics and the model's input size (recorded by every
importer); calibration images, if given, are not used.

Spec: ``synthetic``, ``synthetic:BASE`` (e.g. ``synthetic:mse``), or with options first,
``synthetic:images=512,steps=300:BASE`` (defaults 128 images, 300 steps).
"""

from __future__ import annotations

import warnings

import torch
from torch import fx
from torch.utils.data import DataLoader

from convertsnn.convert.calibration.composed import OnTopOf
from convertsnn.convert.calibration.registry import parse_options, register_calibration
from convertsnn.errors import ConvertSNNError

SYNTHESIS_BATCH = 128  # images whose batch statistics are matched together


def bn_statistics(ann: fx.GraphModule) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """``(module name, mean, std)`` of every layer that absorbed a BatchNorm, in graph order."""
    return [(node.target, *node.meta["bn_stats"]) for node in ann.graph.nodes
            if node.op == "call_module" and "bn_stats" in node.meta]  # fmt: skip


def synthesise_images(
    ann: fx.GraphModule,
    input_size: tuple[int, ...],
    images: int,
    steps: int,
    lr: float,
    device: torch.device,
    seed: int = 0,
) -> torch.Tensor:
    """``images`` images in [0, 1] whose per-layer batch statistics match the BatchNorm ones."""
    stats = bn_statistics(ann)
    if not stats:
        raise ConvertSNNError(
            "synthetic calibration needs BatchNorm statistics and this model has none; pass "
            "calibration images (--calib) or use the data-free bnmse"
        )
    outputs: dict[str, torch.Tensor] = {}
    hooks = [
        ann.get_submodule(name).register_forward_hook(
            lambda _m, _i, out, name=name: outputs.__setitem__(name, out)
        )
        for name, _, _ in stats
    ]
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(images, *input_size, generator=generator).to(device).requires_grad_()
    optimiser = torch.optim.Adam([logits], lr=lr)
    ann.eval()
    try:
        for _ in range(steps):
            ann(torch.sigmoid(logits))
            loss = logits.new_zeros(())
            for name, mean, std in stats:
                out = outputs[name]
                dims = [0, *range(2, out.dim())]
                batch_mean = out.mean(dims)
                batch_std = out.var(dims, unbiased=False).add(1e-8).sqrt()
                loss = loss + (batch_mean - mean.to(out)).pow(2).mean()
                loss = loss + (batch_std - std.to(out)).pow(2).mean()
            (grad,) = torch.autograd.grad(loss, [logits])
            logits.grad = grad
            optimiser.step()
    finally:
        for hook in hooks:
            hook.remove()
    return torch.sigmoid(logits).detach()


@register_calibration
class SyntheticImages(OnTopOf):
    """``synthetic[:BASE]``: BASE calibrated on images synthesised from BatchNorm statistics."""

    name = "synthetic"
    needs_data = False
    default_base = "delay:biascal:mse:channel=1,scale=0.7"
    depends_on_timesteps = True
    images = 128
    steps = 300
    lr = 0.1
    batch = 64

    def __init__(self, arg: str | None = None) -> None:
        first, _, rest = (arg or "").partition(":")
        if "=" in first:  # options before the base: images=N,steps=N
            defaults = {"images": self.images, "steps": self.steps}
            options = parse_options(self.name, first, defaults)
            if min(options.values()) < 1:
                raise ConvertSNNError(
                    f"calibration 'synthetic:{first}' needs at least one image and one step, "
                    "e.g. synthetic:images=512:BASE"
                )
            self.images, self.steps = options["images"], options["steps"]
            arg = rest or None
        super().__init__(arg)

    def prepare_ann(
        self, ann: fx.GraphModule, loader: DataLoader | None, device: torch.device
    ) -> fx.GraphModule:
        if loader is not None:
            warnings.warn(
                "synthetic calibration does not use the calibration images given: it "
                "synthesises its own from the BatchNorm statistics",
                stacklevel=2,
            )
        if not self.input_size:
            raise ConvertSNNError(
                "synthetic calibration needs the model's input size; give it with "
                "--input-size C,H,W (or pass calibration images with --calib)"
            )
        size = tuple(self.input_size)
        x = torch.cat([
            synthesise_images(ann, size, min(SYNTHESIS_BATCH, self.images - start), self.steps,
                              self.lr, device, seed=start // SYNTHESIS_BATCH)
            for start in range(0, self.images, SYNTHESIS_BATCH)
        ])  # fmt: skip
        with torch.no_grad():
            y = torch.cat([ann(b).argmax(1) for b in x.split(self.batch)])
        self.batches = [(x[i : i + self.batch].cpu(), y[i : i + self.batch].cpu())
                        for i in range(0, len(x), self.batch)]  # fmt: skip
        return super().prepare_ann(ann, loader, device)

    def base_loader(self, loader: DataLoader | None) -> list:
        return self.batches

    def correct_on_top(self, snn, loader: DataLoader | None, device: torch.device) -> None:
        """Nothing: BASE's correction on the synthetic images is the whole method."""

    def __str__(self) -> str:
        options = []
        if self.images != SyntheticImages.images:
            options.append(f"images={self.images}")
        if self.steps != SyntheticImages.steps:
            options.append(f"steps={self.steps}")
        return f"{self.name}:" + (",".join(options) + ":" if options else "") + str(self.base)
