"""Leave convertsnn with a converted SNN: ONNX (unrolled over time) and NIR files."""
