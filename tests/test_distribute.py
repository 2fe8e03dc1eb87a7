"""Scale-out test: the layer trains under `tf.distribute.MirroredStrategy` on 2 logical CPU devices
with the same losses and weights as on one device (run in a subprocess: devices are fixed at TF start)."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
from cases import SELECTORS, selector_config

# Logical devices must be configured before TensorFlow initialises its runtime, which this
# pytest process has already done; a fresh interpreter runs the comparison and prints JSON.
SCRIPT = r"""
import json, sys
import numpy as np
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])

import keras
import sdattn
from sdattn.selectors import cpu_top_k
from sdattn.layer import SparseDenseMultiHeadAttention

# Counts the compiled top-k's calls (looked up at run time), per selector below; these inputs
# are small enough that it would otherwise leave them to a NumPy argsort.
cpu_top_k._SORT_MAX_SCORES = 0
kernel_calls = []
_kernel = cpu_top_k._compiled_top_k
cpu_top_k._compiled_top_k = lambda *args, **kwargs: kernel_calls.append(1) or _kernel(*args, **kwargs)

# 20 keys for top_k = 5: rows of at least 4·k scores, so `dot` selects with the compiled CPU top-k.
BATCH, QUERIES, KEYS, DIM, STEPS = 8, 5, 20, 6, 6
rng = np.random.default_rng(0)
query = rng.normal(size=(BATCH, QUERIES, DIM)).astype("float32")
query[rng.random(query.shape) > 0.5] = 0.0
query[:, :, 0] += 0.5
value = rng.normal(size=(BATCH, KEYS, DIM)).astype("float32")
target = rng.normal(size=(BATCH, QUERIES, 3)).astype("float32")
sparse_query = tf.sparse.from_dense(query)
value, target = tf.constant(value), tf.constant(target)


def make_model(selector, initial=None, sparse=True):
    query_input = keras.Input(shape=(QUERIES, DIM), sparse=sparse)
    value_input = keras.Input(shape=(KEYS, DIM))
    layer = SparseDenseMultiHeadAttention(2, 4, 5, selector=selector, output_shape=3)
    model = keras.Model([query_input, value_input], layer(query_input, value_input))
    if initial is not None:
        model.set_weights(initial)
    return model


def batches():
    # Global batches of 4, in order: both runs see the same data.
    for start in range(0, BATCH, 4):
        yield (tf.sparse.slice(sparse_query, [start, 0, 0], [4, QUERIES, DIM]),
               value[start:start + 4], target[start:start + 4])


def train_custom_loop(selector, initial, strategy):
    # A custom loop: the canonical tf.distribute pattern, with the sparse query.
    with strategy.scope():
        model = make_model(selector, initial)
        optimizer = keras.optimizers.SGD(0.1)

    def replica_step(query_batch, value_batch, target_batch):
        with tf.GradientTape() as tape:
            prediction = model([query_batch, value_batch], training=True)
            per_example = tf.reduce_mean(tf.square(prediction - target_batch), axis=[1, 2])
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=4)
        gradients = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables))  # all-reduces (sum)
        return loss

    @tf.function
    def step(query_batch, value_batch, target_batch):
        per_replica = strategy.run(replica_step, args=(query_batch, value_batch, target_batch))
        return strategy.reduce("SUM", per_replica, axis=None)

    losses = []
    for _ in range(STEPS // 2):
        for query_batch, value_batch, target_batch in batches():
            replicas = strategy.num_replicas_in_sync
            per_replica = 4 // replicas
            # Replica r gets examples [r·2, r·2 + 2) of the global batch.
            inputs = strategy.experimental_distribute_values_from_function(
                lambda context: (
                    tf.sparse.slice(query_batch, [context.replica_id_in_sync_group * per_replica, 0, 0],
                                    [per_replica, QUERIES, DIM]),
                    value_batch[context.replica_id_in_sync_group * per_replica:][:per_replica],
                    target_batch[context.replica_id_in_sync_group * per_replica:][:per_replica]))
            losses.append(float(step(*inputs)))
    return model, losses


def train_fit(selector, initial, strategy):
    # Keras `fit`, with a dense query: Keras 3.15's distributed fit cannot take SparseTensor
    # batches (its symbolic build reduces the first batch with MEAN, which fails on one).
    with strategy.scope():
        model = make_model(selector, initial, sparse=False)
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    data = tf.data.Dataset.from_tensor_slices(((query, value), target)).batch(4).repeat()
    history = model.fit(data, steps_per_epoch=2, epochs=STEPS // 2, verbose=0, shuffle=False)
    return model, history.history["loss"]


def largest_difference(first, second):
    return max(float(np.max(np.abs(a - b))) for a, b in zip(first, second))


mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
one_device = tf.distribute.OneDeviceStrategy("/cpu:0")
results = {}
for name, selector in json.loads(sys.argv[1]).items():
    initial = make_model(selector).get_weights()
    for loop, train in (("loop", train_custom_loop), ("fit", train_fit)):
        single, single_loss = train(selector, initial, one_device)
        kernel_calls.clear()
        distributed, mirrored_loss = train(selector, initial, mirrored)
        results[f"{name}/{loop}"] = {
            "mirrored_kernel_calls": len(kernel_calls),
            "replicas": mirrored.num_replicas_in_sync,
            "single_loss": single_loss,
            "mirrored_loss": mirrored_loss,
            "max_weight_difference": largest_difference(single.get_weights(), distributed.get_weights()),
            "least_weight_change": min(float(np.max(np.abs(a - b))) for a, b in zip(initial, single.get_weights())),
        }
print("RESULTS " + json.dumps(results))
"""


@pytest.fixture(scope="module")
def distributed_results():
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": "",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    # Seeded configs: a selector drawing fresh randomness per run would select differently.
    configs = json.dumps({name: selector_config(name) for name in SELECTORS})
    completed = subprocess.run([sys.executable, "-c", SCRIPT, configs], cwd=ROOT, env=env,
                               capture_output=True, text=True, timeout=600)
    lines = [line for line in completed.stdout.splitlines() if line.startswith("RESULTS ")]
    assert completed.returncode == 0 and lines, completed.stderr[-4000:]
    return json.loads(lines[-1][len("RESULTS "):])


@pytest.mark.parametrize("loop", ["loop", "fit"], ids=["custom-loop-sparse", "fit-dense"])
@pytest.mark.parametrize("selector", SELECTORS)
def test_mirrored_strategy_trains_like_one_device(distributed_results, selector, loop):
    result = distributed_results[f"{selector}/{loop}"]
    assert result["replicas"] == 2
    assert result["least_weight_change"] > 0  # every weight array was trained
    assert len(result["mirrored_loss"]) == len(result["single_loss"]) >= 3
    if selector == "random":
        # Its seeded draw has the shape of the batch it sees: each replica sees half the batch,
        # so the keys (and losses) differ from one device's; it must still train.
        return
    for mirrored, single in zip(result["mirrored_loss"], result["single_loss"]):
        assert abs(mirrored - single) <= 1e-5 * max(1.0, abs(single))
    assert result["max_weight_difference"] < 1e-5
    if selector == "dot":  # its per-head top-k ran in the compiled kernel, on both replicas
        assert result["mirrored_kernel_calls"] >= 2 * 3
