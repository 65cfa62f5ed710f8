"""GradAttn: attention over a skip-free ResNet-18's depths, as a reproducible DVC pipeline."""

__version__ = "0.1.0"
