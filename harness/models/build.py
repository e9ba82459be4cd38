"""The segmentation model: a timm features_only backbone, a decode head and an aux head; checked before built."""

from __future__ import annotations

import difflib
from typing import NamedTuple

import timm
import torch
from timm.models import FeatureInfo
from torch import Tensor, nn

from harness.models.heads import FCNHead, head_factory
from harness.models.weights import (
    WEIGHT_SUFFIXES,
    hub_repo,
    load_backbone_weights,
    pretrained_file,
)
from harness.recipe import ModelConfig, RecipeError
from harness.results import file_sha256


class SegOutput(NamedTuple):
    """A model's forward result; logits and features at the head's stride, not upsampled."""

    logits: Tensor  # [B,N,h,w]
    aux_logits: Tensor | None  # [B,N,h',w'] at the stage-3 stride, or None without aux head
    features: Tensor  # [B,C,h,w], C = head_channels
    backbone_features: Tensor | None  # last backbone stage; None unless keep_backbone_features



class SegmentationModel(nn.Module):
    """Backbone + decode head (+ aux head on stage 3); outputs stay at the head's stride."""

    def __init__(self, backbone: nn.Module, head: nn.Module, aux_head: nn.Module | None, feature_stride: int,
                 feature_dim: int) -> None:
        super().__init__()
        self.backbone, self.head, self.aux_head = backbone, head, aux_head
        self.feature_stride, self.feature_dim = feature_stride, feature_dim
        self.channels_last = False  # set by build_model from model.channels_last
        # Whether forward returns the last backbone stage. Under native AMP Accelerate converts every output to
        # fp32: for a dilated ResNet-50 at 769 px that is a [8, 2048, 97, 97] copy per step that only a contrast
        # on the backbone's features (loss.contrast.feature: backbone) reads. The engine switches it off otherwise.
        self.keep_backbone_features = True

    def forward(self, images: Tensor) -> SegOutput:
        """images [B,3,H,W] -> logits and features at H / feature_stride."""
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        stages = self.backbone(images)
        logits, features = self.head(stages)
        # The second-to-last stage is ResNet's layer3 and HRNet's stride-16 branch.
        aux_logits = self.aux_head(stages[:-1]).logits if self.aux_head is not None else None
        return SegOutput(logits, aux_logits, features, stages[-1] if self.keep_backbone_features else None)



def is_hrnet(backbone: str) -> bool:
    """Whether `backbone` is one of timm's HRNets."""
    return timm.models.is_model_in_modules(backbone, ["hrnet"])


def _backbone_kwargs(cfg: ModelConfig) -> dict[str, object]:
    """timm.create_model keyword arguments for cfg's features_only backbone."""
    kwargs: dict[str, object] = {"features_only": True}
    if cfg.output_stride != 32:
        # 32 is every family's default; families without dilation reject the argument itself.
        kwargs["output_stride"] = cfg.output_stride
    if is_hrnet(cfg.backbone):
        # HRNetV2 fuses the raw branch outputs, not timm's default 'incre' channel expansion
        # (a classification-head part); index 0 is the stride-2 stem, which no head uses.
        kwargs |= {"feature_location": "", "out_indices": (1, 2, 3, 4)}
    return kwargs


def _probe_feature_info(cfg: ModelConfig) -> FeatureInfo:
    """Build cfg's backbone on the meta device (no memory, no init cost) for its feature info."""
    try:
        with torch.device("meta"):
            return timm.create_model(cfg.backbone, pretrained=False, **_backbone_kwargs(cfg)).feature_info
    except Exception as error:  # timm raises many types for a model it cannot build this way
        raise _build_error(cfg, error) from None


def _build_error(cfg: ModelConfig, error: Exception) -> RecipeError:
    """timm's refusal to build cfg's backbone, attributed to the stride or to the backbone."""
    # timm refuses a dilation by assertion, or the family has no output_stride argument at all.
    if isinstance(error, AssertionError) or "output_stride" in str(error):
        return _stride_error(cfg, "timm refuses it")
    return RecipeError("model.backbone", f"timm cannot build {cfg.backbone} as a features_only backbone: "
                                         f"{type(error).__name__}: {error}")


def _stride_error(cfg: ModelConfig, reason: str) -> RecipeError:
    """The error for a backbone that cannot give the requested output stride."""
    return RecipeError("model.output_stride", (
        f"{cfg.backbone} cannot give output stride {cfg.output_stride} with timm features_only ({reason}); "
        "dilated families (resnet, regnet, efficientnet, convnext, ...) give 8/16/32, "
        "families without dilation (hrnet, vgg, dla, densenet, ...) only their native stride, 32 for most "
        "(set model.output_stride: 32 for hrnet; its hrnetv2 head still predicts at stride 4)"))


