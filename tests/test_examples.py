"""The runnable examples in examples/: each fits its model and the loss falls, on shrunken settings."""

import importlib.util
import math
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
# Small enough for a few seconds on 2 CPU cores; the larger rate makes up for the few iterations.
# At these settings both examples lowered the loss by about 70x; 10x leaves room for other platforms.
SMALL = ["--resolution", "10", "--steps", "80", "--iterations", "12", "--lr", "0.05", "--device", "cpu"]


def _load(name):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _check(result, capsys):
    out = capsys.readouterr().out
    assert "loss before" in out and "after" in out
    assert math.isfinite(result["final"]) and result["final"] < result["initial"] / 10


def test_torch_inlet_nn(capsys):
    """examples/torch_inlet_nn.py: Adam on a torch MLP lowers the downstream mismatch at least 10x."""
    pytest.importorskip("torch")
    _check(_load("torch_inlet_nn").main(SMALL), capsys)


def test_jax_optax_inlet(capsys):
    """examples/jax_optax_inlet.py: optax.adam on a JAX MLP lowers the mismatch at least 10x and
    leaves the jax_enable_x64 setting as it found it."""
    jax = pytest.importorskip("jax")
    pytest.importorskip("optax")
    before = jax.config.jax_enable_x64
    _check(_load("jax_optax_inlet").main(SMALL), capsys)
    assert jax.config.jax_enable_x64 == before


def test_torch_step_closure(capsys):
    """examples/torch_step_closure.py: a closure trained through difflbm's step op lowers the
    trajectory mismatch at least 10x (28x at these settings)."""
    pytest.importorskip("torch")
    small = ["--resolution", "10", "--steps", "8", "--iterations", "25", "--device", "cpu"]
    _check(_load("torch_step_closure").main(small), capsys)
