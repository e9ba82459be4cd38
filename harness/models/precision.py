"""Batch norm under DeepSpeed's bf16/fp16, which casts parameters but not running statistics."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


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
