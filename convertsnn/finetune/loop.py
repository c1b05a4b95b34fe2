"""The robust training loop shared by SNN finetuning and ANN training.

Per step: the objective's inner attack, its loss (plus any regularisers), one optimiser step.
Per epoch: clean and PGD accuracy on the held-out images (with ``select_by`` ``quick`` also the
quick suite's robust accuracy on the first ``select_images`` of them), ``last`` and (when the
selection's held-out robust accuracy improved) ``best`` model files, and a checkpoint; with
``checkpoint_every`` also every N steps. Every checkpoint holds all random states, so ``resume``
continues exactly.

Files in ``out_dir``: ``checkpoint.pt``, ``best.safetensors``, ``last.safetensors``,
``config.json``, ``log.jsonl``, ``log.csv`` (and ``tensorboard/``).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from convertsnn.attacks import PGD
from convertsnn.data import ImageDataset
from convertsnn.errors import ConvertSNNError
from convertsnn.eval.robustness import accuracy, robust_accuracy
from convertsnn.eval.settings import EvalSettings, default_eot
from convertsnn.eval.suites import QUICK, run_suite
from convertsnn.finetune.checkpoint import (
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from convertsnn.finetune.config import RunConfig
from convertsnn.finetune.data import Augmenter, batch
from convertsnn.finetune.distributed import DistContext
from convertsnn.finetune.projection import project_weights
from convertsnn.finetune.runlog import RunLog
from convertsnn.objectives import get_regularizer, regularized_loss
from convertsnn.snn.serialize import atomic_write

CHECKPOINT = "checkpoint.pt"
BEST = "best.safetensors"
LAST = "last.safetensors"

SaveModel = Callable[[Path, dict], None]
"""Writes the model being trained to a file, given the training facts to store with it."""


@dataclass
class TrainingTask:
    """What differs between finetuning an SNN and training an ANN.

    ``model`` is the plain module on the run's device, ``parameters`` the ones that learn,
    ``save`` writes the model file (SNN or ANN format) with the training facts, and ``teacher``
    is the network the distill regularizer learns from (None: the model as loaded).
    """

    model: nn.Module
    parameters: list[nn.Parameter]
    save: SaveModel
    teacher: nn.Module | None = None


@dataclass
class FitResult:
    """Where a run's files are and how it went (``history``: one record per epoch)."""

    out_dir: Path
    best: Path
    last: Path
    best_epoch: int
    history: list[dict] = field(default_factory=list)

    @property
    def best_record(self) -> dict:
        return self.history[self.best_epoch - 1]


def fit(
    config: RunConfig,
    task: TrainingTask,
    train_set: ImageDataset,
    val_set: ImageDataset | None,
    ctx: DistContext,
) -> FitResult:
    """Train ``task.model`` by ``config`` (resuming from ``out_dir`` when asked)."""
    run = _Run(config, task, train_set, val_set, ctx)
    run.restore()
    model = ctx.wrap(task.model)
    log = RunLog(run.out_dir, ctx.is_main, config.tensorboard, run.progress["global_step"])
    try:
        for epoch in range(run.progress["epoch"], config.epochs):
            started = time.perf_counter()
            run.train_epoch(model, epoch, log)
            run.end_epoch(epoch, started, log)
    finally:
        log.close()
    out = run.out_dir
    return FitResult(out, out / BEST, out / LAST, run.progress["best_epoch"],
                     run.progress["history"])  # fmt: skip


