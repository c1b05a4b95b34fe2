"""Per-layer perturbation statistics of an SNN next to its source ANN."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from convertsnn.convert import convert
from convertsnn.errors import ConvertSNNError
from convertsnn.eval.perturbation import LOGITS, layer_perturbations


def converted(ann, images, timesteps: int, calibration: str = "percentile:99.99"):
    loader = DataLoader(TensorDataset(images, torch.zeros(len(images))), batch_size=16)
    return convert(ann, loader, timesteps=timesteps, calibration=calibration)


def by_layer(rows):
    return {row.layer: row for row in rows}


def test_rows_name_every_spiking_layer_then_the_logits(tiny_resnet, images):
    snn = converted(tiny_resnet, images, 8)
    rows = layer_perturbations(snn, images, (images + 0.05).clamp(0, 1))
    assert [r.layer for r in rows] == [*snn.thresholds, LOGITS]
    assert all(r.snn > 0 and r.ann > 0 and r.quantisation > 0 for r in rows)


def test_no_perturbation_gives_zero_and_keeps_the_conversion_error(tiny_resnet, images):
    snn = converted(tiny_resnet, images, 4)
    for row in layer_perturbations(snn, images, images.clone()):
        assert row.snn == 0 and row.ann == 0 and math.isnan(row.growth)
        assert row.quantisation > 0.01  # T = 4 is far from the ANN


def test_ann_column_is_the_relative_change_of_the_first_activation(tiny_resnet, images):
    snn = converted(tiny_resnet, images, 8)
    x_adv = (images + 0.1 * torch.randn_like(images)).clamp(0, 1)
    first = next(iter(snn.thresholds))
    row = by_layer(layer_perturbations(snn, images, x_adv, batch_size=8))[first]
    stem = lambda x: torch.relu(tiny_resnet.bn1(tiny_resnet.conv1(tiny_resnet.norm(x))))  # noqa: E731
    with torch.no_grad():
        a, a_adv = stem(images), stem(x_adv)
    assert row.ann == pytest.approx(float((a_adv - a).norm() / a.norm()), rel=1e-4)


def test_long_simulations_approach_the_ann(tiny_resnet, images):
    x_adv = (images + 0.1 * torch.randn_like(images)).clamp(0, 1)
    short = by_layer(layer_perturbations(converted(tiny_resnet, images, 2), images, x_adv))
    long = by_layer(layer_perturbations(converted(tiny_resnet, images, 256), images, x_adv))
    for name, row in long.items():
        assert row.quantisation < 0.2 and row.quantisation < short[name].quantisation / 2
        assert row.snn == pytest.approx(row.ann, rel=0.25)
    assert short[LOGITS].growth != pytest.approx(1.0, abs=0.05)


def test_the_ann_file_and_the_bias_calibrated_snns_view_agree(tiny_resnet, images):
    snn = converted(tiny_resnet, images, 4, calibration="biascal:mse")
    assert snn.metadata["bias_corrections"]
    x_adv = (images + 0.05 * torch.randn_like(images)).clamp(0, 1)
    view = layer_perturbations(snn, images, x_adv)
    given = layer_perturbations(snn, images, x_adv, ann=tiny_resnet)
    for a, b in zip(view, given, strict=True):
        assert a.ann == pytest.approx(b.ann, rel=1e-4)
        assert a.quantisation == pytest.approx(b.quantisation, rel=1e-4)
        assert a.snn == b.snn


def test_bad_inputs_are_refused_in_one_line(tiny_resnet, images):
    snn = converted(tiny_resnet, images, 4)
    with pytest.raises(ConvertSNNError, match="same shape"):
        layer_perturbations(snn, images, images[:4])

    class Shallow(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 10, 3)
            self.act = torch.nn.ReLU()

        def forward(self, x):
            return self.act(self.conv(x)).mean((2, 3))

    with pytest.raises(ConvertSNNError, match="no activation named"):
        layer_perturbations(snn, images, images, ann=Shallow())
