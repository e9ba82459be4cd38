"""Segmentation models: a timm features_only backbone, a decode head and an aux head.

Every head returns its logits and the feature map they are classified from, both
at the head's own stride (not upsampled): the losses upsample the logits, and the
contrastive loss pools the feature map under the logits' predictions.
"""

from __future__ import annotations

import difflib
import os
import socket
from pathlib import Path
from typing import Callable, NamedTuple
from urllib.parse import urlparse

import huggingface_hub
import safetensors.torch
import timm
import torch
import torch.nn.functional as F
from huggingface_hub.errors import EntryNotFoundError
from timm.models import FeatureInfo
from torch import Tensor, nn

from harness.recipe import ModelConfig, RecipeError

# DeepLabV3's rates (6, 12, 18) are for stride 16; they scale with the feature resolution.
ASPP_RATES: dict[int, tuple[int, ...]] = {8: (12, 24, 36), 16: (6, 12, 18), 32: (3, 6, 9)}
WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")
# timm's own preference order for weight files on the Hugging Face Hub.
_HUB_FILES = ("model.safetensors", "pytorch_model.bin")
_TRUE_ENV_VALUES = {"1", "ON", "YES", "TRUE"}
_HUB_PROBE_TIMEOUT_S = 3.0


class HeadOutput(NamedTuple):
    """What a head produces: class logits and the feature map they come from."""

    logits: Tensor  # [B,N,h,w]
    features: Tensor  # [B,C,h,w]


class SegOutput(NamedTuple):
    """A model's forward result; logits and features at the head's stride, not upsampled."""

    logits: Tensor  # [B,N,h,w]
    aux_logits: Tensor | None  # [B,N,h',w'] at the stage-3 stride, or None without aux head
    features: Tensor  # [B,C,h,w], C = head_channels
    backbone_features: Tensor  # last backbone stage


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
        self.project = nn.Sequential(conv_bn_relu(fused, out_channels, 1), nn.Dropout(0.1))

    def forward(self, x: Tensor) -> Tensor:
        """[B,Cin,h,w] -> [B,Cout,h,w]."""
        # Upsampling a 1x1 map bilinearly is a broadcast, so expand it.
        pooled = self.image_pool(x).expand(-1, -1, *x.shape[-2:])  # [B,C,1,1] -> [B,C,h,w]
        return self.project(torch.cat([branch(x) for branch in self.branches] + [pooled], dim=1))


class DeepLabV3Head(nn.Module):
    """ASPP on the last backbone stage, a 3x3 conv giving the feature map F, a 1x1 classifier."""

    def __init__(self, in_channels: int, head_channels: int, num_classes: int, atrous_rates: tuple[int, ...]) -> None:
        super().__init__()
        self.aspp = ASPP(in_channels, head_channels, atrous_rates)
        self.fuse = conv_bn_relu(head_channels, head_channels, 3)
        self.classifier = nn.Conv2d(head_channels, num_classes, 1)

    def forward(self, stages: list[Tensor]) -> HeadOutput:
        """Classify the deepest of the backbone `stages`."""
        features = self.fuse(self.aspp(stages[-1]))
        return HeadOutput(self.classifier(features), features)


class FCNHead(nn.Module):
    """conv3x3-BN-ReLU feature map, dropout, 1x1 classifier on the deepest given stage."""

    def __init__(self, in_channels: int, channels: int, num_classes: int) -> None:
        super().__init__()
        self.conv = conv_bn_relu(in_channels, channels, 3)
        self.dropout = nn.Dropout(0.1)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, stages: list[Tensor]) -> HeadOutput:
        """Classify the deepest of `stages` (the aux head gets all stages but the last)."""
        features = self.conv(stages[-1])
        return HeadOutput(self.classifier(self.dropout(features)), features)


class HRNetV2Head(nn.Module):
    """HRNetV2: every branch upsampled to the finest, concatenated, mixed by 1x1 conv, classified."""

    def __init__(self, in_channels: list[int], head_channels: int, num_classes: int) -> None:
        super().__init__()
        self.fuse = conv_bn_relu(sum(in_channels), head_channels, 1)
        self.classifier = nn.Conv2d(head_channels, num_classes, 1)

    def forward(self, stages: list[Tensor]) -> HeadOutput:
        """Fuse the branches `stages` (finest first) at the finest branch's resolution."""
        size = stages[0].shape[-2:]
        upsampled = [F.interpolate(stage, size=size, mode="bilinear", align_corners=False) for stage in stages]
        features = self.fuse(torch.cat(upsampled, dim=1))  # [B,sum(C_i),h,w] -> [B,C,h,w]
        return HeadOutput(self.classifier(features), features)


