"""Read and check an ONNX file: one-line errors for files convertsnn cannot use."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from convertsnn.errors import ConvertSNNError
from convertsnn.importers.base import Preprocessing

OPSETS = range(9, 22)  # default-domain opsets the importer is written and tested for


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:300] if text else type(err).__name__


def read_onnx(path: Path) -> onnx.ModelProto:
    """Load ``path`` (with its external data), check it, and return the model."""
    if not path.is_file():
        raise ConvertSNNError(f"ONNX file not found: {path}")
    where = f"cannot import {path.name}"
    try:
        model = onnx.load(str(path))
    except (DecodeError, UnicodeDecodeError) as err:
        raise ConvertSNNError(
            f"{where}: the file is not a readable ONNX model (truncated or not ONNX: "
            f"{_first_line(err)})"
        ) from None
    except OSError as err:
        raise ConvertSNNError(
            f"{where}: a file it refers to could not be read ({_first_line(err)}); keep external "
            "data files next to the .onnx file"
        ) from None
    except Exception as err:
        raise ConvertSNNError(
            f"{where}: the file could not be loaded ({_first_line(err)})"
        ) from None
    if not model.HasField("graph") or not model.graph.node or not model.graph.output:
        raise ConvertSNNError(
            f"{where}: the file holds no ONNX graph (it is truncated or not an ONNX model)"
        )
    opset = default_opset(model)
    if opset not in OPSETS:
        raise ConvertSNNError(
            f"{where}: it uses ONNX opset {opset}, but convertsnn imports opsets "
            f"{OPSETS.start}-{OPSETS.stop - 1}; re-export the model (e.g. opset_version=17) or "
            "convert it with onnx.version_converter"
        )
    try:
        onnx.checker.check_model(str(path))
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as err:
        detail = _first_line(err).split("==>")[0].strip()
        raise ConvertSNNError(f"{where}: the model is not valid ONNX ({detail})") from None
    return model


def default_opset(model: onnx.ModelProto) -> int:
    """The opset of the default (ai.onnx) domain; 0 when the file declares none."""
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return entry.version
    return 0


def data_input(model: onnx.ModelProto, path: Path) -> tuple[str, list[int | None]]:
    """The one graph input that is not a weight: its name and dims (None where symbolic)."""
    weights = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in weights]
    if len(inputs) != 1:
        names = ", ".join(i.name for i in inputs) or "none"
        raise ConvertSNNError(
            f"cannot import {path.name}: it has {len(inputs)} data inputs ({names}); convertsnn "
            "imports models with one image input"
        )
    tensor = inputs[0].type.tensor_type
    if tensor.elem_type != onnx.TensorProto.FLOAT:
        kind = onnx.TensorProto.DataType.Name(tensor.elem_type)
        raise ConvertSNNError(
            f"cannot import {path.name}: its input '{inputs[0].name}' is {kind}, not FLOAT; "
            "export the model with a float32 image input"
        )
    dims = [
        d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
        for d in tensor.shape.dim
    ]
    return inputs[0].name, dims


def _numbers(text: str | None, key: str, path: Path) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        value = json.loads(text) if text.strip().startswith("[") else text.split(",")
        return tuple(float(v) for v in value)
    except (ValueError, TypeError):
        raise ConvertSNNError(
            f"cannot import {path.name}: its metadata '{key}' = '{text}' is not a list of numbers"
        ) from None


def metadata_preprocessing(model: onnx.ModelProto, path: Path) -> Preprocessing:
    """Mean/std stored in the file's metadata_props (keys ``mean`` and ``std``), if any."""
    props = {p.key: p.value for p in model.metadata_props}
    return Preprocessing(
        mean=_numbers(props.get("mean"), "mean", path), std=_numbers(props.get("std"), "std", path)
    )
