"""Decode heads: DeepLabV3 (ASPP), FCN and HRNetV2, each returning logits and the feature map F.

Every head returns its logits and the feature map they are classified from, both
at the head's own stride (not upsampled): the losses upsample the logits, and the
contrastive loss pools the feature map under the logits' predictions.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from timm.models import FeatureInfo
from torch import Tensor, nn

from harness.recipe import ModelConfig

# DeepLabV3's rates (6, 12, 18) are for stride 16; they scale with the feature resolution.
ASPP_RATES: dict[int, tuple[int, ...]] = {8: (12, 24, 36), 16: (6, 12, 18), 32: (3, 6, 9)}


class HeadOutput(NamedTuple):
    """What a head produces: class logits and the feature map they come from."""

    logits: Tensor  # [B,N,h,w]
    features: Tensor  # [B,C,h,w]


# model.head_channels when a recipe leaves it unset, for the heads whose reference fixes no width
# from the backbone (DeepLabV3's ASPP and FCN); HRNetV2's is the sum of its branches.
DEFAULT_HEAD_CHANNELS = 256
# DeepLabV3 and FCN drop features before the classifier (mmsegmentation's dropout_ratio).
CLASSIFIER_DROPOUT = 0.1


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int, dilation: int = 1) -> nn.Sequential:
    """A bias-free conv (the BN supplies the bias), BatchNorm and ReLU, size-preserving."""
    padding = dilation * (kernel_size // 2)
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, dilation=dilation, bias=False)
    return nn.Sequential(conv, nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


class ASPP(nn.Module):
    """DeepLabV3 atrous spatial pyramid pooling, fused by a 1x1 projection."""

    def __init__(self, in_channels: int, out_channels: int, atrous_rates: tuple[int, ...]) -> None:
        super().__init__()
        atrous = [conv_bn_relu(in_channels, out_channels, 3, rate) for rate in atrous_rates]
        self.branches = nn.ModuleList([conv_bn_relu(in_channels, out_channels, 1), *atrous])
        self.image_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), conv_bn_relu(in_channels, out_channels, 1))
        fused = out_channels * (len(self.branches) + 1)
        self.project = conv_bn_relu(fused, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        """[B,Cin,h,w] -> [B,Cout,h,w]."""
        # Upsampling a 1x1 map bilinearly is a broadcast, with or without align_corners, so expand it.
        pooled = self.image_pool(x).expand(-1, -1, *x.shape[-2:])  # [B,C,1,1] -> [B,C,h,w]
        return self.project(torch.cat([branch(x) for branch in self.branches] + [pooled], dim=1))


class DeepLabV3Head(nn.Module):
    """ASPP on the last backbone stage, a 3x3 conv giving the feature map F, dropout, a 1x1 classifier.

    The dropout sits between F and the classifier, where DeepLabV3 has it, so the region
    centers pooled from F carry no dropout noise.
    """

    def __init__(self, in_channels: int, head_channels: int, num_classes: int, atrous_rates: tuple[int, ...]) -> None:
        super().__init__()
        self.aspp = ASPP(in_channels, head_channels, atrous_rates)
        self.fuse = conv_bn_relu(head_channels, head_channels, 3)
        self.dropout = nn.Dropout(CLASSIFIER_DROPOUT)
        self.classifier = nn.Conv2d(head_channels, num_classes, 1)

    def forward(self, stages: list[Tensor]) -> HeadOutput:
        """Classify the deepest of the backbone `stages`."""
        features = self.fuse(self.aspp(stages[-1]))
        return HeadOutput(self.classifier(self.dropout(features)), features)


class FCNHead(nn.Module):
    """conv3x3-BN-ReLU feature map, dropout, 1x1 classifier on the deepest given stage."""

    def __init__(self, in_channels: int, channels: int, num_classes: int) -> None:
        super().__init__()
        self.conv = conv_bn_relu(in_channels, channels, 3)
        self.dropout = nn.Dropout(CLASSIFIER_DROPOUT)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, stages: list[Tensor]) -> HeadOutput:
        """Classify the deepest of `stages` (the aux head gets all stages but the last)."""
        features = self.conv(stages[-1])
        return HeadOutput(self.classifier(self.dropout(features)), features)


class HRNetV2Head(nn.Module):
    """HRNetV2: every branch upsampled to the finest, concatenated, mixed by 1x1 conv, classified.

    The reference (HRNet-Semantic-Segmentation, mmsegmentation's fcn_hr48) keeps the
    concatenation's width (720 channels for W48) and has no dropout.
    """

    def __init__(self, in_channels: list[int], head_channels: int, num_classes: int, align_corners: bool) -> None:
        super().__init__()
        self.align_corners = align_corners
        self.fuse = conv_bn_relu(sum(in_channels), head_channels, 1)
        self.classifier = nn.Conv2d(head_channels, num_classes, 1)

    def forward(self, stages: list[Tensor]) -> HeadOutput:
        """Fuse the branches `stages` (finest first) at the finest branch's resolution."""
        size = stages[0].shape[-2:]
        upsampled = [F.interpolate(stage, size=size, mode="bilinear", align_corners=self.align_corners) for stage in stages]
        features = self.fuse(torch.cat(upsampled, dim=1))  # [B,sum(C_i),h,w] -> [B,C,h,w]
        return HeadOutput(self.classifier(features), features)


class DecodeHead(NamedTuple):
    """A built head, the stride it predicts at and the channels of its feature map F."""

    module: nn.Module
    stride: int
    channels: int


HeadFactory = Callable[[FeatureInfo, ModelConfig, int], DecodeHead]


def _deeplabv3(info: FeatureInfo, cfg: ModelConfig, num_classes: int) -> DecodeHead:
    """DeepLabV3 head on the last stage, at the backbone's output stride."""
    channels = cfg.head_channels or DEFAULT_HEAD_CHANNELS
    head = DeepLabV3Head(info.channels()[-1], channels, num_classes, ASPP_RATES[cfg.output_stride])
    return DecodeHead(head, info.reduction()[-1], channels)


def _fcn(info: FeatureInfo, cfg: ModelConfig, num_classes: int) -> DecodeHead:
    """FCN head on the last stage, at the backbone's output stride."""
    channels = cfg.head_channels or DEFAULT_HEAD_CHANNELS
    return DecodeHead(FCNHead(info.channels()[-1], channels, num_classes), info.reduction()[-1], channels)


def _hrnetv2(info: FeatureInfo, cfg: ModelConfig, num_classes: int) -> DecodeHead:
    """HRNetV2 head over all branches, at the finest branch's stride (4), as wide as the branches together."""
    channels = cfg.head_channels or sum(info.channels())
    head = HRNetV2Head(info.channels(), channels, num_classes, cfg.align_corners)
    return DecodeHead(head, info.reduction()[0], channels)


HEADS: dict[str, HeadFactory] = {"deeplabv3": _deeplabv3, "fcn": _fcn, "hrnetv2": _hrnetv2}


def head_factory(name: str) -> HeadFactory:
    """The factory of head `name`; a KeyError lists the valid names."""
    try:
        return HEADS[name]
    except KeyError:
        raise KeyError(f"unknown head {name!r}; valid heads: {', '.join(sorted(HEADS))}") from None

