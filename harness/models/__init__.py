"""Segmentation models: timm backbones with DeepLabV3 / FCN / HRNetV2 heads.

    build.py      SegmentationModel, validate_model_config (fast, names the recipe key), build_model
    heads.py      the decode heads and the aux head
    weights.py    pretrained weights from the Hugging Face cache (fast offline errors) or local files, and
                  the image statistics of the backbone's pretraining
    norms.py      batch norms synchronised across ranks, and in fp32 under DeepSpeed bf16/fp16
"""

from harness.models.build import (
    SegmentationModel,
    SegOutput,
    build_model,
    validate_model_config,
    weights_origin,
)
from harness.models.norms import batchnorm_in_float32, synchronised_batch_norms
from harness.models.weights import image_statistics

__all__ = [
    "SegOutput", "SegmentationModel", "batchnorm_in_float32", "build_model", "image_statistics", "synchronised_batch_norms",
    "validate_model_config", "weights_origin",
]