class _Run:
    """One training run's state: objective, optimiser, schedule, generators and progress.

    ``progress`` holds epoch, step (within the epoch), global step, the epoch records, the best
    epoch and the running sums of the current epoch; it goes into every checkpoint.
    """

    def __init__(
        self,
        config: RunConfig,
        task: TrainingTask,
        train_set: ImageDataset,
        val_set: ImageDataset | None,
        ctx: DistContext,
    ) -> None:
        if config.batch_size % ctx.world_size:
            raise ConvertSNNError(
                f"batch_size {config.batch_size} is not divisible by the {ctx.world_size} processes"
            )
        self.config, self.task, self.ctx = config, task, ctx
        self.train_set, self.val_set = train_set, val_set
        self.out_dir = Path(config.out_dir)
        self.objective = config.build_objective()
        self.regularizers = [get_regularizer(spec) for spec in config.regularizers]
        for regularizer in self.regularizers:
            regularizer.setup(task.model, task.teacher)
        self.local_batch = config.batch_size // ctx.world_size
        self.steps_per_epoch = math.ceil(
            math.ceil(len(train_set) / ctx.world_size) / self.local_batch
        )
        self.optimizer = _optimizer(task.parameters, config)
        self.scheduler = _scheduler(self.optimizer, config, self.steps_per_epoch)
        self.augment = Augmenter(config.augment, config.seed + ctx.rank)
        self.progress = {"epoch": 0, "step": 0, "global_step": 0, "history": [],
                         "best_epoch": 0, "running": _zero_sums()}  # fmt: skip
        self.selection = _selection(config, self.objective.eps, val_set)

    @property
    def checkpoint(self) -> Path:
        return self.out_dir / CHECKPOINT

    def restore(self) -> None:
        """Continue from the run directory's checkpoint (only with ``resume``)."""
        config, ctx = self.config, self.ctx
        if self.checkpoint.is_file():
            if not config.resume:
                raise ConvertSNNError(
                    f"{self.out_dir} already holds a run; pass --resume to continue it or "
                    "choose another --out-dir"
                )
            state = load_checkpoint(self.checkpoint)
            changed = config.differences(state["config"])
            if changed:
                raise ConvertSNNError(
                    f"cannot resume {self.out_dir} with other settings "
                    f"({'; '.join(changed[:3])}); use the run's settings or another --out-dir"
                )
            if len(state["rng"]) != ctx.world_size:
                raise ConvertSNNError(
                    f"{self.out_dir} was run with {len(state['rng'])} processes; resume it "
                    "with as many"
                )
            self.task.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            if self.scheduler is not None:
                self.scheduler.load_state_dict(state["scheduler"])
            self.augment.generator.set_state(state["augment"][ctx.rank])
            set_rng_state(state["rng"][ctx.rank], ctx.device)
            self.progress = state["progress"]
        elif config.resume and ctx.is_main and config.progress:
            tqdm.write(f"no checkpoint in {self.out_dir}: starting a new run")
        if ctx.is_main:
            text = json.dumps(config.to_dict(), indent=2) + "\n"
            atomic_write(self.out_dir / "config.json", lambda tmp: Path(tmp).write_text(text))

    def save_state(self) -> None:
        """Write the checkpoint (every rank's generators are gathered to rank 0)."""
        rng = self.ctx.gather(rng_state(self.ctx.device))
        generators = self.ctx.gather(self.augment.generator.get_state())
        if self.ctx.is_main:
            scheduler = self.scheduler.state_dict() if self.scheduler is not None else None
            save_checkpoint(self.checkpoint, {
                "config": self.config.to_dict(), "model": self.task.model.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scheduler": scheduler,
                "progress": self.progress, "rng": rng, "augment": generators,
            })  # fmt: skip

    def train_epoch(self, model: nn.Module, epoch: int, log: RunLog) -> None:
        """The remaining steps of ``epoch`` (``model`` may be the DDP wrapper)."""
        config, ctx, progress = self.config, self.ctx, self.progress
        order = ctx.epoch_order(len(self.train_set), epoch, config.seed)
        bar = tqdm(
            total=self.steps_per_epoch, initial=progress["step"],
            desc=f"epoch {epoch + 1}/{config.epochs}",
            disable=not (ctx.is_main and config.progress), dynamic_ncols=True,
        )  # fmt: skip
        sums = progress["running"]
        for step in range(progress["step"], self.steps_per_epoch):
            index = order[step * self.local_batch : (step + 1) * self.local_batch]
            x, y = batch(self.train_set, index, self.augment)
            x, y = x.to(ctx.device), y.to(ctx.device)
            model.train()
            out = self.objective(model, x, y)
            loss = regularized_loss(self.regularizers, model, x, y, out)
            if ctx.sum([float(torch.isfinite(loss))])[0] < ctx.world_size:
                raise ConvertSNNError(
                    f"the loss became {loss.item()} at epoch {epoch + 1}, step {step + 1}; "
                    "lower --lr or check the data"
                )
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            if config.weight_projection:
                project_weights(self.task.model, config.weight_projection)
            if config.schedule == "cosine":
                self.scheduler.step()
            _accumulate(sums, loss.item(), out, y)
            progress["step"], progress["global_step"] = step + 1, progress["global_step"] + 1
            bar.update(1)
            bar.set_postfix(_postfix(sums), refresh=False)
            if config.log_every and progress["global_step"] % config.log_every == 0:
                log.write({"type": "step", "epoch": epoch + 1, "step": step + 1,
                           "global_step": progress["global_step"],
                           "lr": _lr(self.optimizer), "loss": loss.item(), **out.terms})  # fmt: skip
            every = config.checkpoint_every
            if every and progress["global_step"] % every == 0 and step + 1 < self.steps_per_epoch:
                self.save_state()
        bar.close()

    def end_epoch(self, epoch: int, started: float, log: RunLog) -> None:
        """Schedule step, held-out evaluation, epoch record, model files, checkpoint.

        The log is written before the checkpoint: if the run dies in between, resuming drops
        the records after the checkpoint and redoes (identically) what they describe.
        """
        config, progress = self.config, self.progress
        if config.schedule == "cosine-epoch":
            self.scheduler.step()
        sums = progress["running"]
        totals = dict(zip(sums, self.ctx.sum(list(sums.values())), strict=True))
        record = {"type": "epoch", "epoch": epoch + 1, "global_step": progress["global_step"],
                  "lr": _lr(self.optimizer),
                  **{f"train_{k}": v for k, v in _rates(totals).items()}}  # fmt: skip
        if self.val_set is not None:
            record.update(_validate(self.task.model, self.val_set, config, self.objective.eps,
                                    self.ctx))  # fmt: skip
        record["seconds"] = round(time.perf_counter() - started, 3)
        history = progress["history"]
        history.append(record)
        best = progress["best_epoch"]
        if self.val_set is None or best == 0 or _better(record, history[best - 1], config):
            progress["best_epoch"] = epoch + 1
        log.write(record)
        log.write_epochs(history)
        if self.ctx.is_main:
            info = {"config": config.to_dict(), "objective": self.objective.settings(),
                    "epochs_done": epoch + 1, "best_epoch": progress["best_epoch"],
                    "selected_by": self.selection, "history": history}  # fmt: skip
            self.task.save(self.out_dir / LAST, info)
            if progress["best_epoch"] == epoch + 1:
                self.task.save(self.out_dir / BEST, info)
        progress.update(epoch=epoch + 1, step=0, running=_zero_sums())
        self.save_state()
        if self.ctx.is_main and config.progress:
            tqdm.write(_summary(record, progress["best_epoch"] == epoch + 1))