class SegmentationModel(nn.Module):
    """Backbone + decode head (+ aux head on stage 3); outputs stay at the head's stride."""

    def __init__(self, backbone: nn.Module, head: nn.Module, aux_head: nn.Module | None, feature_stride: int,
                 feature_dim: int) -> None:
        super().__init__()
        self.backbone, self.head, self.aux_head = backbone, head, aux_head
        self.feature_stride, self.feature_dim = feature_stride, feature_dim

    def forward(self, images: Tensor) -> SegOutput:
        """images [B,3,H,W] -> logits and features at H / feature_stride."""
        stages = self.backbone(images)
        logits, features = self.head(stages)
        # The second-to-last stage is ResNet's layer3 and HRNet's stride-16 branch.
        aux_logits = self.aux_head(stages[:-1]).logits if self.aux_head is not None else None
        return SegOutput(logits, aux_logits, features, stages[-1])


HeadFactory = Callable[[FeatureInfo, ModelConfig, int], tuple[nn.Module, int]]


def _deeplabv3(info: FeatureInfo, cfg: ModelConfig, num_classes: int) -> tuple[nn.Module, int]:
    """DeepLabV3 head on the last stage, at the backbone's output stride."""
    rates = ASPP_RATES[cfg.output_stride]
    return DeepLabV3Head(info.channels()[-1], cfg.head_channels, num_classes, rates), info.reduction()[-1]


def _fcn(info: FeatureInfo, cfg: ModelConfig, num_classes: int) -> tuple[nn.Module, int]:
    """FCN head on the last stage, at the backbone's output stride."""
    return FCNHead(info.channels()[-1], cfg.head_channels, num_classes), info.reduction()[-1]


def _hrnetv2(info: FeatureInfo, cfg: ModelConfig, num_classes: int) -> tuple[nn.Module, int]:
    """HRNetV2 head over all branches, at the finest branch's stride (4)."""
    return HRNetV2Head(info.channels(), cfg.head_channels, num_classes), info.reduction()[0]


HEADS: dict[str, HeadFactory] = {"deeplabv3": _deeplabv3, "fcn": _fcn, "hrnetv2": _hrnetv2}


def head_factory(name: str) -> HeadFactory:
    """The factory of head `name`; a KeyError lists the valid names."""
    try:
        return HEADS[name]
    except KeyError:
        raise KeyError(f"unknown head {name!r}; valid heads: {', '.join(sorted(HEADS))}") from None


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
    """Raise on a name timm does not know, suggesting close ones."""
    if timm.is_model(name):
        return
    close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else "; see timm.list_models()"
    raise RecipeError("model.backbone", f"timm has no model {name!r}{hint}")


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
    elif cfg.pretrained and _hub_repo(cfg.backbone) is None:
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


def _hub_repo(backbone: str) -> str | None:
    """The Hugging Face Hub repo holding timm's default pretrained weights for `backbone`."""
    pretrained_cfg = timm.models.get_pretrained_cfg(backbone)
    return pretrained_cfg.hf_hub_id if pretrained_cfg is not None else None


def _hub_offline() -> bool:
    """HF_HUB_OFFLINE, read now (huggingface_hub reads it once, at import)."""
    return os.environ.get("HF_HUB_OFFLINE", "").upper() in _TRUE_ENV_VALUES


def _hub_reachable() -> bool:
    """Whether the Hub endpoint accepts a connection: huggingface_hub retries for ~45 s otherwise."""
    url = urlparse(huggingface_hub.constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=_HUB_PROBE_TIMEOUT_S).close()
    except OSError:
        return False
    return True


def _offline_error(backbone: str, repo: str, reason: str) -> RecipeError:
    """The single message for pretrained weights that cannot be had."""
    return RecipeError("model.pretrained", (
        f"timm's pretrained weights for backbone {backbone} ({repo}) could not be downloaded ({reason}) "
        "and are not in the local Hugging Face cache; set model.weights: /path/to/file.pth|.safetensors, "
        "or model.pretrained: false"))


def _cached_hub_file(repo: str) -> Path | None:
    """timm's weight file for `repo` if the local Hugging Face cache holds it."""
    for filename in _HUB_FILES:
        cached = huggingface_hub.try_to_load_from_cache(repo, filename)
        if isinstance(cached, str):
            return Path(cached)
    return None


