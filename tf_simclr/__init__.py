"""tf_simclr: SimCLR (v1 and v2) for TensorFlow 2 / Keras 3."""

__version__ = '0.1.0'
