"""Prototype contrast, a contrast kind from outside the harness: `loss: {contrast: {kind: prototype}}`.

Its bank holds one prototype per class: the exponential moving average (`loss.contrast.prototype.momentum`)
of the class's unit region centers, over every rank's images. Each of this rank's region centers is a query
against the prototypes of the classes seen so far, its own class's the positive (InfoNCE at
`loss.contrast.tau`). The harness registers it from the entry point in pyproject.toml, checks its settings
block, builds, checkpoints, resumes and probes it, and records it in the summary like a built-in kind.
"""

from prototype_contrast.kind import KIND, PrototypeBank, PrototypeSettings, PrototypeTerm

__all__ = ["KIND", "PrototypeBank", "PrototypeSettings", "PrototypeTerm"]
