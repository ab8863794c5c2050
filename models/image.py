"""Small residual CNN for grey or colour images (sklearn digits 8x8, clinic scans 16x16)."""

from __future__ import annotations

import torch
from torch import nn
from torch.ao.nn.quantized import FloatFunctional


class ResidualBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity (or 1x1 projection) shortcut.

    The shortcut addition goes through ``FloatFunctional`` so that the block can be
    statically quantised to INT8 in eager mode; in float mode it is a plain add.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        self.add = FloatFunctional()
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(self.add.add(out, self.shortcut(x)))

    def fusion_groups(self, prefix: str) -> list[list[str]]:
        """Conv-BN(-ReLU) groups to fuse before quantisation (folds BN into the conv)."""
        groups = [
            [f"{prefix}.conv1", f"{prefix}.bn1", f"{prefix}.relu1"],
            [f"{prefix}.conv2", f"{prefix}.bn2"],
        ]
        if isinstance(self.shortcut, nn.Sequential):
            groups.append([f"{prefix}.shortcut.0", f"{prefix}.shortcut.1"])
        return groups


class ImageCNN(nn.Module):
    """Conv stem, residual stages (each halving the resolution after the first), pooling.

    Parameters
    ----------
    in_channels
        1 for grey images, 3 for RGB.
    num_classes
        Number of output logits; 0 builds a feature extractor without a classifier
        (the multimodal model's image branch).
    widths
        Channels of each residual stage; stage ``i > 0`` downsamples by 2.
    dropout
        Dropout before the classifier.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        widths: tuple[int, ...] = (32, 64),
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if not widths:
            raise ValueError("widths must name at least one stage")
        self.stem_conv = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.stem_bn = nn.BatchNorm2d(widths[0])
        self.stem_relu = nn.ReLU()
        stages = []
        width = widths[0]
        for i, out in enumerate(widths):
            stages.append(ResidualBlock(width, out, stride=1 if i == 0 else 2))
            width = out
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(width, num_classes) if num_classes else None
        self.out_channels = width

    def features(self, image: torch.Tensor) -> torch.Tensor:
        """Feature map ``[B, C, h, w]``; the multimodal model reads it as patch tokens."""
        return self.stages(self.stem_relu(self.stem_bn(self.stem_conv(image))))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Return logits ``[B, num_classes]`` for ``image`` of shape ``[B, C, H, W]``."""
        if self.classifier is None:
            raise ValueError("this ImageCNN was built with num_classes=0 (features only)")
        pooled = self.flatten(self.pool(self.features(image)))
        return self.classifier(self.dropout(pooled))

    def fusion_groups(self) -> list[list[str]]:
        """Module-name groups for ``torch.ao.quantization.fuse_modules``."""
        groups = [["stem_conv", "stem_bn", "stem_relu"]]
        for i, block in enumerate(self.stages):
            assert isinstance(block, ResidualBlock)
            groups += block.fusion_groups(f"stages.{i}")
        return groups