def _optimizer(parameters: list[nn.Parameter], config: RunConfig) -> torch.optim.Optimizer:
    if not parameters:
        raise ConvertSNNError("no parameters to train; check --train")
    if config.optimizer == "adam":
        return torch.optim.Adam(parameters, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(
        parameters, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )


def _scheduler(optimizer, config: RunConfig, steps_per_epoch: int):
    """Cosine annealing to 0 per step (``cosine``) or per epoch (``cosine-epoch``, seed 001)."""
    if config.schedule == "constant":
        return None
    total = config.epochs * (steps_per_epoch if config.schedule == "cosine" else 1)
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)


def _lr(optimizer) -> float:
    return optimizer.param_groups[0]["lr"]


def _zero_sums() -> dict[str, float]:
    return {"loss": 0.0, "clean_correct": 0.0, "adv_correct": 0.0, "seen": 0.0}


def _accumulate(sums: dict[str, float], loss: float, out, y: torch.Tensor) -> None:
    sums["loss"] += loss * len(y)
    sums["clean_correct"] += (out.clean_logits.argmax(1) == y).sum().item()
    sums["adv_correct"] += (out.adv_logits.argmax(1) == y).sum().item()
    sums["seen"] += len(y)


def _rates(sums: dict[str, float]) -> dict[str, float]:
    seen = max(sums["seen"], 1)
    return {
        "loss": round(sums["loss"] / seen, 6),
        "clean_acc": round(sums["clean_correct"] / seen, 6),
        "adv_acc": round(sums["adv_correct"] / seen, 6),
    }


