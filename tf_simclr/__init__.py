"""tf_simclr: SimCLR (v1 and v2) for TensorFlow 2 / Keras 3.

Importing this package before TensorFlow turns on TensorFlow's oneDNN CPU kernels
(`TF_ENABLE_ONEDNN_OPTS=1`) unless the variable is already set. TF 2.21 enables them by
default only on some newer x86 CPUs; on an AVX2 CPU they make the ResNet-18 pretraining
step about 1.2x faster (docs/speed.md). Set `TF_ENABLE_ONEDNN_OPTS=0` to keep
TensorFlow's Eigen kernels. The variable has no effect once TensorFlow is imported.
"""

import os

os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '1')

__version__ = '0.1.0'
