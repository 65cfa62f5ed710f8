"""Attention-augmented ResNet-18 baselines: SE-ResNet-18 and CBAM-ResNet-18.

Both are torchvision's `ResNet` with a `BasicBlock` subclass that reweights the residual
branch (after bn2, before the addition), as in Hu et al. (SE) and Woo et al. (CBAM). As in the
authors' notebooks (and both papers), the gate MLPs have no biases, and the models start from
the notebooks' init for these two: Kaiming-normal (fan_out) convs, BN 1/0, Linear N(0, 0.01).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.models import resnet as tv_resnet

from gradattn.models.resnet import adapt_stem

REDUCTION = 16
SPATIAL_KERNEL = 7


class SqueezeExcite(nn.Module):
    """Channel gate: GAP -> Linear(c, c/r) -> ReLU -> Linear(c/r, c) -> sigmoid -> scale."""

    def __init__(self, *, channels: int, reduction: int = REDUCTION) -> None:
        super().__init__()
        self.fc1 = nn.Linear(channels, channels // reduction, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(channels // reduction, channels, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        gate = self.fc2(self.relu(self.fc1(x.mean(dim=(2, 3)))))  # (B, C)
        return x * gate.sigmoid()[:, :, None, None]  # (B, C, H, W)


class ChannelGate(nn.Module):
    """CBAM channel attention: one shared MLP on the avg- and max-pooled vectors, summed."""

    def __init__(self, *, channels: int, reduction: int = REDUCTION) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(channels, channels // reduction, bias=False),
            nn.ReLU(inplace=True),
            nn.Linear(channels // reduction, channels, bias=False),
        )

    def forward(self, x: Tensor) -> Tensor:
        gate = self.mlp(x.mean(dim=(2, 3))) + self.mlp(x.amax(dim=(2, 3)))  # (B, C)
        return x * gate.sigmoid()[:, :, None, None]  # (B, C, H, W)


class SpatialGate(nn.Module):
    """CBAM spatial attention: [channel mean, channel max] -> 7x7 conv -> sigmoid -> scale."""

    def __init__(self, *, kernel_size: int = SPATIAL_KERNEL) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        maps = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * self.conv(maps).sigmoid()  # maps (B, 2, H, W) -> gate (B, 1, H, W)


class CBAM(nn.Module):
    """Channel gate, then spatial gate (the order Woo et al. found best)."""

    def __init__(self, *, channels: int, reduction: int = REDUCTION) -> None:
        super().__init__()
        self.channel = ChannelGate(channels=channels, reduction=reduction)
        self.spatial = SpatialGate()

    def forward(self, x: Tensor) -> Tensor:
        return self.spatial(self.channel(x))


class _GatedBasicBlock(tv_resnet.BasicBlock):
    """torchvision's BasicBlock with `self.gate` applied to the residual branch."""

    def __init__(self, *args, **kwargs) -> None:
        # ResNet._make_layer passes BasicBlock's positional arguments; keep its signature.
        super().__init__(*args, **kwargs)
        self.gate = self.make_gate(self.bn2.num_features)

    def make_gate(self, channels: int) -> nn.Module:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))  # (B, C, H', W')
        out = self.gate(self.bn2(self.conv2(out)))  # reweighted residual branch
        return self.relu(out + identity)


class SEBasicBlock(_GatedBasicBlock):
    def make_gate(self, channels: int) -> nn.Module:
        return SqueezeExcite(channels=channels)


class CBAMBasicBlock(_GatedBasicBlock):
    def make_gate(self, channels: int) -> nn.Module:
        return CBAM(channels=channels)


def _init_like_the_notebooks(model: nn.Module) -> nn.Module:
    """The SE/CBAM notebooks' init. Their CBAM MLP is two 1x1 convs, hence Kaiming there."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    for m in model.modules():
        if isinstance(m, ChannelGate):
            for layer in (m.mlp[0], m.mlp[2]):
                # Linear weight (out, in) has a 1x1 conv's fan_out: out.
                nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
    return model


def _gated_resnet18(block: type[_GatedBasicBlock], num_classes: int, in_channels: int, stem: str):
    model = tv_resnet.ResNet(block, [2, 2, 2, 2], num_classes=num_classes)
    return _init_like_the_notebooks(adapt_stem(model, in_channels=in_channels, stem=stem))


def se_resnet18(*, num_classes: int, in_channels: int, stem: str) -> nn.Module:
    """ResNet-18 with a squeeze-and-excitation gate (reduction 16) in every block."""
    return _gated_resnet18(SEBasicBlock, num_classes, in_channels, stem)


def cbam_resnet18(*, num_classes: int, in_channels: int, stem: str) -> nn.Module:
    """ResNet-18 with CBAM (reduction 16, 7x7 spatial kernel) in every block."""
    return _gated_resnet18(CBAMBasicBlock, num_classes, in_channels, stem)
