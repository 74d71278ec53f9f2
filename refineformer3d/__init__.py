"""RefineFormer3D: brain-tumour segmentation networks, BraTS data tools and a MONAI bundle."""

__version__ = "0.8.1"
