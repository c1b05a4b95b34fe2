"""PNG plots of robustness results: accuracy vs eps, accuracy vs T, breaks per attack / mode.

All take the rows of :func:`~convertsnn.eval.robustness.evaluate_robustness` (or their JSON
form) and write one PNG atomically; they return the path, or None when there is nothing to plot
(e.g. one eps only for accuracy vs eps).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from convertsnn.snn.serialize import atomic_write


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _rows(rows: Sequence) -> list[dict]:
    return [r if isinstance(r, dict) else vars(r) for r in rows]


def _save(fig, path: str | os.PathLike) -> Path:
    path = Path(path)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight"))
    _pyplot().close(fig)
    return path


def accuracy_vs_eps(rows: Sequence, path: str | os.PathLike, title: str = "") -> Path | None:
    """One line per model setting: clean accuracy at eps 0, then robust accuracy per eps."""
    rows = _rows(rows)
    if not any(len(r["robust"]) > 1 for r in rows):
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for r in rows:
        if not r["robust"]:
            continue
        eps = [0.0, *sorted(map(float, r["robust"]))]
        acc = [r["clean"]] + [r["robust"][k] for k in sorted(r["robust"], key=float)]
        ax.plot(eps, [100 * a for a in acc], marker="o", label=r["model"])
    ax.set(xlabel="eps", ylabel="accuracy (%)", ylim=(0, 100), title=title or "accuracy vs eps")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def accuracy_vs_timesteps(rows: Sequence, path: str | os.PathLike, title: str = "") -> Path | None:
    """Clean and robust accuracy of the SNN per T; the ANN as dashed horizontal lines."""
    rows = _rows(rows)
    snn = [r for r in rows if r["timesteps"] is not None]
    if len(snn) < 2:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    keys = sorted({k for r in snn for k in r["robust"]}, key=float)
    series = [("clean", lambda r: r["clean"])] + [
        (f"eps={float(k):.4g}", lambda r, k=k: r["robust"].get(k)) for k in keys
    ]
    for i, (name, value) in enumerate(series):
        points = [(r["timesteps"], value(r)) for r in snn if value(r) is not None]
        color = f"C{i}"
        ax.plot(*zip(*[(t, 100 * v) for t, v in points], strict=True), marker="o", color=color,
                label=f"SNN {name}")  # fmt: skip
        for r in rows:
            if r["timesteps"] is None and value(r) is not None:
                ax.axhline(100 * value(r), color=color, linestyle="--", alpha=0.6)
    ax.set(xlabel="timesteps T", ylabel="accuracy (%)", ylim=(0, 100),
           title=title or "accuracy vs T (dashed: ANN)")  # fmt: skip
    ax.set_xscale("log", base=2)
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def breaks_per_run(summary: dict, path: str | os.PathLike, title: str = "") -> Path | None:
    """Samples each attack and each gradient mode broke (summed over the suite's runs, which
    only see the survivors of earlier runs), from a suite summary."""
    runs = summary.get("runs", [])
    if not runs:
        return None
    by_attack: dict[str, int] = {}
    by_mode: dict[str, int] = {}
    for r in runs:
        by_attack[r["attack"]] = by_attack.get(r["attack"], 0) + r["lowered"]
        mode = "black-box" if r["blackbox"] else r["mode"]
        by_mode[mode] = by_mode.get(mode, 0) + r["lowered"]
    plt = _pyplot()
    height = max(3.0, 0.22 * max(len(by_attack), len(by_mode)) + 1.2)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, height), layout="constrained")
    for ax, data, name in ((left, by_attack, "attack"), (right, by_mode, "gradient mode")):
        labels = list(data)
        ax.barh(labels, [data[k] for k in labels], color="C0")
        ax.invert_yaxis()
        ax.set(xlabel="samples broken (first run in order to break them)", title=f"per {name}")
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(title or f"{summary.get('suite', '')} at eps={summary.get('eps', 0):.4g}")
    return _save(fig, path)
