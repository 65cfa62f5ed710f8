"""ResNet-18 (torchvision's, unchanged) and GradAttn's skip-free backbone.

The skip-free backbone keeps torchvision's layout and layer names (conv1, bn1, relu, maxpool,
layer1..layer4) so that per-layer gradient plots of the two line up; its blocks simply have
no identity/downsample branch.

Both start from PyTorch's default initialisation, as the authors' notebooks build them (their
own ResNet classes, no init code); torchvision's constructor would redraw the convs with
Kaiming-normal (fan_out), which changes their scale about 2.4x and so the effective step of Adam.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.models import resnet as tv_resnet

from gradattn.core.errors import ConfigError
from gradattn.core.settings import STEMS

# Channels of the five taps: after the stem's max-pool, then after layer1..layer4.
TAP_CHANNELS = (64, 64, 128, 256, 512)


def reset_convs(model: nn.Module) -> nn.Module:
    """Give every conv PyTorch's default initialisation (BN's default, 1 and 0, is
    torchvision's too)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            m.reset_parameters()
    return model


def stem_conv(*, in_channels: int, stem: str) -> nn.Conv2d:
    """The first conv: the paper's 7x7/2 ImageNet stem, or a 3x3/1 one for 28-32 px images."""
    if stem == "imagenet":
        return nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    if stem == "small":
        return nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    raise ConfigError(f"unknown stem {stem!r}; choose one of: {', '.join(STEMS)}")


def adapt_stem(model: nn.Module, *, in_channels: int, stem: str) -> nn.Module:
    """Fit a torchvision-layout model's stem to the input; untouched for 3 channels + imagenet."""
    if stem not in STEMS:
        raise ConfigError(f"unknown stem {stem!r}; choose one of: {', '.join(STEMS)}")
    if in_channels != 3 or stem != "imagenet":
        model.conv1 = stem_conv(in_channels=in_channels, stem=stem)
    if stem == "small":
        # 28-32 px images are too small to lose 4x resolution before layer1.
        model.maxpool = nn.Identity()
    return model


def resnet18(*, num_classes: int, in_channels: int, stem: str) -> nn.Module:
    """torchvision's ResNet-18 with PyTorch's default init, the stem fitted to the input."""
    model = tv_resnet.resnet18(weights=None, num_classes=num_classes)
    return reset_convs(adapt_stem(model, in_channels=in_channels, stem=stem))


class PlainBlock(nn.Module):
    """BasicBlock without its skip: conv3x3-BN-ReLU-conv3x3-BN-ReLU, nothing added back."""

    def __init__(self, *, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = tv_resnet.conv3x3(in_channels, out_channels, stride)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = tv_resnet.conv3x3(out_channels, out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))  # (B, C_out, H/stride, W/stride)
        return self.relu(self.bn2(self.conv2(out)))


def _plain_stage(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    """Two plain blocks, the first one carrying the stride (as in ResNet-18's stages)."""
    return nn.Sequential(
        PlainBlock(in_channels=in_channels, out_channels=out_channels, stride=stride),
        PlainBlock(in_channels=out_channels, out_channels=out_channels),
    )


class SkipFreeBackbone(nn.Module):
    """ResNet-18's layout with every skip removed; `taps(x)` gives the five feature maps."""

    def __init__(self, *, in_channels: int, stem: str) -> None:
        super().__init__()
        self.conv1 = stem_conv(in_channels=in_channels, stem=stem)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        # As adapt_stem: the small stem keeps full resolution into layer1.
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1) if stem == "imagenet" else nn.Identity()
        self.layer1 = _plain_stage(64, 64, stride=1)
        self.layer2 = _plain_stage(64, 128, stride=2)
        self.layer3 = _plain_stage(128, 256, stride=2)
        self.layer4 = _plain_stage(256, 512, stride=2)

    def taps(self, x: Tensor) -> list[Tensor]:
        """Feature maps after maxpool and after layer1..4; channels TAP_CHANNELS."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (B, 64, H/4, W/4) imagenet stem
        taps = [x]
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)  # (B, C_i, H_i, W_i), halving H, W from layer2 on
            taps.append(x)
        return taps

    def forward(self, x: Tensor) -> list[Tensor]:
        return self.taps(x)


def pool_taps(taps: list[Tensor]) -> list[Tensor]:
    """Global average pool of each tap: (B, C_i, H_i, W_i) -> (B, C_i)."""
    return [t.mean(dim=(2, 3)) for t in taps]


class NoSkipResNet18(SkipFreeBackbone):
    """Control `noskip18`: the skip-free backbone with ResNet-18's ordinary pooled head."""

    def __init__(self, *, num_classes: int, in_channels: int, stem: str) -> None:
        super().__init__(in_channels=in_channels, stem=stem)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(TAP_CHANNELS[-1], num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.taps(x)[-1]  # (B, 512, H/32, W/32)
        x = torch.flatten(self.avgpool(x), 1)  # (B, 512)
        return self.fc(x)  # (B, num_classes)
