"""Batch norms synchronised across ranks, and computed in fp32 under DeepSpeed's bf16/fp16.

A model here holds torch's BatchNorm2d, SyncBatchNorm (model.sync_bn) and timm's norm +
activation layers (BatchNormAct2d in the EfficientNet, RegNet, ... families).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import timm.layers
import torch
from timm.layers import BatchNormAct2d, SyncBatchNormAct
from torch import Tensor, nn


@contextlib.contextmanager
def _float32_parameters(module: nn.Module) -> Iterator[None]:
    """Within the block, `module`'s own parameters read as fp32 copies; gradients flow back to the originals.

    The swap goes through the module's parameter table, as torch.func.functional_call does, but
    without calling the module again: DeepSpeed ZeRO-3's hooks gather its parameters once per call.
    """
    originals = dict(module._parameters)
    try:
        for name, parameter in originals.items():
            if parameter is not None and parameter.dtype != torch.float32:
                module._parameters[name] = parameter.float()
        yield
    finally:
        module._parameters.update(originals)


class Float32Norm(nn.Module):
    """Mixin: the batch norm's own forward (statistics, synchronisation, activation) computed in fp32.

    DeepSpeed's bf16/fp16 casts parameters but leaves running statistics in fp32, a mix that
    batch_norm rejects; fp32 statistics are also the numerically sound choice.
    """

    def forward(self, x: Tensor) -> Tensor:
        with _float32_parameters(self):
            return super().forward(x.float()).to(x.dtype)


class Float32BatchNorm2d(Float32Norm, nn.BatchNorm2d):
    """BatchNorm2d computed in fp32."""


class Float32SyncBatchNorm(Float32Norm, nn.SyncBatchNorm):
    """SyncBatchNorm computed in fp32 (its cross-rank statistics too)."""


class Float32BatchNormAct2d(Float32Norm, BatchNormAct2d):
    """timm's BatchNormAct2d (norm, dropout, activation) computed in fp32."""


class Float32SyncBatchNormAct(Float32Norm, SyncBatchNormAct):
    """timm's SyncBatchNormAct computed in fp32."""


# Each batch norm class and its fp32 twin; exact classes, since a subclass may compute differently.
FLOAT32_NORMS: dict[type[nn.Module], type[nn.Module]] = {
    nn.BatchNorm2d: Float32BatchNorm2d,
    nn.SyncBatchNorm: Float32SyncBatchNorm,
    BatchNormAct2d: Float32BatchNormAct2d,
    SyncBatchNormAct: Float32SyncBatchNormAct,
}


def batchnorm_in_float32(model: nn.Module) -> nn.Module:
    """Make every batch norm of `model` compute in fp32, keeping its parameters and statistics."""
    for module in model.modules():
        if type(module) in FLOAT32_NORMS:
            module.__class__ = FLOAT32_NORMS[type(module)]  # same state, fp32 forward
    return model


def synchronised_batch_norms(model: nn.Module) -> nn.Module:
    """`model` with every batch norm synchronised across ranks, timm's norm + activation layers keeping theirs.

    torch's convert_sync_batchnorm turns a BatchNormAct2d into a plain SyncBatchNorm, silently
    dropping its activation; timm's converter keeps it.
    """
    return timm.layers.convert_sync_batchnorm(model)