def _postfix(sums: dict[str, float]) -> dict[str, str]:
    rates = _rates(sums)
    return {"loss": f"{rates['loss']:.3f}", "clean": f"{rates['clean_acc']:.1%}",
            "adv": f"{rates['adv_acc']:.1%}"}  # fmt: skip


def _validate(
    model: nn.Module, val_set: ImageDataset, config: RunConfig, eps: float, ctx: DistContext
) -> dict[str, float]:
    """Clean and PGD accuracy on this rank's share of the held-out images, summed over ranks."""
    shard = ImageDataset(*(t[ctx.shard(len(val_set))] for t in (val_set.images, val_set.labels)))
    loader = DataLoader(shard, batch_size=config.batch_size)
    n = len(shard)
    bars = config.progress and ctx.is_main
    clean = accuracy(model, loader, ctx.device, "held-out clean", bars) * n
    attack = PGD(model, eps, steps=config.val_attack_steps)
    robust = robust_accuracy(model, attack, loader, ctx.device, "held-out pgd", bars) * n
    clean, robust, total = ctx.sum([round(clean), round(robust), n])
    record = {"val_clean_acc": clean / total, "val_robust_acc": robust / total}
    if config.select_by == "quick":
        record["val_quick_acc"] = _quick_accuracy(model, val_set, config, eps, ctx)
    return record


def _quick_accuracy(
    model: nn.Module, val_set: ImageDataset, config: RunConfig, eps: float, ctx: DistContext
) -> float:
    """The quick suite's robust accuracy on the first ``select_images`` held-out images (all
    when unset): each rank attacks its share, the per-sample outcomes are summed over ranks.
    The suite reseeds the generators per batch, so it runs on a fork of them (the training
    stream continues as without it)."""
    count = min(len(val_set), config.select_images or len(val_set))
    index = ctx.shard(count)
    correct = 0.0
    if index:
        x = val_set.images[index].float().div(255).to(ctx.device)
        y = val_set.labels[index].to(ctx.device)
        settings = EvalSettings(eps, eot=default_eot(model), batch_size=config.batch_size,
                                seed=config.seed, progress=config.progress and ctx.is_main)  # fmt: skip
        devices = [ctx.device] if ctx.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            result = run_suite(QUICK, model, x, y, settings)
        correct = float(result.ensemble.correct.sum())
    correct, total = ctx.sum([correct, len(index)])
    return correct / total


def _selection(config: RunConfig, eps: float, val_set: ImageDataset | None) -> str:
    """How the best epoch is chosen, in words (stored with the model files)."""
    if val_set is None:
        return "last epoch (no held-out images)"
    if config.select_by == "quick":
        count = min(len(val_set), config.select_images or len(val_set))
        return f"held-out robust accuracy (quick suite, eps {eps:.6g}, {count} images)"
    return f"held-out robust accuracy (PGD-{config.val_attack_steps}, eps {eps:.6g})"


def _better(record: dict, best: dict, config: RunConfig) -> bool:
    """Higher held-out robust accuracy (PGD's or, with ``select_by`` quick, the quick suite's)
    wins; ties go to higher clean accuracy, then the later."""
    robust = "val_quick_acc" if config.select_by == "quick" else "val_robust_acc"
    key = (robust, "val_clean_acc")
    return tuple(record[k] for k in key) >= tuple(best[k] for k in key)


def _summary(record: dict, best: bool) -> str:
    text = (
        f"epoch {record['epoch']}: loss {record['train_loss']:.4f}, train clean "
        f"{100 * record['train_clean_acc']:.1f}% adv {100 * record['train_adv_acc']:.1f}%"
    )
    if "val_robust_acc" in record:
        text += (
            f", held-out clean {100 * record['val_clean_acc']:.1f}% "
            f"robust {100 * record['val_robust_acc']:.1f}%"
        )
    if "val_quick_acc" in record:
        text += f", quick suite {100 * record['val_quick_acc']:.1f}%"
    return text + f" ({record['seconds']:.0f} s){' [best]' if best else ''}"
