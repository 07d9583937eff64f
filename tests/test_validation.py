"""Small CPU versions of the validation cases: Taylor-Green order, cavity vs Ghia, cylinder drag, 3D cavity mass."""

import numpy as np
import pytest

from difflbm.validation import run_case


@pytest.mark.parametrize("case", ["taylor-green-2d", "taylor-green-3d"])
def test_taylor_green_velocity_error_second_order(case):
    """Taylor-Green N = 16, 32, 64, Re fixed (diffusive scaling): velocity error order >= 1.8 (observed 2.10, 2.00)."""
    r = run_case(case, resolution=16, device="cpu")
    assert r["passed"], r
    assert min(r["orders"]) >= 1.8, r["orders"]
    assert r["levels"][-1]["rel_l2_velocity"] < 1e-4


def test_taylor_green_fixed_mach_levels_off():
    """At fixed Re and Ma (acoustic scaling) the error stops falling: N = 64 within 10 % of N = 32 (the floor)."""
    r = run_case("taylor-green-2d", resolution=16, device="cpu", scaling="acoustic")
    e32, e64 = (level["rel_l2_velocity"] for level in r["levels"][1:])
    assert abs(e64 / e32 - 1) < 0.1, r["levels"]
    assert not r["passed"]


def test_taylor_green_bad_scaling_named():
    """An unknown scaling raises, naming it and the allowed ones."""
    with pytest.raises(ValueError, match="scaling='convective'.*diffusive, acoustic"):
        run_case("taylor-green-2d", resolution=16, device="cpu", scaling="convective")


def test_cavity_re100_n32_near_ghia():
    """Cavity Re 100 at 32 cells stays within 0.02 U of Ghia (observed 0.009; 32 cells, loose bound)."""
    r = run_case("cavity", resolution=32, device="cpu")
    assert r["converged"]
    assert r["max_err"] <= 0.02, r
    assert abs(r["mass_per_cell"] - 1.0) < 1e-9


def test_cavity_bad_reynolds_named():
    """A Reynolds number without Ghia data raises, naming the value and the allowed ones."""
    with pytest.raises(ValueError, match="reynolds=250.*100, 400, 1000"):
        run_case("cavity", resolution=32, device="cpu", reynolds=250)


def test_cavity_too_coarse_for_reynolds_named():
    """Re 1000 on 32 cells needs omega >= 1.95 and raises, naming resolution and omega."""
    with pytest.raises(ValueError, match="resolution=32.*omega"):
        run_case("cavity", resolution=32, device="cpu", reynolds=1000)


def test_cylinder_2d1_drag_loose_band():
    """2D-1 at 20 cells across (D = 4.9 cells): c_D within 5.0..6.0 (observed 5.42; ref 5.58; loose as D is tiny)."""
    r = run_case("cylinder", resolution=20, device="cpu", case="2D-1")
    assert r["converged"]
    assert 5.0 <= r["c_D"] <= 6.0, r
    assert set(r["inside_reference"]) == {"c_D", "c_L"}


def test_cylinder_2d2_short_run_samples_forces():
    """The 2D-2 loop (chunks of an even number of steps between force samples) on a short, coarse run:
    the steps are a whole number of chunks, the recorded window is sampled, the coefficients finite."""
    r = run_case("cylinder", resolution=41, device="cpu", case="2D-2", max_steps=901)
    assert r["sample_every"] % 2 == 0 and r["steps"] % r["sample_every"] == 0 and r["steps"] >= 901
    assert 0 < r["recorded_steps"] <= r["steps"] // 3 + r["sample_every"]
    assert np.isfinite(r["c_D_max"]) and r["c_D_max"] > 0 and np.isfinite(r["c_L_min"])


def test_cylinder_bad_case_named():
    """An unknown benchmark name raises, naming it and the allowed ones."""
    with pytest.raises(ValueError, match="case='2D-3'.*2D-1, 2D-2"):
        run_case("cylinder", resolution=20, device="cpu", case="2D-3")


def test_cavity3d_runs_and_conserves_mass():
    """3D cavity (D3Q19, 12 cells) reaches a steady state with bounded velocity and mass kept to 1e-10."""
    r = run_case("cavity-3d", resolution=12, device="cpu")
    assert r["converged"]
    assert r["mass_drift"] < 1e-10
    assert r["max_abs_u"] <= 1.0 + 1e-6
    u = np.array(r["u_centreline"])
    # the lid drags the top forward and the return flow runs backward below it
    assert u[-1] > 0.5 and u.min() < -0.1


def test_cavity3d_bad_lattice_named():
    """A 2D lattice for the 3D cavity raises, naming it and the allowed ones."""
    with pytest.raises(ValueError, match="lattice='D2Q9'.*D3Q19, D3Q27"):
        run_case("cavity-3d", resolution=8, device="cpu", lattice="D2Q9")
