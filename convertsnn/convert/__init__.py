"""ANN -> SNN conversion (graph normalisation, calibration, neuron replacement)."""

from convertsnn.convert.converter import convert
from convertsnn.convert.graph import prepare_ann

__all__ = ["convert", "prepare_ann"]
