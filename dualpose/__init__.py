"""DualPose: dual-stream Transformer-GCN 3D pose lifting with CRL pretraining."""

__version__ = "0.1.0"
