"""Max-pooling in converted SNNs: four policies measured on a real CIFAR-10 VGG with max-pools.

A VGG-11-BN at quarter width with max-pooling is trained here (it takes minutes on a CPU; no
pretrained VGG is available offline) on the first --train-images images of the lossy
cifar10_jpeg.npz training set, then converted with the same thresholds under each policy and
evaluated on the 1,000 lossless test images of cifar10_lossless_subset.npz at every T:

- ``spiking`` (convertsnn's policy): :class:`~convertsnn.snn.pooling.SpikingMaxPool2d` passes on
  the input with the largest running spike count;
- ``per-step max``: a plain max-pool of each step's ``theta * spikes`` (the OR of the trains);
- ``pool currents``: the max-pool moved in front of the spiking neuron, taking the max of each
  step's input currents (exact in the ANN, where max and ReLU commute; SpikingJelly's
  ``pre_spike_maxpool``);
- ``avg-pool``: every max-pool replaced by a 2x2 average pool in the trained ANN (no
  retraining), which costs ANN accuracy, then converted.

    OMP_NUM_THREADS=2 python benchmarks/maxpool_policy.py --data-dir ../shared/data

Writes benchmarks/results/maxpool_policy.{json,md}. The trained ANN is cached in --work-dir.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from convertsnn.convert import convert
from convertsnn.convert.calibration.qcfs import augment
from convertsnn.data import load_dataset
from convertsnn.eval.report import format_table, write_json
from convertsnn.importers.base import Preprocessing, with_normalization
from convertsnn.models import create_model
from convertsnn.snn.neurons import IFNeuron
from convertsnn.snn.pooling import SpikingMaxPool2d
from convertsnn.snn.serialize import atomic_write, package_versions

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from fidelity_cifar10 import plain_accuracy, prefix_accuracy, snn_steps  # noqa: E402

CIFAR = Preprocessing((0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616), (3, 32, 32), 10)
ARCH = {"width": 0.25, "hidden": 128, "pool": "max"}


def train_vgg(args) -> nn.Module:
    """VGG-11-BN (quarter width, max-pool), SGD + cosine, crop/flip augmentation, cached."""
    path = args.work_dir / f"vgg11_maxpool_{args.train_images}_{args.epochs}ep_seed{args.seed}.pt"
    net = create_model("vgg11_bn", **ARCH)
    if path.is_file():
        net.load_state_dict(torch.load(path, weights_only=True))
        return net.eval()
    torch.manual_seed(args.seed)
    data = load_dataset(str(args.data_dir / "cifar10_jpeg.npz"), "train").subset(
        0, args.train_images
    )
    images, labels = data.tensors()
    model = with_normalization(net, CIFAR)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    steps = args.epochs * -(-len(labels) // 128)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    generator = torch.Generator().manual_seed(args.seed)
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(labels), generator=generator)
        bar = tqdm(order.split(128), desc=f"train VGG {epoch + 1}/{args.epochs}", leave=False)
        for index in bar:
            loss = F.cross_entropy(model(augment(images[index], generator)), labels[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: torch.save(net.state_dict(), tmp))
    return net.eval()


def plain_maxpool(pool: SpikingMaxPool2d) -> nn.MaxPool2d:
    """A per-step max-pool with the same settings."""
    return nn.MaxPool2d(pool.kernel_size, pool.stride, pool.padding, pool.dilation, pool.ceil_mode)


def per_step_max(snn) -> None:
    """Replace every SpikingMaxPool2d of ``snn`` by a per-step max-pool (in place)."""
    for name, module in list(snn.body.named_modules()):
        if isinstance(module, SpikingMaxPool2d):
            snn.body.add_submodule(name, plain_maxpool(module))


def pool_currents(snn) -> None:
    """Move each max-pool that follows a neuron in front of it: max of the input currents."""
    gm: fx.GraphModule = snn.body
    for pool in list(gm.graph.nodes):
        if pool.op != "call_module" or not isinstance(
            gm.get_submodule(pool.target), SpikingMaxPool2d
        ):
            continue
        neuron = pool.args[0]
        if not (
            neuron.op == "call_module" and isinstance(gm.get_submodule(neuron.target), IFNeuron)
        ):
            continue
        if len(neuron.users) != 1:
            continue
        gm.add_submodule(pool.target, plain_maxpool(gm.get_submodule(pool.target)))
        pool.args = (neuron.args[0],)
        neuron.args = (pool,)
        pool.replace_all_uses_with(neuron, delete_user_cb=lambda user, n=neuron: user is not n)
        neuron.prepend(pool)
    gm.graph.lint()
    gm.recompile()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/convertsnn_maxpool"))
    parser.add_argument("--train-images", type=int, default=10000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--test-images", type=int, default=1000)
    parser.add_argument("--calibration", default="percentile:99.99")
    parser.add_argument("--timesteps", default="2,4,8,16,32,64")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/maxpool_policy")
    args = parser.parse_args()
    steps = sorted(int(t) for t in args.timesteps.split(","))
    lossless = str(args.data_dir / "cifar10_lossless_subset.npz")
    test = DataLoader(load_dataset(lossless, "test", limit=args.test_images), batch_size=50)
    calib = DataLoader(load_dataset(lossless, "train", limit=512), batch_size=64)

    start = time.perf_counter()
    net = train_vgg(args)
    train_seconds = time.perf_counter() - start
    ann = with_normalization(net, CIFAR).eval()
    avg_ann = copy.deepcopy(ann)
    for name, module in list(avg_ann.named_modules()):
        if isinstance(module, nn.MaxPool2d):
            avg_ann.get_submodule(name.rpartition(".")[0]).add_module(
                name.rpartition(".")[2], nn.AvgPool2d(2)
            )
    result = {
        "command": "python benchmarks/maxpool_policy.py " + " ".join(sys.argv[1:]),
        "data": {
            "train": "cifar10_jpeg.npz",
            "test": "cifar10_lossless_subset.npz",
            "test_images": args.test_images,
        },
        "arch": {"name": "vgg11_bn", **ARCH},
        "train": {"images": args.train_images, "epochs": args.epochs, "seconds": train_seconds},
        "calibration": args.calibration,
        "ann_accuracy": plain_accuracy(ann, test, "ANN"),
        "avgpool_ann_accuracy": plain_accuracy(avg_ann, test, "ANN, avg-pool"),
        "versions": package_versions(),
        "policies": {},
    }
    print(f"ANN {100 * result['ann_accuracy']:.1f} %, with avg-pools "
          f"{100 * result['avgpool_ann_accuracy']:.1f} %", flush=True)  # fmt: skip
    base = convert(ann, calib, max(steps), args.calibration)
    variants = {"spiking": base}
    variants["per-step max"] = copy.deepcopy(base)
    per_step_max(variants["per-step max"])
    variants["pool currents"] = copy.deepcopy(base)
    pool_currents(variants["pool currents"])
    variants["avg-pool"] = convert(avg_ann, calib, max(steps), args.calibration)
    for name, snn in variants.items():
        with torch.no_grad(), snn.gradient("ann"):  # each variant is still the same ANN
            x = next(iter(test))[0][:8]
            reference = (avg_ann if name == "avg-pool" else ann)(x)
            assert torch.allclose(snn(x), reference, atol=1e-3), name
        result["policies"][name] = prefix_accuracy(snn_steps(snn)(max(steps)), test, steps, name)
        print(f"  {name:14s} " + "  ".join(
            f"T={t}: {100 * a:.1f}" for t, a in result["policies"][name].items()), flush=True)  # fmt: skip
    write_json(args.out.with_suffix(".json"), result)
    header = ["max-pool policy", *(f"T={t}" for t in steps)]
    table = [["ANN (max-pool)", *(f"{100 * result['ann_accuracy']:.1f}" for _ in steps)]]
    table.append(["ANN (avg-pool, no retraining)",
                  *(f"{100 * result['avgpool_ann_accuracy']:.1f}" for _ in steps)])  # fmt: skip
    for name, accs in result["policies"].items():
        table.append([name, *(f"{100 * accs[str(t)]:.1f}" for t in steps)])
    text = "\n".join([
        "# Max-pooling policies in converted SNNs (CIFAR-10, VGG-11-BN quarter width)",
        "",
        f"Command: `{result['command']}`",
        "",
        f"ANN trained here for {args.epochs} epochs on the first {args.train_images} images of "
        f"cifar10_jpeg.npz (train split); evaluated on the first {args.test_images} test images of "
        f"cifar10_lossless_subset.npz. Thresholds: `{args.calibration}` on 512 lossless training "
        "images (the avg-pool variant recalibrated). Accuracy in %.",
        "",
        format_table(header, table, True),
        "",
    ])  # fmt: skip
    atomic_write(args.out.with_suffix(".md"), lambda tmp: Path(tmp).write_text(text))


if __name__ == "__main__":
    main()