def _check_backbone_name(name: str) -> None:
    """Raise on a name timm does not know, suggesting close ones; a pinned weights tag must be one of timm's."""
    if timm.is_model(name):
        _check_weights_tag(name)
        return
    close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else "; see timm.list_models()"
    raise RecipeError("model.backbone", f"timm has no model {name!r}{hint}")


def _check_weights_tag(name: str) -> None:
    """A name such as resnet50.tv_in1k pins timm's weights by tag: timm must have that tag."""
    architecture, _, tag = name.partition(".")
    tags = [listed.partition(".")[2] for listed in timm.list_pretrained(f"{architecture}.*")]
    if tag and tag not in tags:
        raise RecipeError("model.backbone", f"timm has no weights tagged {tag!r} for {architecture}; "
                                            f"its tags: {', '.join(tags) or 'none'}")


def _check_head(cfg: ModelConfig) -> None:
    """The hrnetv2 head needs HRNet's four parallel branches."""
    if cfg.head == "hrnetv2" and not is_hrnet(cfg.backbone):
        raise RecipeError("model.head", f"the hrnetv2 head needs an hrnet backbone, not {cfg.backbone}; "
                                        "use deeplabv3 or fcn")


def _check_weights(cfg: ModelConfig) -> None:
    """A local weights file must exist; pretrained: true needs timm to have weights."""
    if cfg.weights is not None:
        if not cfg.weights.is_file():
            raise RecipeError("model.weights", f"no such file: {cfg.weights}")
        if cfg.weights.suffix not in WEIGHT_SUFFIXES:
            raise RecipeError("model.weights", f"{cfg.weights}: expected one of {', '.join(WEIGHT_SUFFIXES)}")
    elif cfg.pretrained and cfg.pretrained_source == "timm" and hub_repo(cfg.backbone) is None:
        raise RecipeError("model.pretrained", f"timm has no pretrained weights on the Hub for {cfg.backbone}; "
                                              "set model.weights: /path/to/file or pretrained: false")


def validate_model_config(cfg: ModelConfig) -> None:
    """Raise RecipeError (naming the key) for a model config that cannot be built; fast."""
    _check_backbone_name(cfg.backbone)
    _check_head(cfg)
    _check_weights(cfg)
    reductions = _probe_feature_info(cfg).reduction()
    # Families without dilation may accept output_stride and silently ignore it.
    if reductions[-1] != cfg.output_stride:
        raise _stride_error(cfg, f"its last stage has stride {reductions[-1]}")



def weights_origin(cfg: ModelConfig) -> str:
    """Where the backbone's weights come from, for the summary: random, a timm tag, or a local file."""
    if cfg.weights is not None:  # a file's name need not say what it holds (a stand-in pretrained on another machine)
        return f"file:{cfg.weights.name} sha256:{file_sha256(cfg.weights)[:16]}"
    if cfg.pretrained:
        pretrained_cfg = timm.models.get_pretrained_cfg(cfg.backbone)
        return f"timm:{cfg.backbone.split('.')[0]}.{pretrained_cfg.tag}" if pretrained_cfg else f"timm:{cfg.backbone}"
    return "random"


def build_backbone(cfg: ModelConfig) -> nn.Module:
    """cfg's timm features_only backbone: random, timm-pretrained, or loaded from cfg.weights."""
    if cfg.pretrained and cfg.pretrained_source == "digits" and cfg.weights is None:
        raise ValueError("pretrained_source digits: resolve the stand-in's file into model.weights first")
    download = cfg.pretrained and cfg.weights is None
    # Handing timm the resolved file keeps it off the network (it would retry for ~45 s offline).
    overlay = {"file": str(pretrained_file(cfg.backbone))} if download else None
    backbone = timm.create_model(cfg.backbone, pretrained=download, pretrained_cfg_overlay=overlay,
                                 **_backbone_kwargs(cfg))
    if cfg.weights is not None:
        load_backbone_weights(backbone, cfg.backbone, cfg.weights)
    return backbone


def build_model(cfg: ModelConfig, num_classes: int) -> SegmentationModel:
    """The segmentation model of `cfg` predicting `num_classes` classes."""
    validate_model_config(cfg)
    backbone = build_backbone(cfg)
    info = backbone.feature_info
    head = head_factory(cfg.head)(info, cfg, num_classes)
    aux_head = FCNHead(info.channels()[-2], cfg.aux_channels, num_classes) if cfg.aux_head else None
    model = SegmentationModel(backbone, head.module, aux_head, head.stride, head.channels)
    if cfg.channels_last:
        model.channels_last = True
        model.to(memory_format=torch.channels_last)
    return model


