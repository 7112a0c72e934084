"""tf_simclr: SimCLR (v1 and v2) in TensorFlow 2 / Keras 3."""

import os as _os
import sys as _sys

# TensorFlow enables its oneDNN CPU kernels by default only on CPUs with AVX-512-class features;
# elsewhere (AVX2 machines such as AMD EPYC) convolutions fall back to Eigen and a ResNet training
# step is about 1.6x slower (bench/bench_train_step.py). The switch is read when TensorFlow is
# first imported, so it only takes effect if tf_simclr is imported first; an explicit
# TF_ENABLE_ONEDNN_OPTS=0 is respected.
from tf_simclr import onednn as _onednn

if _notice := _onednn.switch_on_or_explain(_sys.modules, _os.environ, _onednn.onednn_enabled):
    # Too late to switch them on: TensorFlow started first, with them off, unasked.
    import logging as _logging

    _logging.getLogger("tf_simclr").warning(_notice)
del _notice

__version__ = "0.1.0"
