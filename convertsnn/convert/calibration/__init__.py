"""Threshold calibration methods, one module each, one registry."""

from convertsnn.convert.calibration import (  # noqa: F401  (registration)
    auto,
    bias_correction,
    bnstats,
    bnstats_mse,
    channelwise,
    delayed_readout,
    layerwise,
    max_norm,
    mse,
    offset,
    percentile,
    qcfs,
    readout_calibration,
    robust_scale,
    synthetic,
    threshold_balancing,
    weight_calibration,
)
from convertsnn.convert.calibration.registry import (
    CalibrationMethod,
    get_calibration,
    list_calibrations,
    register_calibration,
)

__all__ = ["CalibrationMethod", "get_calibration", "list_calibrations", "register_calibration"]
