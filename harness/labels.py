"""Constants every layer shares: defined once, here."""

from __future__ import annotations

# The label of pixels that count for nothing: void in Cityscapes, "other" in ADE20K, unlabeled in
# COCO-Stuff, and the padding around a crop. It also marks an AllPixelBank slot holding no key.
IGNORE_INDEX = 255
