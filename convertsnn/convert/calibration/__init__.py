"""Threshold calibration methods, one module each, one registry."""

from convertsnn.convert.calibration import max_norm, percentile  # noqa: F401  (registration)
from convertsnn.convert.calibration.registry import (
    CalibrationMethod,
    get_calibration,
    list_calibrations,
    register_calibration,
)

__all__ = ["CalibrationMethod", "get_calibration", "list_calibrations", "register_calibration"]
