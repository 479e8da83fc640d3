"""Landmark regressors: all map (B, 3, H, W) images to (B, 2N) coordinates in the normalised
frame ``(W/2 - x) / W`` (x0, y0, x1, y1, ...).

- ``landmarks_mobilenetv2``: the paper's student, MobileNetV2 (inverted residuals, linear
  bottlenecks, ReLU6) with a width multiplier, global average pooling and a linear head.
  ``last_channels`` (1280 in MobileNetV2) and ``blocks`` (a prefix of the standard stage list)
  shrink it for the CPU-sized default.
- ``landmarks_resnet``: the default teacher, a ResNet-style CNN (basic residual blocks,
  batch norm) with a width and a depth per stage. Why not EfficientNet, as the paper does:
  here everything trains from scratch in minutes on a CPU; dense 3x3 convolutions run several
  times faster per FLOP on a CPU than depthwise + squeeze-excitation blocks, residual CNNs
  train reliably from scratch at a high learning rate, and EfficientNet's advantage comes from
  ImageNet pre-training and long schedules, which cannot happen here. What the method needs
  from a teacher is that it be clearly more accurate than the student, which a wider, deeper
  dense CNN gives at the lowest wall-clock cost.
- ``landmarks_efficientnet``: the paper's teacher family (MBConv + squeeze-excitation + SiLU,
  compound width/depth scaling; width 1.2 / depth 1.4 is B3), used by the paper-scale recipe.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def _divisible(v: float, divisor: int = 8) -> int:
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * v else new


def _conv_bn(
    cin: int, cout: int, k: int, stride: int, groups: int = 1, act: type[nn.Module] | None = nn.ReLU6
) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if act is not None:
        layers.append(act(inplace=True) if act in (nn.ReLU, nn.ReLU6, nn.SiLU) else act())
    return nn.Sequential(*layers)


class _Head(nn.Module):
    """Global average pooling (or flattening) then a linear layer to 2N coordinates."""

    def __init__(self, channels: int, num_points: int, dropout: float, pool: bool, spatial: int) -> None:
        super().__init__()
        self.pool = pool
        features = channels if pool else channels * spatial * spatial
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(features, 2 * num_points)
        nn.init.normal_(self.fc.weight, std=1e-3)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.mean(dim=(2, 3)) if self.pool else x.flatten(1)
        return self.fc(self.dropout(x))


# --------------------------------------------------------------------------- MobileNetV2


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(_conv_bn(cin, hidden, 1, 1))
        layers += [_conv_bn(hidden, hidden, 3, stride, groups=hidden), _conv_bn(hidden, cout, 1, 1, act=None)]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x) if self.residual else self.block(x)


# expansion t, channels c, repeats n, stride s (MobileNetV2, Sandler et al. 2018, table 2)
MOBILENETV2_SETTINGS = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]


class MobileNetV2Landmarks(nn.Module):
    def __init__(
        self,
        num_points: int = 68,
        input_size: int = 224,
        width_mult: float = 1.0,
        last_channels: int = 1280,
        blocks: int = 7,
        stem_stride: int = 2,
        dropout: float = 0.0,
        head: str = "pool",
    ) -> None:
        super().__init__()
        if not 1 <= blocks <= len(MOBILENETV2_SETTINGS):
            raise ValueError(f"blocks must be 1..{len(MOBILENETV2_SETTINGS)}, got {blocks}")
        cin = _divisible(32 * width_mult)
        layers: list[nn.Module] = [_conv_bn(3, cin, 3, stem_stride)]
        stride_total = stem_stride
        for t, c, n, s in MOBILENETV2_SETTINGS[:blocks]:
            cout = _divisible(c * width_mult)
            for i in range(n):
                layers.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
            stride_total *= s
        last = _divisible(last_channels * max(1.0, width_mult)) if width_mult > 1 else last_channels
        layers.append(_conv_bn(cin, last, 1, 1))
        self.features = nn.Sequential(*layers)
        self.head = _Head(
            last, num_points, dropout, head == "pool", max(1, math.ceil(input_size / stride_total))
        )
        _init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


# --------------------------------------------------------------------------- ResNet


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _conv_bn(cin, cout, 3, stride, act=nn.ReLU), _conv_bn(cout, cout, 3, 1, act=None)
        )
        self.short = (
            nn.Identity() if stride == 1 and cin == cout else _conv_bn(cin, cout, 1, stride, act=None)
        )
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.short(x))


class ResNetLandmarks(nn.Module):
    def __init__(
        self,
        num_points: int = 68,
        input_size: int = 224,
        width: int = 64,
        layers: tuple[int, ...] | list[int] = (2, 2, 2, 2),
        stem_stride: int = 2,
        dropout: float = 0.0,
        head: str = "pool",
    ) -> None:
        super().__init__()
        mods: list[nn.Module] = [_conv_bn(3, width, 3, stem_stride, act=nn.ReLU)]
        cin = width
        stride_total = stem_stride
        for stage, n in enumerate(layers):
            cout = width * 2**stage
            for i in range(n):
                stride = 2 if (i == 0 and stage > 0) else 1
                mods.append(BasicBlock(cin, cout, stride))
                cin = cout
            stride_total *= 2 if stage > 0 else 1
        self.features = nn.Sequential(*mods)
        self.head = _Head(
            cin, num_points, dropout, head == "pool", max(1, math.ceil(input_size / stride_total))
        )
        _init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


# --------------------------------------------------------------------------- EfficientNet


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, squeeze, 1)
        self.expand = nn.Conv2d(squeeze, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean(dim=(2, 3), keepdim=True)
        return x * torch.sigmoid(self.expand(nn.functional.silu(self.reduce(s))))


class MBConv(nn.Module):
    def __init__(self, cin: int, cout: int, k: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(_conv_bn(cin, hidden, 1, 1, act=nn.SiLU))
        layers += [
            _conv_bn(hidden, hidden, k, stride, groups=hidden, act=nn.SiLU),
            SqueezeExcite(hidden, max(1, cin // 4)),
        ]
        layers.append(_conv_bn(hidden, cout, 1, 1, act=None))
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x) if self.residual else self.block(x)


# expansion, kernel, stride, channels, repeats (EfficientNet-B0, Tan & Le 2019)
EFFICIENTNET_B0 = [
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
]


class EfficientNetLandmarks(nn.Module):
    def __init__(
        self,
        num_points: int = 68,
        input_size: int = 224,
        width_mult: float = 1.2,
        depth_mult: float = 1.4,
        dropout: float = 0.3,
        head: str = "pool",
    ) -> None:
        super().__init__()
        cin = _divisible(32 * width_mult)
        layers: list[nn.Module] = [_conv_bn(3, cin, 3, 2, act=nn.SiLU)]
        stride_total = 2
        for t, k, s, c, n in EFFICIENTNET_B0:
            cout = _divisible(c * width_mult)
            for i in range(int(math.ceil(n * depth_mult))):
                layers.append(MBConv(cin, cout, k, s if i == 0 else 1, t))
                cin = cout
            stride_total *= s
        last = _divisible(1280 * width_mult)
        layers.append(_conv_bn(cin, last, 1, 1, act=nn.SiLU))
        self.features = nn.Sequential(*layers)
        self.head = _Head(
            last, num_points, dropout, head == "pool", max(1, math.ceil(input_size / stride_total))
        )
        _init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _init(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


MODELS = {
    "landmarks_mobilenetv2": (
        MobileNetV2Landmarks,
        "MobileNetV2 student (width multiplier), regresses 2N coordinates",
    ),
    "landmarks_resnet": (
        ResNetLandmarks,
        "ResNet-style teacher (width, blocks per stage), regresses 2N coordinates",
    ),
    "landmarks_efficientnet": (
        EfficientNetLandmarks,
        "EfficientNet-style teacher (B3: width 1.2, depth 1.4)",
    ),
}
