"""SimCLR models: ResNet encoders, projection / supervised heads, the full model."""

from tf_simclr.models.heads import ProjectionHead, SupervisedHead
from tf_simclr.models.resnet import (ENDPOINT_NAMES, RESNET_SPECS, batch_norm, build_resnet,
                                     count_encoder_params, count_params, output_channels)
from tf_simclr.models.simclr import SimCLRModel, build_model, build_model_for

__all__ = [
    'ENDPOINT_NAMES', 'RESNET_SPECS', 'ProjectionHead', 'SimCLRModel', 'SupervisedHead',
    'batch_norm', 'build_model', 'build_resnet', 'count_encoder_params', 'count_params',
    'output_channels'
]
