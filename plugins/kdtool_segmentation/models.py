"""Segmentation networks for LAD: a ResNet-18-style backbone with DeepLabV3 or PSPNet heads.

Written here because no pretrained weights can be downloaded. The backbone is ResNet-18's
layout (7x7 stem, max-pool, four stages of two basic blocks) with a ``width`` option (64 is
ResNet-18; the embedded default uses a slim one) and dilated last stages for an output stride
of 8 or 16, as DeepLabV3 and PSPNet use. The stem takes ``in_channels`` = 4 (image plus the
label channel): the LAD teacher reads a noised label map there, the student gets zeros, and
:func:`slice_stem_to_rgb` turns the student into a 3-channel network with identical outputs
for export. An auxiliary FCN head on stage 3 provides the auxiliary CE of both stages.

``forward(x)`` returns ``{"out": logits}`` (N, C, H, W) at the input resolution,
``"out_lowres"`` (the same logits at the output stride, before upsampling), and ``"aux"``
(input resolution) in training mode when the auxiliary head is on.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from kdtool.engine.options import forwards_options


def _conv_bn_relu(cin: int, cout: int, k: int = 3, dilation: int = 1) -> nn.Sequential:
    pad = dilation * (k - 1) // 2
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, padding=pad, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class BasicBlock(nn.Module):
    """ResNet basic block (two 3x3 convs), with stride or dilation."""

    def __init__(self, cin: int, cout: int, stride: int = 1, dilation: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, padding=dilation, dilation=dilation, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        return F.relu(out + identity, inplace=True)


class ResNet18Backbone(nn.Module):
    """ResNet-18 layout; returns (stage-3 features, stage-4 features)."""

    def __init__(self, in_channels: int = 4, width: int = 64, output_stride: int = 8) -> None:
        super().__init__()
        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
        self.in_channels = in_channels
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        widths = [width, width * 2, width * 4, width * 8]
        # Stage strides/dilations for the requested output stride (stem + pool give 4).
        plan = {
            8: [(1, 1), (2, 1), (1, 2), (1, 4)],
            16: [(1, 1), (2, 1), (2, 1), (1, 2)],
            32: [(1, 1), (2, 1), (2, 1), (2, 1)],
        }
        stages = []
        cin = width
        for cout, (stride, dilation) in zip(widths, plan[output_stride], strict=True):
            stages.append(
                nn.Sequential(BasicBlock(cin, cout, stride, dilation), BasicBlock(cout, cout, 1, dilation))
            )
            cin = cout
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.channels = widths

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.layer2(self.layer1(self.stem(x)))
        c3 = self.layer3(x)
        return c3, self.layer4(c3)


class ASPP(nn.Module):
    """DeepLabV3 atrous spatial pyramid pooling: 1x1, three dilated 3x3 and image pooling."""

    def __init__(self, cin: int, cout: int, rates: Sequence[int]) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            [_conv_bn_relu(cin, cout, 1)] + [_conv_bn_relu(cin, cout, 3, r) for r in rates]
        )
        self.image_pool = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(cin, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )
        self.project = _conv_bn_relu(cout * (len(rates) + 2), cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [b(x) for b in self.branches]
        outs.append(self.image_pool(x).expand(-1, -1, x.shape[2], x.shape[3]))
        return self.project(torch.cat(outs, dim=1))


class PyramidPooling(nn.Module):
    """PSPNet pyramid pooling module: average pooling into bins, 1x1 conv, upsample, concat."""

    def __init__(self, cin: int, cout: int, bins: Sequence[int]) -> None:
        super().__init__()
        self.bins = list(bins)
        self.stages = nn.ModuleList(
            [
                nn.Sequential(
                    nn.AdaptiveAvgPool2d(b),
                    nn.Conv2d(cin, cout, 1, bias=False),
                    nn.BatchNorm2d(cout),
                    nn.ReLU(inplace=True),
                )
                for b in self.bins
            ]
        )
        self.bottleneck = _conv_bn_relu(cin + cout * len(self.bins), cout, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[2:]
        outs = [x]
        for stage in self.stages:
            outs.append(F.interpolate(stage(x), size=size, mode="bilinear", align_corners=False))
        return self.bottleneck(torch.cat(outs, dim=1))


class SegmentationNet(nn.Module):
    """Backbone + context head (ASPP or PPM) + classifier, and an optional auxiliary head."""

    def __init__(
        self,
        *,
        head: str,
        num_classes: int,
        in_channels: int = 4,
        width: int = 64,
        output_stride: int = 8,
        head_channels: int = 256,
        aspp_rates: Sequence[int] | None = None,
        pool_bins: Sequence[int] = (1, 2, 3, 6),
        aux: bool = True,
        aux_channels: int | None = None,
        dropout: float = 0.1,
        label_assisted: bool = False,
    ) -> None:
        super().__init__()
        # A label-assisted model (a LAD teacher) reads a label channel as its 4th input; others
        # get zeros there and are exported with a 3-channel stem.
        self.label_assisted = label_assisted
        if label_assisted and in_channels != 4:
            raise ValueError("a label-assisted model needs in_channels=4 (image + label channel)")
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        self.num_classes = num_classes
        self.backbone = ResNet18Backbone(in_channels, width, output_stride)
        c3, c4 = self.backbone.channels[2], self.backbone.channels[3]
        if head == "aspp":
            rates = (
                list(aspp_rates) if aspp_rates is not None else [r * 8 // output_stride for r in (6, 12, 18)]
            )
            context: nn.Module = ASPP(c4, head_channels, rates)
            self.head = nn.Sequential(context, _conv_bn_relu(head_channels, head_channels, 3))
        elif head == "psp":
            self.head = nn.Sequential(PyramidPooling(c4, head_channels, pool_bins))
        else:
            raise ValueError(f"head must be 'aspp' or 'psp', got {head!r}")
        self.classifier = nn.Sequential(nn.Dropout2d(dropout), nn.Conv2d(head_channels, num_classes, 1))
        self.aux_head: nn.Module | None = None
        if aux:
            ac = aux_channels or max(head_channels // 2, 16)
            self.aux_head = nn.Sequential(
                _conv_bn_relu(c3, ac, 3), nn.Dropout2d(dropout), nn.Conv2d(ac, num_classes, 1)
            )

    @property
    def in_channels(self) -> int:
        return self.backbone.in_channels

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        size = x.shape[2:]
        c3, c4 = self.backbone(x)
        low = self.classifier(self.head(c4))
        result = {
            "out": F.interpolate(low, size=size, mode="bilinear", align_corners=False),
            "out_lowres": low,
        }
        if self.training and self.aux_head is not None:
            result["aux"] = F.interpolate(self.aux_head(c3), size=size, mode="bilinear", align_corners=False)
        return result


@forwards_options(SegmentationNet, skip=("head",))
def deeplabv3_r18(num_classes: int, **options: object) -> SegmentationNet:
    """DeepLabV3 (ASPP head) on a ResNet-18-style backbone; options as :class:`SegmentationNet`."""
    return SegmentationNet(head="aspp", num_classes=num_classes, **options)  # type: ignore[arg-type]


@forwards_options(SegmentationNet, skip=("head",))
def pspnet_r18(num_classes: int, **options: object) -> SegmentationNet:
    """PSPNet (pyramid pooling head) on a ResNet-18-style backbone; options as :class:`SegmentationNet`."""
    options.setdefault("head_channels", 512)
    return SegmentationNet(head="psp", num_classes=num_classes, **options)  # type: ignore[arg-type]


def slice_stem_to_rgb(model: SegmentationNet) -> SegmentationNet:
    """A copy of ``model`` whose stem takes 3 channels: the first three input channels of the
    stem convolution are kept and the 4th dropped. Its outputs equal those of the original
    fed the same image with an all-zero 4th channel, since a zero channel adds nothing to a
    convolution. The student is trained so, and exported so."""
    if model.in_channels == 3:
        return copy.deepcopy(model)
    if model.in_channels != 4:
        raise ValueError(f"can only slice a 4-channel stem, got {model.in_channels} channels")
    sliced = copy.deepcopy(model)
    stem = sliced.backbone.stem[0]
    # a quantization-aware student's stem is a fake-quantized wrapper (kdtool.quant.QuantLayer)
    # around the conv, its batch norm folded in (so the conv has a bias): slice the conv inside
    old = getattr(stem, "layer", stem)
    assert isinstance(old, nn.Conv2d)
    new = nn.Conv2d(
        3,
        old.out_channels,
        old.kernel_size,  # type: ignore[arg-type]
        old.stride,  # type: ignore[arg-type]
        old.padding,  # type: ignore[arg-type]
        bias=old.bias is not None,
    )
    with torch.no_grad():
        new.weight.copy_(old.weight[:, :3])
        if old.bias is not None:
            new.bias.copy_(old.bias)  # type: ignore[union-attr]
    new.to(old.weight.device, old.weight.dtype)
    if stem is old:
        sliced.backbone.stem[0] = new
    else:
        stem.layer = new
    sliced.backbone.in_channels = 3
    return sliced