def _download_hub_file(backbone: str, repo: str) -> Path:
    """Download timm's weight file for `repo`, in timm's order of preference."""
    for filename in _HUB_FILES:
        try:
            return Path(huggingface_hub.hf_hub_download(repo, filename))
        except EntryNotFoundError:
            continue
        except Exception as error:  # network and Hub failures come in many types
            raise _offline_error(backbone, repo, f"{type(error).__name__}: {error}") from None
    raise _offline_error(backbone, repo, f"the repo has none of {', '.join(_HUB_FILES)}")


def pretrained_file(backbone: str) -> Path:
    """A local path to timm's pretrained weights of `backbone`: cached, else downloaded, else a fast error."""
    repo = _hub_repo(backbone)
    cached = _cached_hub_file(repo)
    if cached is not None:
        return cached
    if _hub_offline():
        raise _offline_error(backbone, repo, "HF_HUB_OFFLINE is set")
    if not _hub_reachable():
        raise _offline_error(backbone, repo, f"{huggingface_hub.constants.ENDPOINT} is unreachable")
    return _download_hub_file(backbone, repo)


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    """Tensors of a .safetensors or torch file; training checkpoints nest them under a key."""
    try:
        if path.suffix == ".safetensors":
            return safetensors.torch.load_file(path, device="cpu")
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # corrupt files fail in many ways (unpickling, header, truncation)
        message = f"{path} is not a readable weights file: {type(error).__name__}: {str(error).splitlines()[0]}"
        raise RecipeError("model.weights", message) from None
    return state.get("state_dict", state.get("model", state))


def _classification_only_keys(backbone_name: str, backbone: nn.Module) -> set[str]:
    """Keys of timm's full classifier model that the features_only backbone drops (fc.*, ...)."""
    with torch.device("meta"):
        full = timm.create_model(backbone_name, pretrained=False)
    return set(full.state_dict()) - set(backbone.state_dict())


def _listed(keys: list[str], limit: int = 8) -> str:
    """`keys` shortened for an error message."""
    more = f" ... and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def load_backbone_weights(backbone: nn.Module, backbone_name: str, path: Path) -> None:
    """Load a local state dict into `backbone`: every backbone key must be there; classifier keys are ignored."""
    ignored = _classification_only_keys(backbone_name, backbone)
    state = {key: value for key, value in _read_state_dict(path).items() if key not in ignored}
    try:
        result = backbone.load_state_dict(state, strict=False)
    except RuntimeError as error:  # shape mismatches
        raise RecipeError("model.weights", f"{path} does not fit {backbone_name}: {error}") from None
    if result.missing_keys or result.unexpected_keys:
        raise RecipeError("model.weights", (
            f"{path} does not fit {backbone_name}: missing keys [{_listed(result.missing_keys)}], "
            f"unexpected keys [{_listed(result.unexpected_keys)}]"))


def build_backbone(cfg: ModelConfig) -> nn.Module:
    """cfg's timm features_only backbone: random, timm-pretrained, or loaded from cfg.weights."""
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
    head, feature_stride = head_factory(cfg.head)(info, cfg, num_classes)
    aux_head = FCNHead(info.channels()[-2], cfg.aux_channels, num_classes) if cfg.aux_head else None
    return SegmentationModel(backbone, head, aux_head, feature_stride, cfg.head_channels)


class Float32BatchNorm2d(nn.BatchNorm2d):
    """Batch norm computed in fp32 whatever the dtype of its input and parameters.

    DeepSpeed's bf16/fp16 casts parameters but leaves running statistics in fp32,
    a mix that batch_norm rejects; fp32 statistics are also the numerically sound choice.
    """

    def forward(self, x: Tensor) -> Tensor:
        momentum = self.momentum if self.momentum is not None else 0.0
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average
                momentum = 1.0 / float(self.num_batches_tracked)
        use_batch_stats = self.training or self.running_mean is None
        normalised = F.batch_norm(
            x.float(), self.running_mean, self.running_var, self.weight.float(), self.bias.float(),
            use_batch_stats, momentum, self.eps,
        )
        return normalised.to(x.dtype)


def batchnorm_in_float32(model: nn.Module) -> nn.Module:
    """Make every plain BatchNorm2d of `model` compute in fp32, keeping its parameters and statistics."""
    for module in model.modules():
        if type(module) is nn.BatchNorm2d:
            module.__class__ = Float32BatchNorm2d  # same state, fp32 forward
    return model
