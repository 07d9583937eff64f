"""difflbm optimize: each problem on a shrunken setting lowers its loss and writes its outputs."""

import json

import numpy as np
import pytest

from difflbm.optimize import run
from difflbm.optimize.topology import DensityFilter, volume_preserving

OUTPUTS = ("summary.json", "loss.png", "fields.png", "final_flow.vti", "iterate.npz")


def _check_outputs(out, result, factor):
    for name in OUTPUTS:
        assert (out / name).exists(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["loss_history"][0] == pytest.approx(result["initial_loss"])
    assert result["final_loss"] < result["initial_loss"] / factor
    return summary


def test_initial_state_small(tmp_path):
    """initial-state on a 16x16 grid: loss falls 100x, initial field found within 15%."""
    r = run("initial-state", resolution=16, steps=20, iterations=15, device="cpu", out=tmp_path)
    s = _check_outputs(tmp_path, r, 100)
    assert r["relative_error_initial_velocity"] < 0.15
    assert s["parameters"]["initial_velocity"] == "param_initial_velocity.npy"


def test_inflow_control_small(tmp_path):
    """inflow-control on a 8x24 channel: loss falls 100x and the inlet profile is close to the truth."""
    r = run("inflow-control", resolution=8, steps=40, iterations=20, device="cpu", out=tmp_path)
    _check_outputs(tmp_path, r, 100)
    assert r["relative_error_inlet_profile"] < 0.1


def test_topology_small(tmp_path):
    """topology on a 18x12 grid: pressure drop falls and the volume constraint holds."""
    r = run("topology", resolution=12, steps=60, iterations=16, device="cpu", out=tmp_path)
    _check_outputs(tmp_path, r, 1.2)
    assert r["solid_volume_final"] == pytest.approx(0.35, abs=1e-6)
    assert r["objective_final"] < r["objective_start"]


def test_viscosity_small_and_resume(tmp_path):
    """viscosity on 12x12: omega found within 1%; --resume continues from the saved iterate."""
    r = run("viscosity", resolution=12, steps=30, iterations=3, device="cpu", out=tmp_path)
    _check_outputs(tmp_path, r, 1.5)
    r2 = run("viscosity", resolution=12, steps=30, iterations=12, device="cpu", out=tmp_path, resume=True)
    assert r2["iterations"] > r["iterations"]
    assert r2["final_loss"] <= r["final_loss"]
    assert r2["relative_error_viscosity"] < 0.01
    hist = json.loads((tmp_path / "summary.json").read_text())["loss_history"]
    assert hist[0] == pytest.approx(r["initial_loss"])


def test_bad_options_name_the_option(tmp_path):
    """Bad options raise ValueError naming the option and its value."""
    with pytest.raises(ValueError, match="problem='nope'"):
        run("nope", out=tmp_path)
    with pytest.raises(ValueError, match="--resolution=2"):
        run("viscosity", resolution=2, out=tmp_path)
    with pytest.raises(ValueError, match="--iterations=0"):
        run("viscosity", iterations=0, out=tmp_path)
    with pytest.raises(ValueError, match="--precision='fp16'"):
        run("viscosity", precision="fp16", out=tmp_path)
    with pytest.raises(ValueError, match="--resume"):
        run("viscosity", resolution=12, steps=20, iterations=1, device="cpu", out=tmp_path / "none", resume=True)
    run("viscosity", resolution=12, steps=20, iterations=1, device="cpu", out=tmp_path / "v")
    with pytest.raises(ValueError, match="--steps=30"):
        run("viscosity", resolution=12, steps=30, iterations=2, device="cpu", out=tmp_path / "v", resume=True)


def test_filter_projection_chain_rule():
    """The filter + volume-preserving projection gradient matches central differences."""
    rng = np.random.default_rng(1)
    design = np.zeros((14, 10), bool)
    design[2:12] = True
    filt = DensityFilter(design, 2.3)
    w = rng.standard_normal(int(design.sum()))

    def objective(x):
        s, vjp, _ = volume_preserving(filt.forward(x)[design], 4.0, 0.35)
        return float((w * s).sum()), vjp, s

    x = rng.uniform(0, 1, design.shape)
    _, vjp, s = objective(x)
    assert s.mean() == pytest.approx(0.35)
    g = np.zeros(x.shape)
    g[design] = vjp(w)
    g = filt.backward(g)
    d = rng.standard_normal(x.shape) * design
    eps = 1e-6
    fd = (objective(x + eps * d)[0] - objective(x - eps * d)[0]) / (2 * eps)
    assert float((g * d).sum()) == pytest.approx(fd, rel=1e-6)
