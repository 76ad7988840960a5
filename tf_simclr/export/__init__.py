"""TF Hub export of SimCLR encoders: the SavedModel, its model card, exports during training.

`export_encoder(model, export_dir)` writes a TF2 SavedModel in the TF Hub reusable
format (`hub_module`) with a model card (`model_card`); `export_during_training`
keeps the newest `model_dir/saved_model/<step>/` exports. The command line is
`python -m hub_export` (the `hub_export` package), which rebuilds a run's model
from its flags.json and calls `export_encoder`.
"""

from tf_simclr.export import model_card
from tf_simclr.export.hub_module import ENDPOINT_NAMES
from tf_simclr.export.hub_module import FEATURE_VECTOR_KEY
from tf_simclr.export.hub_module import INPUT_CONTRACT
from tf_simclr.export.hub_module import SERVING_SIGNATURE
from tf_simclr.export.hub_module import build_hub_module
from tf_simclr.export.hub_module import check_replaceable_export
from tf_simclr.export.hub_module import checked_images
from tf_simclr.export.hub_module import export_during_training
from tf_simclr.export.hub_module import export_encoder
from tf_simclr.export.hub_module import is_saved_model_export
from tf_simclr.export.hub_module import latest_export
from tf_simclr.export.model_card import read_card

__all__ = ['ENDPOINT_NAMES', 'FEATURE_VECTOR_KEY', 'INPUT_CONTRACT', 'SERVING_SIGNATURE',
           'build_hub_module', 'check_replaceable_export', 'checked_images',
           'export_during_training', 'export_encoder', 'is_saved_model_export',
           'latest_export', 'model_card', 'read_card']
