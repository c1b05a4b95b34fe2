"""Check an imported module against onnxruntime on the same images."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn


def onnxruntime_outputs(
    path: Path,
    model: onnx.ModelProto,
    output_name: str,
    images: torch.Tensor,
    layout: str,
    fixed_batch: int | None,
) -> np.ndarray:
    """Run the ONNX model on NCHW ``images`` with onnxruntime and return ``output_name``.

    A file with a fixed batch size runs in chunks of that size; an NHWC file gets NHWC input.
    An intermediate output (the logits before a dropped Softmax) is exposed by adding it to a
    copy of the graph's outputs. The model (external data already loaded) is handed over in
    memory, or, above protobuf's 2 GB limit, re-saved with large tensors as external data.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.log_severity_level = 3
    if output_name not in [o.name for o in model.graph.output]:
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        copy.graph.output.append(onnx.helper.make_value_info(output_name, onnx.TypeProto()))
        model = copy
    with tempfile.TemporaryDirectory() as tmp:
        if model.ByteSize() < 2**31 - 1:
            source = model.SerializeToString()
        else:
            source = str(Path(tmp) / path.name)
            onnx.save(model, source, save_as_external_data=True, location="weights.data")
        session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        x = images.numpy().astype(np.float32)
        if layout == "NHWC":
            x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
        chunk = fixed_batch or len(x)
        outputs = [
            session.run([output_name], {name: x[i : i + chunk]})[0] for i in range(0, len(x), chunk)
        ]
    return np.concatenate(outputs)


def max_abs_difference(module: nn.Module, reference: np.ndarray, images: torch.Tensor) -> float:
    """max |module(images) - reference| (reference computed by onnxruntime)."""
    with torch.no_grad():
        ours = module.eval()(images).numpy()
    if ours.shape != reference.shape:
        return float("inf")
    return float(np.abs(ours - reference).max())
