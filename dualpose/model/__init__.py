"""The dual-stream Transformer-GCN lifter: spec, network, weights, export, model-info."""

from dualpose.model.backbone import DualPoseBackbone, DualPoseLifter, build_model
from dualpose.model.config import VARIANTS, ModelSpec, build_spec, spec_from_params
from dualpose.model.flip import flip_poses, flip_tta
from dualpose.model.weights import load_backbone_from, load_weights, save_weights

__all__ = [
    "VARIANTS", "DualPoseBackbone", "DualPoseLifter", "ModelSpec", "build_model", "build_spec",
    "flip_poses", "flip_tta", "load_backbone_from", "load_weights", "save_weights", "spec_from_params",
]
