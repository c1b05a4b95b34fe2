import math

import pytest
import torch

from convertsnn.errors import ConvertSNNError
from convertsnn.snn.surrogate import SURROGATE_FAMILIES, Surrogate, parse_surrogate

X = torch.tensor([-2.0, -0.4, -0.1, 0.0, 0.1, 0.4, 2.0])

EXPECTED = {
    "triangle:1": (1 - X.abs()).clamp(min=0),
    "triangle:0.5": (0.5 - X.abs()).clamp(min=0) / 0.25,
    "rect:1": (X.abs() < 0.5).float(),
    "exp:2": torch.exp(-2 * X.abs()),
    "expd:1": 0.3 * torch.exp(-X.abs()),
    "sigmoid:4": 4 * torch.sigmoid(4 * X) * (1 - torch.sigmoid(4 * X)),
    "atan:2": 1 / (1 + (math.pi * X) ** 2),
    "ste": torch.ones_like(X),
}


@pytest.mark.parametrize("spec", sorted(EXPECTED))
def test_surrogate_gradient_matches_formula(spec):
    x = X.clone().requires_grad_(True)
    out = parse_surrogate(spec).spike(x)
    assert torch.equal(out, (X >= 0).float())  # forward is the hard step
    out.sum().backward()
    assert torch.allclose(x.grad, EXPECTED[spec], atol=1e-6)


def test_every_family_is_tested():
    assert {s.split(":")[0] for s in EXPECTED} == set(SURROGATE_FAMILIES)


@pytest.mark.parametrize("spec", ["nope", "triangle:abc", "triangle:-1", "rect:0"])
def test_bad_surrogate_spec_is_one_line_error(spec):
    with pytest.raises(ConvertSNNError) as err:
        parse_surrogate(spec)
    assert "\n" not in str(err.value)


def test_spec_round_trip():
    assert parse_surrogate(str(Surrogate("exp", 0.5))) == Surrogate("exp", 0.5)
