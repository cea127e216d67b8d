"""medconv: CNN vs hierarchical ViT classifiers for whole-slide images and mammograms."""

__version__ = "0.1.0"
