"""Load source ANNs: ``load_ann(SOURCE)`` resolves a source string to a :class:`LoadedANN`.

Source syntax (shared by the CLI and the Python API, see docs/importers.md):

- ``PATH.onnx``: an ONNX CNN (opsets 9-21), rebuilt as a torch.fx module and checked against
  onnxruntime;
- ``PATH.pt`` / ``.pth`` / ``.th`` / ``.ckpt`` / ``.bin`` / ``.tar`` / ``.safetensors``: a state
  dict plus an architecture (``arch``), or convertsnn's own self-describing ANN file;
- ``timm:NAME``: a timm model, with local ``weights`` or timm's download;
- ``robustbench:DATASET/THREAT/NAME``: a RobustBench model from ``model_dir``;
- ``zoo:NAME``: an ANN from convertsnn's model zoo (:mod:`convertsnn.zoo`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from convertsnn.errors import ConvertSNNError
from convertsnn.importers.base import LoadedANN, Preprocessing
from convertsnn.importers.checkpoint import TORCH_SUFFIXES, load_checkpoint, save_ann

PREFIXES = ("timm", "robustbench", "zoo")
_SYNTAX = (
    "give a .onnx file, a checkpoint (.pt/.pth/.th/.ckpt/.safetensors, with --arch), "
    "timm:NAME or robustbench:DATASET/THREAT/NAME"
)


def parse_source(source: str) -> tuple[str, str]:
    """``(kind, reference)``: kind is onnx, checkpoint, timm, robustbench or zoo."""
    if not isinstance(source, (str, os.PathLike)):
        raise ConvertSNNError(f"a model source is a path or a string, got {type(source).__name__}")
    source = str(source)
    prefix, sep, rest = source.partition(":")
    if sep and prefix in PREFIXES:
        if not rest:
            raise ConvertSNNError(f"source '{source}' names no model after '{prefix}:'")
        return prefix, rest
    suffix = Path(source).suffix.lower()
    if suffix == ".onnx":
        return "onnx", source
    if suffix in (".safetensors", *TORCH_SUFFIXES):
        return "checkpoint", source
    if not Path(source).exists():
        raise ConvertSNNError(f"source not found: {source}; {_SYNTAX}")
    raise ConvertSNNError(f"cannot tell what kind of model '{source}' is; {_SYNTAX}")


def source_stem(source: str) -> str:
    """A file-name stem for outputs derived from ``source`` (``timm:resnet18`` -> ``resnet18``)."""
    kind, reference = parse_source(source)
    name = Path(reference).stem if kind in ("onnx", "checkpoint") else reference.split("/")[-1]
    return re.sub(r"[^\w.-]", "_", name)


def load_ann(
    source: str,
    arch: str | None = None,
    arch_kwargs: dict | None = None,
    preprocessing: Preprocessing | None = None,
    weights: str | os.PathLike | None = None,
    model_dir: str | os.PathLike | None = None,
) -> LoadedANN:
    """Resolve ``source`` (see the module doc) to an ANN that takes images in [0, 1].

    Args:
        arch: architecture of a plain state dict (checkpoint sources).
        arch_kwargs: keyword arguments of the architecture (checkpoints) or of
            ``timm.create_model`` (timm sources), e.g. ``{"num_classes": 10}``.
        preprocessing: fields set here (mean, std, input size, classes) override the source's.
        weights: local pretrained weights for a timm source.
        model_dir: RobustBench's model directory (default ``./models``).
    """
    kind, reference = parse_source(source)
    for option, value, kinds in (
        ("--arch", arch, ("checkpoint",)),
        ("--weights", weights, ("timm",)),
        ("--model-dir", model_dir, ("robustbench",)),
        ("arch_kwargs", arch_kwargs, ("checkpoint", "timm")),
    ):
        if value is not None and kind not in kinds:
            names = " and ".join(kinds)
            raise ConvertSNNError(f"{option} applies to {names} sources, not to '{source}'")
    if kind == "onnx":
        from convertsnn.importers.onnx import load_onnx

        return load_onnx(reference, preprocessing)
    if kind == "timm":
        from convertsnn.importers.timm import load_timm

        return load_timm(reference, weights, arch_kwargs, preprocessing)
    if kind == "robustbench":
        from convertsnn.importers.robustbench import load_robustbench

        return load_robustbench(reference, model_dir or "./models", preprocessing)
    if kind == "zoo":
        from convertsnn.zoo.loading import load_ann as load_zoo_ann

        if preprocessing is not None:
            raise ConvertSNNError(
                "zoo models carry their preprocessing; drop --mean/--std/--input-size"
            )
        return load_zoo_ann(reference)
    return load_checkpoint(reference, arch, arch_kwargs, preprocessing)


__all__ = ["LoadedANN", "Preprocessing", "load_ann", "parse_source", "save_ann", "source_stem"]
