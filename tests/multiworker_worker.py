"""One process of tests/test_multiworker.py: trains a small sdattn model for a few SGD steps, under
`MultiWorkerMirroredStrategy` when TF_CONFIG names a cluster, else on one device, and saves the result.

Usage: python tests/multiworker_worker.py OUTPUT.npz   (TF_CONFIG set: one worker of the cluster)
"""

import faulthandler
import json
import os
import sys

# Read when TensorFlow and Keras start: CPU only, on the TensorFlow backend (tf.distribute).
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# A hung collective (a peer that died or never connected) dumps every thread's stack to stderr
# and exits, rather than waiting for the parent's timeout with nothing to show.
HANG_TIMEOUT_S = float(os.environ.get("SDATTN_WORKER_TIMEOUT_S", "240"))
faulthandler.dump_traceback_later(HANG_TIMEOUT_S, exit=True)

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

# Three of these processes share CI's 2 cores: small thread pools keep them from thrashing.
tf.config.threading.set_inter_op_parallelism_threads(2)
tf.config.threading.set_intra_op_parallelism_threads(1)

import keras  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from sdattn import SparseDenseMultiHeadAttention  # noqa: E402

# 16 keys, top_k 4: selection matters (each query attends to a quarter of the keys).
EXAMPLES, QUERIES, KEYS, QUERY_DIM, VALUE_DIM, OUTPUT_DIM = 12, 5, 16, 10, 6, 3
GLOBAL_BATCH, TOP_K, LEARNING_RATE = 4, 4, 0.1
STEPS = EXAMPLES // GLOBAL_BATCH  # 3 global batches, each seen once, in order


def data():
    """The whole data set, the same in every process: (dense query, value, target) as NumPy."""
    rng = np.random.default_rng(0)
    query = rng.normal(size=(EXAMPLES, QUERIES, QUERY_DIM)).astype("float32")
    query[rng.random(query.shape) > 0.3] = 0.0  # ~70% zeros: a genuinely sparse query
    value = rng.normal(size=(EXAMPLES, KEYS, VALUE_DIM)).astype("float32")
    target = rng.normal(size=(EXAMPLES, QUERIES, OUTPUT_DIM)).astype("float32")
    return query, value, target


def make_model():
    """Sparse query and dense tokens into two attention layers (exact per-head `dot`, shared
    `cosine`), summed; the initial weights come from a fixed seed, so every process starts alike."""
    query_input = keras.Input(shape=(QUERIES, QUERY_DIM), sparse=True)
    value_input = keras.Input(shape=(KEYS, VALUE_DIM))
    outputs = []
    for selector in ("dot", "cosine"):
        layer = SparseDenseMultiHeadAttention(
            num_heads=2, key_dim=4, top_k=TOP_K, selector=selector, output_shape=OUTPUT_DIM,
            name=f"attention_{selector}")
        outputs.append(layer(query_input, value_input))
    model = keras.Model([query_input, value_input], keras.layers.Add()(outputs))
    rng = np.random.default_rng(1)
    model.set_weights([rng.normal(scale=0.5, size=w.shape).astype("float32")
                       for w in model.get_weights()])
    return model


def train(strategy):
    """A custom loop (distributed `fit` cannot take SparseTensor batches): STEPS SGD steps over the
    global batches in order, replica r taking examples [r·b, (r + 1)·b) of each global batch."""
    query, value, target = data()
    replicas = strategy.num_replicas_in_sync
    per_replica = GLOBAL_BATCH // replicas
    with strategy.scope():
        model = make_model()
        optimizer = keras.optimizers.SGD(LEARNING_RATE)
    initial = [w.copy() for w in model.get_weights()]

    def replica_step(query_batch, value_batch, target_batch):
        with tf.GradientTape() as tape:
            prediction = model([query_batch, value_batch], training=True)
            per_example = tf.reduce_mean(tf.square(prediction - target_batch), axis=[1, 2])
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=GLOBAL_BATCH)
        gradients = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables))  # all-reduce (sum)
        return loss

    @tf.function
    def step(query_batch, value_batch, target_batch):
        per_replica_loss = strategy.run(replica_step, args=(query_batch, value_batch, target_batch))
        return strategy.reduce("SUM", per_replica_loss, axis=None)

    losses = []
    for start in range(0, STEPS * GLOBAL_BATCH, GLOBAL_BATCH):
        def replica_inputs(context, start=start):
            first = start + context.replica_id_in_sync_group * per_replica
            rows = slice(first, first + per_replica)
            return (tf.sparse.from_dense(query[rows]), tf.constant(value[rows]),
                    tf.constant(target[rows]))

        inputs = strategy.experimental_distribute_values_from_function(replica_inputs)
        losses.append(float(step(*inputs)))

    # The keys each query selected at the end, per layer, on the first global batch: the
    # single-process run must make the same choices.
    sparse_query = tf.sparse.from_dense(query[:GLOBAL_BATCH])
    selected = {}
    for selector in ("dot", "cosine"):
        _, _, indices = model.get_layer(f"attention_{selector}")(
            sparse_query, tf.constant(value[:GLOBAL_BATCH]), return_attention_scores=True)
        selected[selector] = np.asarray(indices)
    return model, initial, losses, selected, replicas


def main(output_path):
    keras.utils.set_random_seed(0)
    cluster = json.loads(os.environ.get("TF_CONFIG", "{}"))
    if cluster:
        # RING: the collective implementation that runs on CPUs (NCCL needs GPUs). The timeout
        # makes a collective whose peer is gone fail instead of waiting forever.
        options = tf.distribute.experimental.CommunicationOptions(
            implementation=tf.distribute.experimental.CommunicationImplementation.RING,
            timeout_seconds=HANG_TIMEOUT_S / 2)
        strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    else:
        strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    model, initial, losses, selected, replicas = train(strategy)
    weights = model.get_weights()
    np.savez(output_path, replicas=replicas, losses=np.asarray(losses),
             names=np.asarray([variable.path for variable in model.weights]),
             **{f"initial_{i}": w for i, w in enumerate(initial)},
             **{f"weight_{i}": w for i, w in enumerate(weights)},
             **{f"selected_{name}": indices for name, indices in selected.items()})
    faulthandler.cancel_dump_traceback_later()


if __name__ == "__main__":
    main(sys.argv[1])
