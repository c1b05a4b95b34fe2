"""Import ONNX CNNs as torch.fx modules the converter understands (opsets 9-21).

``load_onnx(path)`` reads the file (external data included), rebuilds its graph op by op from
supported torch layers (:mod:`convertsnn.convert.ops`), keeps reshapes batch-agnostic (files
exported with a fixed batch of 1 run any batch, and the SNN folds time into the batch), accepts
NHWC inputs (the module always takes NCHW images in [0, 1]) and checks the result against
onnxruntime on random images before returning it. See docs/importers.md.
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path

import torch

from convertsnn.errors import ConvertSNNError
from convertsnn.importers.base import LoadedANN, Preprocessing, with_normalization
from convertsnn.importers.onnx.builder import ImportFailure
from convertsnn.importers.onnx.reader import (
    data_input,
    default_opset,
    metadata_preprocessing,
    read_onnx,
)
from convertsnn.importers.onnx.translate import translate
from convertsnn.importers.onnx.verify import max_abs_difference, onnxruntime_outputs

PROBE_BATCH = 2  # the batch the graph is built on (not 1, so batch-agnostic reshapes are real)
VERIFY_IMAGES = 3
TOLERANCE = 1e-3  # relative to max(1, max |logit|); fp32 reordering stays far below


MAX_INPUT_ELEMENTS = 3 * 2048 * 2048  # per image; larger inputs would need many GB to probe


def _check_size(size: tuple[int, ...], path: Path) -> tuple[int, ...]:
    """``size``, refused before anything is allocated when it is empty or absurdly large."""
    if any(n < 1 for n in size):
        raise ConvertSNNError(f"cannot import {path.name}: its input size {size} has empty axes")
    if math.prod(size) > MAX_INPUT_ELEMENTS:
        raise ConvertSNNError(
            f"cannot import {path.name}: its input size {size} has {math.prod(size):,} values per "
            f"image (at most {MAX_INPUT_ELEMENTS:,} are supported); export the model at the "
            "image size it is used at, or pass --input-size"
        )
    return size


def _geometry(
    dims: list[int | None], input_size: tuple[int, ...] | None, path: Path
) -> tuple[str, tuple[int, ...]]:
    """The input layout (NCHW or NHWC) and the (C, H, W) size of the module's input."""
    if len(dims) < 2:
        raise ConvertSNNError(f"cannot import {path.name}: its input has rank {len(dims)}")
    stored = dims[1:]
    layout = "NCHW"
    if len(dims) == 4 and dims[3] in (1, 3) and dims[1] not in (1, 3):
        layout = "NHWC"
        stored = [dims[3], dims[1], dims[2]]
    if input_size is not None:
        if len(input_size) != len(stored) or any(
            s is not None and s != n for s, n in zip(stored, input_size, strict=True)
        ):
            shown = ", ".join("?" if s is None else str(s) for s in stored)
            raise ConvertSNNError(
                f"cannot import {path.name}: --input-size {input_size} does not fit the model's "
                f"input ({shown})"
            )
        return layout, _check_size(tuple(input_size), path)
    if any(s is None for s in stored):
        raise ConvertSNNError(
            f"cannot import {path.name}: its input size is not fixed in the file; pass "
            "--input-size C,H,W"
        )
    return layout, _check_size(tuple(stored), path)


def _check(path, model, output_name, graph, size, layout, fixed_batch) -> dict:
    """Compare the rebuilt module with onnxruntime on random images; refuse a mismatch."""
    images = torch.rand((VERIFY_IMAGES, *size), generator=torch.Generator().manual_seed(1))
    try:
        reference = onnxruntime_outputs(path, model, output_name, images, layout, fixed_batch)
    except Exception as err:  # onnxruntime rejects some files that onnx.checker accepts
        first = " ".join(str(err).split())[:300]
        warnings.warn(
            f"{path.name}: not checked, onnxruntime cannot run it ({first})", stacklevel=3
        )
        return {"onnxruntime_check": f"not run: {first}"}
    diff = max_abs_difference(graph, reference, images)
    scale = max(1.0, float(abs(reference).max()))
    if not diff <= TOLERANCE * scale:
        raise ConvertSNNError(
            f"cannot import {path.name}: the rebuilt torch model differs from onnxruntime by "
            f"{diff:.3g} (largest output {scale:.3g}); please report this file"
        )
    return {"onnxruntime_max_abs_diff": diff}


def load_onnx(
    path: str | os.PathLike, preprocessing: Preprocessing | None = None, verify: bool = True
) -> LoadedANN:
    """Import an ONNX classifier; the model takes NCHW images in [0, 1].

    Mean/std come from ``preprocessing``, else from the file's metadata_props (``mean``,
    ``std``: the graph expects normalised input), else from per-channel Sub/Div nodes at the
    graph's input (taken out of the graph and put in front as a Normalize layer). With
    ``verify`` the module is compared with onnxruntime on random images and the import is
    refused if they differ; the difference is stored in ``source["onnxruntime_max_abs_diff"]``
    (``source["onnxruntime_check"]`` says why when onnxruntime cannot run the file).
    """
    path = Path(path)
    model = read_onnx(path)
    input_name, dims = data_input(model, path)
    prep = metadata_preprocessing(model, path).updated(preprocessing)
    layout, size = _geometry(dims, prep.input_size, path)
    fixed_batch = dims[0]
    probe = torch.rand((PROBE_BATCH, *size), generator=torch.Generator().manual_seed(0))
    # Sub/Div normalisation at the input becomes the model's preprocessing (a Normalize layer),
    # unless mean/std were given: then the graph stays as it is, behind them.
    extract = prep.mean is None and prep.std is None
    try:
        result = translate(model, input_name, probe, layout, fixed_batch, extract)
    except ImportFailure as err:
        raise ConvertSNNError(f"cannot import {path.name}: {err}") from None
    if result.mean is not None:
        prep.mean, prep.std = result.mean, result.std
    graph = with_normalization(result.module, Preprocessing(result.mean, result.std))
    prep.input_size = size
    if prep.num_classes is None and result.output.ndim == 2:
        prep.num_classes = result.output.shape[1]
    source = {
        "type": "onnx",
        "path": path.name,
        "opset": default_opset(model),
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
        "input_layout": layout,
        "fixed_batch": fixed_batch,
        "removed_output": result.removed_output,
        "normalization_from_graph": result.mean is not None,
    }
    if verify:
        source.update(_check(path, model, result.output_name, graph, size, layout, fixed_batch))
    return LoadedANN(with_normalization(result.module, prep), prep, source)


__all__ = ["load_onnx"]
