"""Scale-out across processes: two worker processes on localhost train the layer under
`tf.distribute.MultiWorkerMirroredStrategy` to the same weights as one process on the same global batch.

Each process runs tests/multiworker_worker.py (TF_CONFIG set for the two workers, unset for the
single-process reference). Never skipped: a cluster that cannot start fails the test, with every
process's stderr in the message.
"""

import contextlib
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
WORKER_SCRIPT = ROOT / "tests" / "multiworker_worker.py"
WORKERS = 2
# Whole-run limit for the three processes (they take ~15 s). Each worker also dumps its stacks
# and exits by itself after 240 s (SDATTN_WORKER_TIMEOUT_S): a hang shows where it hung, and a
# worker outlives even a killed pytest by 4 minutes at most.
TIMEOUT_S = 300
# Ports are picked free, then released for TensorFlow to bind, so another process may take one
# in between: a start that fails on a taken port is retried with fresh ports.
PORT_ATTEMPTS = 3
PORT_TAKEN = "Could not start gRPC server"  # what TensorFlow logs when its port is bound already
# float32. The distributed step sums two half-batch gradients in the all-reduce where the single
# process computes the global batch's gradient in one pass: the same terms added in another
# order, a few ulps apart (measured: 1.2e-7 on weights of order 1 after the three steps, 2.4e-7
# on the losses). 1e-5 leaves ~100× room for other CPUs and thread counts, and is still far below
# what one different selection moves (top_k 4 → 5 moves a weight by 4e-2).
WEIGHT_ATOL = 1e-5
LOSS_RTOL = 1e-5


def _free_ports(count):
    """`count` distinct ports free on every interface (TensorFlow binds 0.0.0.0) when called."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
                   for _ in range(count)]
        for sock in sockets:  # all bound at once, so the ports are distinct
            sock.bind(("", 0))
        return [sock.getsockname()[1] for sock in sockets]


def _tail(path, chars=6000):
    with contextlib.suppress(OSError):
        return path.read_text(errors="replace")[-chars:]
    return "<no output>"


def _stop(process):
    """Kills the process and anything it started (its own session), then reaps it."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def _run_processes(tmp_path, attempt):
    """Runs the two workers and the single-process reference at once.

    Returns `(result paths, None)`, or `(None, (message with every process's output, whether a
    port was taken))`. The first failure kills the others: a worker whose peer is gone would
    otherwise wait in its collective until the timeout.
    """
    ports = _free_ports(WORKERS)
    cluster = {"worker": [f"localhost:{port}" for port in ports]}
    # tf.distribute drives Keras's TensorFlow backend, whichever backend this pytest run uses.
    base_env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "2",
                "CUDA_VISIBLE_DEVICES": "",
                "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    base_env.pop("TF_CONFIG", None)
    envs = {f"worker{index}": {**base_env, "TF_CONFIG": json.dumps(
        {"cluster": cluster, "task": {"type": "worker", "index": index}})} for index in range(WORKERS)}
    envs["single"] = base_env
    outputs = {name: tmp_path / f"{name}-{attempt}.npz" for name in envs}
    logs = {name: tmp_path / f"{name}-{attempt}.log" for name in envs}
    processes, timed_out = {}, False
    deadline = time.monotonic() + TIMEOUT_S
    try:
        for name, env in envs.items():
            with open(logs[name], "w") as log:
                processes[name] = subprocess.Popen(
                    [sys.executable, str(WORKER_SCRIPT), str(outputs[name])], cwd=ROOT, env=env,
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    start_new_session=True)
        while any(process.poll() is None for process in processes.values()):
            if any(process.poll() not in (None, 0) for process in processes.values()):
                break
            if time.monotonic() > deadline:
                timed_out = True
                break
            time.sleep(0.2)
    finally:
        for process in processes.values():
            _stop(process)
    codes = {name: process.returncode for name, process in processes.items()}
    if all(code == 0 for code in codes.values()) and all(path.exists() for path in outputs.values()):
        return outputs, None
    report = "\n\n".join(f"--- {name} (exit {codes[name]}), TF_CONFIG={envs[name].get('TF_CONFIG')}\n"
                         f"{_tail(logs[name])}" for name in processes)
    summary = f"timed out after {TIMEOUT_S} s" if timed_out else "failed"
    port_taken = any(PORT_TAKEN in _tail(log, 100_000) for log in logs.values())
    return None, (f"{summary}: exit codes {codes}\n{report}", port_taken)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("multiworker")
    for attempt in range(PORT_ATTEMPTS):
        outputs, failure = _run_processes(tmp_path, attempt)
        if outputs is not None:
            return {name: dict(np.load(path)) for name, path in outputs.items()}
        message, port_taken = failure
        if not port_taken:
            break
    pytest.fail(f"MultiWorkerMirroredStrategy run {message}", pytrace=False)


def _weights(result):
    return [result[f"weight_{i}"] for i in range(sum(key.startswith("weight_") for key in result))]


def test_two_worker_processes_train_to_the_weights_of_one_process(results):
    single, workers = results["single"], [results[f"worker{i}"] for i in range(WORKERS)]
    assert int(single["replicas"]) == 1
    assert all(int(worker["replicas"]) == WORKERS for worker in workers)
    # Every weight array moved, so the comparison below covers all of them; but the key bias,
    # whose gradient is zero in exact arithmetic: it adds the same q·b to every key's logit, and
    # the softmax ignores a constant shift (as in Keras MHA).
    initial = [single[f"initial_{i}"] for i in range(len(_weights(single)))]
    for name, before, after in zip(single["names"], initial, _weights(single), strict=True):
        if not str(name).endswith("key/bias"):
            assert np.max(np.abs(after - before)) > 1e-3, name
    for worker in workers:
        np.testing.assert_allclose(worker["losses"], single["losses"], rtol=LOSS_RTOL)
        for distributed, reference in zip(_weights(worker), _weights(single), strict=True):
            np.testing.assert_allclose(distributed, reference, rtol=0, atol=WEIGHT_ATOL)
        for selector in ("dot", "cosine"):
            np.testing.assert_array_equal(worker[f"selected_{selector}"], single[f"selected_{selector}"])


def test_the_workers_hold_identical_mirrored_weights(results):
    # The all-reduce gives every worker the same summed gradient, so the copies never drift apart.
    first, second = (_weights(results[f"worker{i}"]) for i in range(WORKERS))
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)
