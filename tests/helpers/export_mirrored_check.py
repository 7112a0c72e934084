"""Helper for test_export.py (run as a subprocess: logical devices must be set before TF starts).

Builds a small sync-BN SimCLRModel under a 2-replica MirroredStrategy, exports it from inside
and from outside the strategy scope, and checks each reloaded module against the model
(outputs in both modes, gradients). Prints OK on success.
"""

import os
import sys

import numpy as np
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

from tf_simclr.network.model import build_model  # noqa: E402
from tf_simclr.workflows import export  # noqa: E402


def main(out_dir):
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        model = build_model(resnet_depth=18, width_multiplier=0.25, global_bn=True, num_classes=2)
        model(np.zeros((2, 16, 16, 3), "float32"))
    assert isinstance(model.variables[0].value, tf.distribute.DistributedValues)
    x = np.random.RandomState(0).uniform(0, 1, (4, 16, 16, 3)).astype("float32")
    expected = model(x, training=False)
    base = os.path.join(out_dir, "saved_model")
    for step, inside in ((1, False), (2, True)):
        if inside:
            with strategy.scope():
                path = export.export_saved_model(model, base, step=step)
        else:
            path = export.export_saved_model(model, base, step=step)
        module = tf.saved_model.load(path)
        got = module(x)
        for k in expected:
            np.testing.assert_allclose(got[k], expected[k], atol=1e-4, rtol=1e-4, err_msg=k)
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(module(x, training=True)["proj_head_output"] ** 2)
        grads = tape.gradient(loss, module.trainable_variables)
        assert all(g is not None for g in grads)
    print("OK")


if __name__ == "__main__":
    main(sys.argv[1])
