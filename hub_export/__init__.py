"""Exports SimCLR encoders as TF Hub reusable SavedModels (`python -m hub_export`)."""

from hub_export.export import ENDPOINT_NAMES
from hub_export.export import FEATURE_VECTOR_KEY
from hub_export.export import SERVING_SIGNATURE
from hub_export.export import build_hub_module
from hub_export.export import check_replaceable_export
from hub_export.export import export_during_training
from hub_export.export import export_encoder
from hub_export.export import is_saved_model_export
from hub_export.export import latest_export

__all__ = ['ENDPOINT_NAMES', 'FEATURE_VECTOR_KEY', 'SERVING_SIGNATURE', 'build_hub_module',
           'check_replaceable_export', 'export_during_training', 'export_encoder',
           'is_saved_model_export', 'latest_export']
