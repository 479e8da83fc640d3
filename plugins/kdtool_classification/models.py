"""Image classifiers registered by name: an MLP (no batch norm), a width-scaled CNN and a
small ResNet. Each takes ``num_classes``, ``in_channels`` and ``image_size``.

``dual_head: true`` gives the classifier two heads (DHO-style semi-supervised KD): in training
the model returns ``2 * num_classes`` logits, the label head's then the teacher head's (the task
trains the first on labels and the second on the teacher); in eval mode (and so in every
export) it returns ``dual_alpha * label + (1 - dual_alpha) * teacher`` logits.
"""

from __future__ import annotations

import torch
from torch import nn


class _Heads(nn.Module):
    """The final linear layer, single or dual."""

    def __init__(self, features: int, num_classes: int, dual: bool, alpha: float) -> None:
        super().__init__()
        self.dual = dual
        self.alpha = alpha
        self.num_classes = num_classes
        self.linear = nn.Linear(features, num_classes * (2 if dual else 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.linear(x)
        if not self.dual or self.training:
            return out
        label, teacher = out.split(self.num_classes, dim=-1)
        return self.alpha * label + (1 - self.alpha) * teacher


class MLP(nn.Module):
    """Flatten, hidden layers with GELU, linear head. No batch norm (a clean DDP reference)."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 1,
        image_size: int = 16,
        hidden: int = 128,
        depth: int = 2,
        dual_head: bool = False,
        dual_alpha: float = 0.5,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_channels * image_size * image_size
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.GELU()]
            width = hidden
        layers.append(_Heads(width, num_classes, dual_head, dual_alpha))
        self.net = nn.Sequential(*layers)

    def forward(self, x):  # type: ignore[no-untyped-def]
        return self.net(x)


def _conv_block(cin: int, cout: int, stride: int, norm: bool) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=not norm),
        nn.BatchNorm2d(cout) if norm else nn.Identity(),
        nn.ReLU(inplace=True),
    )


class CNN(nn.Module):
    """A VGG-style CNN: ``stages`` blocks of two 3x3 convolutions, widths ``base * 2^i * width``."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 1,
        image_size: int = 16,
        base: int = 16,
        width: float = 1.0,
        stages: int = 2,
        norm: bool = True,
        dropout: float = 0.0,
        dual_head: bool = False,
        dual_alpha: float = 0.5,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_channels
        for i in range(stages):
            cout = max(4, int(base * (2**i) * width))
            layers += [_conv_block(cin, cout, 1, norm), _conv_block(cout, cout, 2, norm)]
            cin = cout
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Dropout(dropout),
            _Heads(cin, num_classes, dual_head, dual_alpha),
        )

    def forward(self, x):  # type: ignore[no-untyped-def]
        return self.head(self.features(x))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):  # type: ignore[no-untyped-def]
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """A small ResNet: a 3x3 stem and ``len(blocks)`` stages of basic blocks."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 1,
        image_size: int = 16,
        base: int = 32,
        blocks: tuple[int, ...] | list[int] = (2, 2, 2),
        dual_head: bool = False,
        dual_alpha: float = 0.5,
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, base, 3, 1, 1, bias=False), nn.BatchNorm2d(base), nn.ReLU(inplace=True)
        )
        layers: list[nn.Module] = []
        cin = base
        for i, n in enumerate(blocks):
            cout = base * 2**i
            for j in range(n):
                layers.append(BasicBlock(cin, cout, 2 if (j == 0 and i > 0) else 1))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), _Heads(cin, num_classes, dual_head, dual_alpha)
        )

    def forward(self, x):  # type: ignore[no-untyped-def]
        return self.head(self.layers(self.stem(x)))


ARCHITECTURES = {
    "cls_mlp": (MLP, "MLP classifier (no batch norm)"),
    "cls_cnn": (CNN, "width-scaled VGG-style CNN classifier"),
    "cls_resnet": (ResNet, "small ResNet classifier"),
}
