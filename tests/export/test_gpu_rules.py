"""The GPU delegate's published rules (`stn_keras.export.gpu_rules`) on small graphs whose verdict
the rules spell out: TensorFlow's `gpu_compatibility.cc` accepts the first and rejects the others."""

import numpy as np
import pytest
import tensorflow as tf

from stn_keras.export import gpu_rules


def _flatbuffer(tmp_path, fn, *specs):
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [tf.function(fn).get_concrete_function(*specs)]
    )
    path = tmp_path / "m.tflite"
    path.write_bytes(converter.convert())
    return path


IMAGE = tf.TensorSpec([1, 8, 8, 3], tf.float32)
KERNEL = np.random.default_rng(0).normal(size=(3, 3, 3, 4)).astype("float32")


@pytest.mark.parametrize(
    "fn, specs, expected",
    [
        (lambda x: tf.nn.relu(tf.nn.conv2d(x, KERNEL, 1, "SAME")) * 2.0 + 1.0, [IMAGE], []),
        (lambda x: tf.round(x), [IMAGE], ["ROUND is not supported"]),
        (
            lambda x: tf.gather(tf.reshape(x, [-1, 3]), tf.constant([[0, 1], [2, 3]])),
            [IMAGE],
            ["GATHER has 2-D indices (1-D only)"],
        ),
        (
            lambda x: tf.gather(tf.reshape(x, [-1, 3]), tf.constant([0, 5], tf.int64)),
            [IMAGE],
            ["GATHER has INT64 indices (INT32 only)"],
        ),
        (
            lambda x, y, z: tf.add_n([x, y, z]),
            [IMAGE, IMAGE, IMAGE],
            ["ADD_N takes 2 inputs, not 3"],
        ),
        (
            lambda x: tf.cast(tf.floor(x), tf.int64),
            [IMAGE],
            ["CAST casts FLOAT32 to INT64"],
        ),
    ],
    ids=["conv-relu", "round", "gather-2d", "gather-int64", "add-n-3", "cast-int64"],
)
def test_rules_accept_and_reject_as_published(tmp_path, fn, specs, expected):
    assert gpu_rules.rejected_ops(_flatbuffer(tmp_path, fn, *specs)) == expected


def test_repeated_rejections_are_counted(tmp_path):
    path = _flatbuffer(tmp_path, lambda x: tf.round(x) + tf.round(2.0 * x), IMAGE)
    assert gpu_rules.rejected_ops(path) == ["ROUND is not supported (x2)"]
