"""Read models written by the reference SimCLR TF2 code (google-research/simclr, ``tf2/``) as data.

Two formats, both holding the reference's Keras attribute tree:

* its SavedModel export (``build_saved_model``; every published SimCLR v1/v2 model): the
  variables live in ``saved_model/variables/variables``, a checkpoint whose object graph names
  each variable's place in the model (``model/resnet_model/block_groups/0/layers/1/...``);
* its training checkpoints ``ckpt-N`` (``tf.train.Checkpoint(model, global_step, optimizer)``),
  which add the LARS momentum slots and the step.

Nothing here runs the SavedModel's program: the object graph and the saved function graphs are
parsed as protocol buffers, the values are read with ``tf.train.load_checkpoint``. From the
variables' places and shapes :func:`infer_architecture` finds the network (depth, width,
selective kernels, stem, projection head, classes, where the supervised head sits) and
:func:`weight_mapping` pairs every reference variable with a tf_simclr weight path.
"""

from tf_simclr.reference.architecture import Architecture, infer_architecture
from tf_simclr.reference.files import (
    ReferenceFormatError,
    ReferenceSource,
    ReferenceVariable,
    locate,
    read_source,
)
from tf_simclr.reference.mapping import check_mapping, weight_mapping

__all__ = [
    "Architecture",
    "ReferenceFormatError",
    "ReferenceSource",
    "ReferenceVariable",
    "check_mapping",
    "infer_architecture",
    "locate",
    "read_source",
    "weight_mapping",
]
