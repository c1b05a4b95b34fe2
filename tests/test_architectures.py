"""Every supported architecture converts, and its SNN approaches the ANN as T grows.

Tiny widths and random weights (BatchNorm statistics randomised so folding is exercised);
thresholds from max-norm, so the only error left is the rate-coding error, which must shrink.
"""

import importlib.util

import pytest
import timm
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from convertsnn.convert import convert
from convertsnn.errors import ConvertSNNError
from convertsnn.layers import Normalize
from convertsnn.models import create_model
from convertsnn.snn.pooling import SpikingMaxPool2d
from tests.conftest import randomise_batchnorm


def robustbench_architecture(module: str):
    """A module of robustbench/model_zoo/architectures, loaded from its file: importing the
    robustbench package itself needs the ``autoattack`` module, which pyautoattack does not
    provide under that name."""
    root = importlib.util.find_spec("robustbench").submodule_search_locations[0]
    path = f"{root}/model_zoo/architectures/{module}.py"
    spec = importlib.util.spec_from_file_location(f"_robustbench_{module}", path)
    loaded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loaded)
    return loaded


class Assorted(nn.Module):
    """Dropout, Identity, Flatten, AdaptiveAvgPool, ReLU6, Hardtanh(0, m), clamp, F.relu6."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = Normalize([0.5] * 3, [0.25] * 3)
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.act1 = nn.ReLU6()
        self.drop = nn.Dropout2d(0.2)
        self.skip = nn.Identity()
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.act2 = nn.Hardtanh(0.0, 2.0)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.flat = nn.Flatten()
        self.fc1 = nn.Linear(32, 16)
        self.fc2 = nn.Linear(16, 5)

    def forward(self, x):
        x = self.drop(self.act1(self.conv1(self.norm(x))))
        x = self.act2(self.conv2(self.skip(x)))
        x = F.relu6(torch.clamp(self.fc1(self.flat(self.pool(x))), min=0))
        return self.fc2(x)


def _model(name: str) -> nn.Module:
    """Architectures at test size (random weights)."""
    builders = {
        "vgg11_bn_maxpool": lambda: create_model("vgg11_bn", width=0.125, hidden=32),
        "vgg16_bn_avgpool": lambda: create_model("vgg16_bn", width=0.0625, hidden=16, pool="avg"),
        "vgg11_bn_64px": lambda: create_model("vgg11_bn", width=0.125, hidden=32, input_size=64),
        "resnet20_optionA": lambda: create_model("resnet20"),
        "resnet20_optionB": lambda: create_model("resnet20", shortcut="B"),
        "resnet2b": lambda: create_model("resnet2b"),
        "torchvision_resnet18": lambda: torchvision.models.resnet18(num_classes=10),
        "torchvision_resnet34": lambda: torchvision.models.resnet34(num_classes=10),
        "timm_resnet18": lambda: timm.create_model("resnet18", num_classes=10),
        "timm_resnet34": lambda: timm.create_model("resnet34", num_classes=10),
        "preact_resnet18": lambda: create_model("preact_resnet18", width=8, bn_before_fc=True),
        "wide_resnet_10_2": lambda: create_model("wide_resnet", depth=10, widen_factor=2),
        "densenet": lambda: create_model("densenet_cifar", growth=4, blocks=(2, 2, 2)),
        "torchvision_densenet": lambda: torchvision.models.DenseNet(
            growth_rate=4, block_config=(2, 2), num_init_features=8, bn_size=2, num_classes=10
        ),
        # timm's DenseNet: fused BatchNormAct2d layers (split before tracing)
        "timm_densenet": lambda: timm.models.densenet.DenseNet(
            growth_rate=4, block_config=(2, 2), num_classes=10, bn_size=2
        ),
        # timm's VGG: a ConvMlp head (7x7 conv) behind a shape branch (unfused before tracing)
        "timm_vgg": lambda: timm.models.vgg.VGG(
            [8, "M", 16, "M", 32, "M"], num_classes=10, mlp_ratio=0.0625, norm_layer=nn.BatchNorm2d
        ),
        "assorted": Assorted,
    }
    return builders[name]()


# ImageNet-style ResNets downsample 32x: 16x16 inputs keep them cheap (layer4 sees 1x1).
INPUT_SIZE = {name: 16 for name in ("torchvision_resnet18", "torchvision_resnet34")}
INPUT_SIZE |= {name: 16 for name in ("timm_resnet18", "timm_resnet34", "timm_densenet")}
INPUT_SIZE["torchvision_densenet"] = 16
INPUT_SIZE["timm_vgg"] = 56  # 7x7 features after its three pools, as ImageNet VGGs at 224
INPUT_SIZE["vgg11_bn_64px"] = 64  # TinyImageNet-sized VGG (2x2 features before the classifier)

ARCHITECTURES = [
    "vgg11_bn_maxpool",
    "vgg16_bn_avgpool",
    "vgg11_bn_64px",
    "resnet20_optionA",
    "resnet20_optionB",
    "resnet2b",
    "torchvision_resnet18",
    "torchvision_resnet34",
    "timm_resnet18",
    "timm_resnet34",
    "preact_resnet18",
    "wide_resnet_10_2",
    "densenet",
    "torchvision_densenet",
    "timm_densenet",
    "timm_vgg",
    "assorted",
]


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_conversion_and_fidelity(name):
    torch.manual_seed(0)
    ann = randomise_batchnorm(_model(name))
    size = INPUT_SIZE.get(name, 32)
    calib = torch.rand(8, 3, size, size)
    x = torch.rand(2, 3, size, size)
    snn = convert(ann, [(calib, torch.zeros(8))], timesteps=8, calibration="max")
    assert len(list(snn.neurons())) > 0
    with torch.no_grad():
        reference = ann(x)
        with snn.gradient("ann"):  # the same weights with ReLU: the ANN with BN folded
            assert torch.allclose(snn(x), reference, atol=1e-4 * reference.abs().max().item())
        errors = {}
        for steps in (4, 64):
            snn.timesteps = steps
            errors[steps] = ((snn(x) - reference).abs().mean() / reference.abs().mean()).item()
    assert errors[64] < 0.6 * errors[4], errors
    assert errors[64] < 0.5, errors


def test_stem_maxpool_of_torchvision_resnet_is_spiking():
    snn = convert(
        torchvision.models.resnet18(num_classes=10).eval(),
        [(torch.rand(2, 3, 16, 16), torch.zeros(2))],
        calibration="max",
    )
    assert sum(isinstance(m, SpikingMaxPool2d) for m in snn.body.modules()) == 1
    # in-place ReLU called twice per block: one neuron per call (stem + 2 per block)
    assert len(list(snn.neurons())) == 1 + 2 * 8


def test_unfoldable_batchnorm_is_kept_in_preactivation_nets():
    snn = convert(
        create_model("preact_resnet18", width=4).eval(),
        [(torch.rand(2, 3, 32, 32), torch.zeros(2))],
        calibration="max",
    )
    kept = [m for m in snn.body.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(kept) == 8  # bn1 of every block sits after a residual add


def test_preact_resnet18_matches_robustbench_keys_and_outputs():
    torch.manual_seed(0)
    theirs = randomise_batchnorm(robustbench_architecture("resnet").PreActResNet18())
    ours = create_model("preact_resnet18").eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(ours(x), theirs(x), atol=1e-5)


def test_wide_resnet_matches_robustbench_keys_and_outputs():
    WideResNet = robustbench_architecture("wide_resnet").WideResNet
    torch.manual_seed(0)
    theirs = randomise_batchnorm(WideResNet(depth=16, widen_factor=2, sub_block1=True))
    ours = create_model("wide_resnet", depth=16, widen_factor=2, sub_block1=True).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(ours(x), theirs(x), atol=1e-5)
    assert set(create_model("wrn28_10").state_dict()) == set(
        WideResNet(depth=28, widen_factor=10).state_dict()
    )


def test_vgg_input_size_must_fit_its_pools():
    with pytest.raises(ConvertSNNError, match="input_size must be a multiple of 32, got 48"):
        create_model("vgg11_bn", input_size=48)


def test_timm_vgg_below_its_head_size_is_a_one_line_error():
    ann = _model("timm_vgg")  # 32x32 inputs give 4x4 features, below its 7x7 head
    with pytest.raises(
        ConvertSNNError, match=r"cannot run on calibration images of shape \(3, 32, 32\)"
    ):
        convert(ann, [(torch.rand(4, 3, 32, 32), torch.zeros(4))], timesteps=4, calibration="max")
