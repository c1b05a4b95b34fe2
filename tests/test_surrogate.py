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
    out = parse_surrogate(spec + ":abs").spike(x)
    assert torch.equal(out, (X >= 0).float())  # forward is the hard step
    out.sum().backward()
    assert torch.allclose(x.grad, EXPECTED[spec], atol=1e-6)


@pytest.mark.parametrize("spec", sorted(EXPECTED))
def test_default_scale_is_relative_to_the_threshold(spec):
    """dS/du = f'((u - theta) / theta) / theta, per channel too."""
    theta = torch.tensor([0.5, 4.0]).view(2, 1)
    x = (X * theta).requires_grad_(True)  # [2, 7]: the same normalised membranes per channel
    parse_surrogate(spec).spike(x, theta).sum().backward()
    assert torch.allclose(x.grad, EXPECTED[spec] / theta, atol=1e-6)
    with pytest.raises(ConvertSNNError, match="needs the threshold"):
        parse_surrogate(spec).derivative(X)


def test_every_family_is_tested():
    assert {s.split(":")[0] for s in EXPECTED} == set(SURROGATE_FAMILIES)


@pytest.mark.parametrize(
    "spec",
    ["nope", "triangle:abc", "triangle:-1", "rect:0", "sigmoid:detach:4", "rect:1:abs:abs",
     "rect:1:2", "atan:2:relu"],
)  # fmt: skip
def test_bad_surrogate_spec_is_one_line_error(spec):
    with pytest.raises(ConvertSNNError) as err:
        parse_surrogate(spec)
    assert "\n" not in str(err.value)


def test_spec_round_trip():
    for surrogate in (Surrogate("exp", 0.5), Surrogate("rect", 0.25, True, True),
                      Surrogate("sigmoid", 20, detach_reset=True), Surrogate("ste", 1, True)):  # fmt: skip
        assert parse_surrogate(str(surrogate)) == surrogate
    assert str(parse_surrogate("sigmoid:20:detach")) == "sigmoid:20:detach"
    assert parse_surrogate("triangle:1") == Surrogate("triangle", 1.0)  # old files: relative
    assert parse_surrogate("rect:abs").g == 1.0 and parse_surrogate("rect:abs").absolute
