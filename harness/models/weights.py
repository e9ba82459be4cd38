"""Backbone weights: timm's pretrained files from the Hugging Face cache (fast errors offline), or local files."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlparse

import huggingface_hub
import safetensors.torch
import timm
import torch
from huggingface_hub.errors import EntryNotFoundError
from torch import Tensor, nn

from harness.ops import IMAGENET, ImageStatistics
from harness.recipe import RecipeError

WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")
# timm's own preference order for weight files on the Hugging Face Hub.
_HUB_FILES = ("model.safetensors", "pytorch_model.bin")
_TRUE_ENV_VALUES = {"1", "ON", "YES", "TRUE"}
_HUB_PROBE_TIMEOUT_S = 3.0


def hub_repo(backbone: str) -> str | None:
    """The Hugging Face Hub repo holding timm's default pretrained weights for `backbone`."""
    pretrained_cfg = timm.models.get_pretrained_cfg(backbone)
    return pretrained_cfg.hf_hub_id if pretrained_cfg is not None else None


def image_statistics(backbone: str) -> ImageStatistics:
    """The mean and std in timm's pretrained config of `backbone` (of its tag, when the name pins one).

    Random or locally loaded weights keep the architecture's convention; ImageNet's when timm has no config.
    """
    cfg = timm.models.get_pretrained_cfg(backbone)
    if cfg is None:
        return IMAGENET
    return ImageStatistics(tuple(cfg.mean), tuple(cfg.std))


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
    repo = hub_repo(backbone)
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


