"""Segmentation models: timm backbones with DeepLabV3 / FCN / HRNetV2 heads.

    build.py      SegmentationModel, validate_model_config (fast, names the recipe key), build_model
    heads.py      the decode heads and the aux head
    weights.py    pretrained weights from the Hugging Face cache (fast offline errors) or local files
    precision.py  fp32 batch norm under DeepSpeed bf16/fp16
"""

from harness.models.build import (
    SegmentationModel,
    SegOutput,
    build_model,
    validate_model_config,
    weights_origin,
)
from harness.models.precision import batchnorm_in_float32

__all__ = [
    "SegOutput", "SegmentationModel", "batchnorm_in_float32", "build_model", "validate_model_config", "weights_origin",
]
