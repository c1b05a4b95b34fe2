"""Pipeline recipes: one YAML per setting, run with one command (``convertsnn zoo build``).

A pipeline recipe lists the ``convertsnn`` commands that build one model, e.g. robust ANN
training, conversion, robust finetuning and evaluation::

    description: VGG-11 on CIFAR-10, seed 001 (TRADES ANN -> IF SNN T=8 -> TRADES-RFGSM)
    pipeline:
      - convertsnn train --config recipes/cifar10_trades_ann.yaml ... --out-dir {work}/ann --resume
      - convertsnn convert {work}/ann/best.safetensors ... -o {work}/snn.safetensors
      - convertsnn finetune {work}/snn.safetensors ... --out-dir {work}/finetune --resume
    output: "{work}/finetune/best.safetensors"     # default "{out}"

Each step runs as ``python -m convertsnn ...`` in its own process, from the folder that holds
``recipes/`` (the repository root), after three placeholders are filled in:

- ``{out}``: the file the build must produce (``--out``); ``output`` is copied there at the end;
- ``{work}``: a folder for intermediate files and run directories (``--work-dir``);
- ``{data}``: the folder holding the datasets (``--data-root``; default ``../shared/data``,
  kept relative to the repository root so that files recording it stay the same everywhere).

Long runs resume: rerun the same command (train/finetune steps carry ``--resume``), or skip the
finished steps with ``--from-step N``.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from convertsnn.errors import ConvertSNNError
from convertsnn.snn.serialize import atomic_write

DEFAULT_DATA_ROOT = Path("..") / "shared" / "data"
PLACEHOLDERS = ("{out}", "{work}", "{data}")


@dataclass(frozen=True)
class Pipeline:
    """A validated pipeline recipe."""

    path: Path
    description: str
    steps: tuple[str, ...]
    output: str = "{out}"

    @property
    def root(self) -> Path:
        """Where the steps run: the parent of the ``recipes`` folder holding the recipe."""
        for folder in self.path.resolve().parents:
            if folder.name == "recipes":
                return folder.parent
        return self.path.resolve().parent


def load_pipeline(path: str | Path) -> Pipeline:
    """Read a pipeline recipe; every problem is a one-line error."""
    path = Path(path)
    if not path.is_file():
        raise ConvertSNNError(f"recipe file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        first = str(err).strip().splitlines()[0]
        raise ConvertSNNError(f"{path} is not valid YAML ({first})") from None
    if not isinstance(data, dict) or "pipeline" not in data:
        raise ConvertSNNError(
            f"{path} is not a pipeline recipe (no 'pipeline:' list of commands); a settings "
            "recipe runs with `convertsnn train/finetune --config FILE`"
        )
    unknown = sorted(set(data) - {"description", "pipeline", "output"})
    if unknown:
        raise ConvertSNNError(f"{path}: unknown key(s) {', '.join(unknown)}")
    steps = data["pipeline"]
    if not isinstance(steps, list) or not steps or not all(isinstance(s, str) for s in steps):
        raise ConvertSNNError(f"{path}: 'pipeline' must be a non-empty list of command lines")
    for step in steps:
        words = shlex.split(step)
        if len(words) < 2 or words[0] != "convertsnn":
            raise ConvertSNNError(f"{path}: step '{step}' is not a convertsnn command")
    return Pipeline(path, str(data.get("description") or ""), tuple(steps),
                    str(data.get("output") or "{out}"))  # fmt: skip


def _fill(text: str, values: dict[str, str]) -> str:
    for placeholder, value in values.items():
        text = text.replace(placeholder, value)
    return text


def run_pipeline(
    pipeline: Pipeline,
    out: str | Path,
    work_dir: str | Path,
    data_root: str | Path | None = None,
    from_step: int = 1,
    echo: Callable[[str], None] = print,
    check: Callable[[list[str]], None] | None = None,
    dry_run: bool = False,
) -> Path:
    """Run the steps of ``pipeline`` (from step ``from_step``) so that they produce ``out``.

    ``check(args)`` is called on every step's arguments before the first one runs (the CLI
    parses them, so a typo fails at once rather than after hours of training); ``dry_run``
    stops after printing the steps.
    """
    total = len(pipeline.steps)
    if not 1 <= from_step <= total:
        raise ConvertSNNError(f"--from-step must be between 1 and {total}, got {from_step}")
    root = pipeline.root
    out, work = Path(out).resolve(), Path(work_dir).resolve()
    data = Path(data_root).resolve() if data_root else DEFAULT_DATA_ROOT  # relative to root
    values = dict(zip(PLACEHOLDERS, (str(out), str(work), str(data)), strict=True))
    commands = [[_fill(word, values) for word in shlex.split(step)[1:]] for step in pipeline.steps]
    for args in commands:
        if check is not None:
            check(args)
    for number, args in enumerate(commands, 1):
        if number < from_step:
            continue
        echo(f"[{number}/{total}] convertsnn {shlex.join(args)}")
        if dry_run:
            continue
        work.mkdir(parents=True, exist_ok=True)
        code = subprocess.run([sys.executable, "-m", "convertsnn", *args], cwd=root).returncode
        if code != 0:
            raise ConvertSNNError(
                f"step {number} of {pipeline.path} failed (exit code {code}); fix it and rerun "
                f"with --from-step {number}"
            )
    produced = Path(_fill(pipeline.output, values))
    produced = produced if produced.is_absolute() else root / produced
    if dry_run:
        return produced
    if not produced.is_file():
        raise ConvertSNNError(f"the steps of {pipeline.path} did not write {produced}")
    if produced.resolve() != out:
        atomic_write(out, lambda tmp: shutil.copyfile(produced, tmp))
    return out
