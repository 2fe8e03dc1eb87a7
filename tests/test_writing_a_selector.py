"""The README's "Writing a selector" example runs as printed, and its selector behaves as stated:
the top-k of the raw inner product, attention as the NumPy reference, save/load by name."""

import json
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def readme_selector_example():
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Writing a selector"):]
    start = section.index("```python\n") + len("```python\n")
    return section[start:section.index("```", start)]


def test_readme_selector_example_runs_and_selects_the_raw_dot_top_k(tmp_path):
    example = readme_selector_example()
    assert len(example.strip().splitlines()) < 30
    # The example's own tokens, kept for the checks (it passes them inline).
    example = example.replace("layer(query, tf.random.normal([2, 512, 32])",
                              "layer(query, tokens := tf.random.normal([2, 512, 32])")
    checks = f"""
import json
import keras
import numpy as np
from sdattn import reference

names = sdattn.available_selectors()
dense_query, keys = tf.sparse.to_dense(query).numpy(), tokens.numpy()
expected = reference.exact_top_k(np.einsum("bmd,bnd->bmn", dense_query, keys)[:, None], 8)  # [B, 1, M, k]
np.testing.assert_array_equal(indices.numpy(), np.broadcast_to(expected, indices.shape))
ref_out, ref_scores = reference.selected_attention(dense_query, keys, layer.get_weights(), indices.numpy())
np.testing.assert_allclose(out.numpy(), ref_out, atol=1e-4)
np.testing.assert_allclose(scores.numpy(), ref_scores, atol=1e-5)

query_input, value_input = keras.Input((16, 32), sparse=True), keras.Input((512, 32))
model = keras.Model([query_input, value_input], layer(query_input, value_input))
model.save({str(tmp_path / 'model.keras')!r})
restored = keras.models.load_model({str(tmp_path / 'model.keras')!r})
np.testing.assert_allclose(restored([query, tokens]).numpy(), out.numpy(), atol=1e-6)
print("RESULT " + json.dumps({{"names": names, "selector": type(restored.layers[-1].selector).__name__}}))
"""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    # A fresh interpreter: registering "raw_dot" here would add it to this session's registry.
    completed = subprocess.run([sys.executable, "-c", example + checks], cwd=tmp_path, env=env,
                               capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(completed.stdout.split("RESULT ", 1)[1])
    assert "raw_dot" in result["names"] and result["selector"] == "RawDotSelector"
