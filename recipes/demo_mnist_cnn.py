"""Rebuild the demo's shipped files: a PGD-trained MNIST CNN and small real MNIST samples.

How the shipped checkpoint was trained (this script, unchanged):
- data: ../shared/data/mnist.npz (the official 60,000 training images);
- model: ``mnist_cnn`` (width 16, about 46k parameters), inputs in [0, 1] with MNIST mean/std
  inside the model;
- PGD adversarial training (Madry et al. 2018): L-inf eps 0.1, 10 steps of 0.025 with a random
  start, cross-entropy on the adversarial images only; Adam lr 1e-3, 5 epochs, batch 128,
  cosine schedule, seed 0;
- samples: the first 256 training images (calibration) and the first 1,000 test images.

Run from the repository root:  python recipes/demo_mnist_cnn.py [--data ../shared/data/mnist.npz]
It writes convertsnn/assets/mnist_cnn_pgd.safetensors and convertsnn/assets/mnist_sample.npz.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from convertsnn.attacks import PGD
from convertsnn.data import load_dataset
from convertsnn.importers import Preprocessing, save_ann
from convertsnn.importers.base import with_normalization
from convertsnn.models import create_model

ASSETS = Path(__file__).resolve().parents[1] / "convertsnn" / "assets"
MEAN, STD = (0.1307,), (0.3081,)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/mnist.npz")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--out", type=Path, default=ASSETS)
    args = parser.parse_args()

    torch.manual_seed(0)
    train = load_dataset(args.data, split="train")
    test = load_dataset(args.data, split="test", limit=1000)
    net = create_model("mnist_cnn")
    preprocessing = Preprocessing(MEAN, STD, (1, 28, 28), 10)
    model = with_normalization(net, preprocessing)
    loader = DataLoader(
        train, batch_size=128, shuffle=True, generator=torch.Generator().manual_seed(0)
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, args.epochs * len(loader))
    attack = PGD(model, args.eps, steps=10, alpha=args.eps / 4)
    for epoch in range(args.epochs):
        start, correct, seen = time.time(), 0, 0
        for x, y in loader:
            x_adv = attack(x, y)
            model.train()
            logits = model(x_adv)
            loss = F.cross_entropy(logits, y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            correct += (logits.argmax(1) == y).sum().item()
            seen += len(y)
        print(
            f"epoch {epoch + 1}: adversarial train acc {correct / seen:.4f} ({time.time() - start:.0f}s)"
        )
    model.eval()
    x_test, y_test = test.tensors()
    with torch.no_grad():
        clean = (model(x_test).argmax(1) == y_test).float().mean().item()
    robust = (
        (model(PGD(model, args.eps, steps=20)(x_test, y_test)).argmax(1) == y_test)
        .float()
        .mean()
        .item()
    )
    print(f"first 1000 test images: clean {clean:.4f}, PGD-20 eps {args.eps}: {robust:.4f}")
    args.out.mkdir(parents=True, exist_ok=True)
    recipe = {"recipe": "recipes/demo_mnist_cnn.py", "epochs": args.epochs, "eps": args.eps,
              "attack": "pgd-10", "data": Path(args.data).name}  # fmt: skip
    save_ann(net, args.out / "mnist_cnn_pgd.safetensors", "mnist_cnn", {}, preprocessing,
             {"training": recipe, "metrics": {"clean_first1000": clean, "pgd20_first1000": robust}})  # fmt: skip
    calib = load_dataset(args.data, split="train", limit=256)
    np.savez_compressed(
        args.out / "mnist_sample.npz",
        x_train=calib.images[:, 0].numpy(), y_train=calib.labels.numpy(),
        x_test=test.images[:, 0].numpy(), y_test=test.labels.numpy(),
    )  # fmt: skip
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
