"""The library boundary: what `import sdattn` pulls in, and `pip install .` into a fresh venv.
Each check runs in a fresh interpreter, so that modules the test session loaded do not count."""

import os
import pathlib
import re
import shutil
import subprocess
import sys
import sysconfig
import textwrap

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
APP_ONLY = ("pandas", "plotly", "streamlit", "faiss", "numba")


def _loaded_after(statement, modules):
    """The `modules` that `statement` leaves in `sys.modules` in a fresh interpreter."""
    code = f"import sys\n{statement}\nprint(','.join(m for m in {modules!r} if m in sys.modules))"
    completed = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                               env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, timeout=120)
    assert completed.returncode == 0, completed.stderr
    return [name for name in completed.stdout.strip().split(",") if name]


def test_import_sdattn_pulls_in_no_app_or_optional_dependency():
    assert _loaded_after("import sdattn", APP_ONLY + ("tensorflow",)) == []


def test_import_sdattn_inputs_does_not_import_tensorflow():
    assert _loaded_after("import sdattn.inputs; sdattn.inputs.generate_inputs('config_p', num_keys=64)",
                         ("tensorflow", "keras")) == []


def test_the_layer_and_selectors_load_numba_and_faiss_only_when_used():
    # (TensorFlow itself imports pandas, so it is not checked here.)
    statement = "import sdattn; sdattn.SparseDenseMultiHeadAttention; sdattn.available_selectors()"
    assert _loaded_after(statement, ("plotly", "streamlit", "faiss", "numba")) == []


@pytest.mark.parametrize("statement", ["import sdattn.backend", "from sdattn import folded_attention",
                                       "from sdattn import value_mixing", "from sdattn.selectors import cpu_top_k"])
def test_any_module_imported_first_loads_and_registers_the_keras_classes(statement):
    """A module that imports Keras before the layer exists (the backend, the kernels' wrappers)
    must not meet a half-imported backend when Keras's import registers the layer."""
    code = (f"{statement}\nimport keras\n"
            "assert keras.saving.get_registered_object('sdattn>SparseDenseMultiHeadAttention')")
    completed = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                               env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, timeout=120)
    assert completed.returncode == 0, completed.stderr


def _readme_first_example():
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Using the layer"):]
    start = section.index("```python\n") + len("```python\n")
    return section[start:section.index("```", start)]


@pytest.mark.install
def test_pip_install_into_a_fresh_venv_runs_the_readme_example(tmp_path):
    """`pip install .` (offline: --no-index, --no-deps) into a new venv, then the README's first
    example from another directory. The dependencies come from this interpreter's site-packages
    through a `.pth` file, after the venv's own, so `sdattn` must come from the install."""
    source = tmp_path / "source"  # a copy: pip builds in the tree, which must stay clean
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "sdattn", source / "sdattn", ignore=shutil.ignore_patterns("__pycache__"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    python = venv / "bin" / "python"
    venv_site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip()
    (pathlib.Path(venv_site) / "shared_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    env.pop("PYTHONPATH", None)
    install = subprocess.run([str(python), "-m", "pip", "install", "--no-index", "--no-deps",
                              "--no-build-isolation", "--quiet", str(source)],
                             capture_output=True, text=True, env=env, timeout=180)
    assert install.returncode == 0, install.stdout + install.stderr
    check = textwrap.dedent("""
        import pathlib, sys
        import sdattn
        assert pathlib.Path(sdattn.__file__).is_relative_to(pathlib.Path(sys.argv[1])), sdattn.__file__
    """) + _readme_first_example() + "\nprint(out.shape, scores.shape, indices.shape)\n"
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    ran = subprocess.run([str(python), "-c", check, venv_site], cwd=workdir, capture_output=True,
                         text=True, env=env, timeout=180)
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert ran.stdout.split("\n")[-2] == "(2, 16, 64) (2, 4, 16, 8) (2, 4, 16, 8)"


def test_import_sdattn_then_keras_loads_a_saved_model():
    """The layer is imported lazily, yet a `.keras` file loads right after `import sdattn`:
    importing Keras registers sdattn's classes."""
    path = ROOT / "tests" / "data" / "saved_before_selectors_move.keras"
    statement = f"import sdattn, keras; keras.saving.load_model({str(path)!r})"
    assert _loaded_after(statement, ("sdattn.layer", "sdattn.selectors.dot")) == ["sdattn.layer", "sdattn.selectors.dot"]


def _package(requirement):
    """The normalised package name of a requirement (`ml_dtypes==0.6.0` → `ml-dtypes`)."""
    return re.split(r"[<>=\[ ]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _pins(path):
    """`{name: version}` of a requirements file's `name==version` lines, and its `-r` includes."""
    pins, includes = {}, []
    for line in (ROOT / path).read_text().splitlines():
        line = line.split("#")[0].strip()
        if line.startswith("-r "):
            includes.append(line[3:].strip())
        elif "==" in line:
            pins[_package(line)] = line.split("==")[1].strip()
    return pins, includes


def test_requirements_pin_every_declared_dependency_once():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

    library, library_includes = _pins("requirements-lib.txt")
    runtime, runtime_includes = _pins("requirements.txt")
    # `make bench` installs the library's dependencies alone, `make run` those and the app's.
    assert library_includes == [] and runtime_includes == ["requirements-lib.txt"]
    declared = {extra: {_package(r) for r in requirements}
                for extra, requirements in project["optional-dependencies"].items()}
    assert {_package(r) for r in project["dependencies"]} | declared["ann"] <= set(library)
    assert declared["app"] <= set(runtime)
    assert not set(library) & set(runtime), "a package pinned in both files"
