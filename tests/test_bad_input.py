"""Bad input raises an exception naming the argument, its value and what is allowed."""

import numpy as np
import pytest
import warp as wp

import difflbm as lbm
from difflbm import adjoint as A, losses as L


def test_omega_outside_range():
    """omega outside (0, 2) is refused with advice."""
    with pytest.raises(ValueError, match=r"omega=2.3 is outside \(0, 2\)"):
        lbm.Problem((4, 4), omega=2.3, device="cpu")


def test_shape_mismatch_with_lattice():
    """A 3D shape for a 2D lattice is refused."""
    with pytest.raises(ValueError, match="shape=.*D2Q9"):
        lbm.Problem((4, 4, 4), "D2Q9", device="cpu")


def test_unknown_names():
    """Unknown lattice, collision and device names are refused with the allowed values."""
    with pytest.raises(ValueError, match="lattice='D4Q9'"):
        lbm.Problem((4, 4), "D4Q9", device="cpu")
    with pytest.raises(ValueError, match="collision='mrt7'.*bgk"):
        lbm.Problem((4, 4), collision="mrt7", device="cpu")
    with pytest.raises(ValueError, match="device='cuda:7'"):
        lbm.Problem((4, 4), device="cuda:7")


def test_mask_wrong_shape_and_dtype():
    """Masks of the wrong shape or dtype are refused, naming the boundary."""
    with pytest.raises(ValueError, match=r"boundaries\[0\].*shape"):
        lbm.Problem((4, 4), boundaries=[lbm.Wall(mask=np.zeros((3, 4), bool))], device="cpu")
    with pytest.raises(TypeError, match="dtype int64"):
        lbm.Problem((4, 4), boundaries=[lbm.Wall(mask=np.zeros((4, 4), np.int64))], device="cpu")


def test_bad_initial_density():
    """NaN or negative densities in an initial state are refused, naming the cell."""
    p = lbm.Problem((4, 4), device="cpu")
    rho = np.ones((4, 4))
    rho[1, 2] = -1.0
    with pytest.raises(ValueError, match=r"rho\[1, 2\]=-1"):
        p.state(rho)
    rho[1, 2] = np.nan
    with pytest.raises(ValueError, match="rho"):
        p.state(rho)


def test_unstable_velocity_refused_by_units():
    """A lattice velocity giving an unstable Mach number is refused with what to change."""
    from difflbm.units import Units
    with pytest.raises(ValueError, match="velocity=0.5.*lower"):
        Units.from_reynolds(reynolds=100, length=32, velocity=0.5)


def test_divergence_names_step_and_cell():
    """A run that goes non-finite stops with the step and the first bad cell."""
    p = lbm.Problem((6, 6), omega=1.0, precision="float64", device="cpu")
    st = p.state()
    f = st.populations()
    f[0, 2, 3] = np.nan
    st.f.assign(f.reshape(9, -1))
    with pytest.raises(lbm.DivergenceError, match=r"step 1, cell \(2, 3\)") as err:
        lbm.Solver(p).run(st, 10, check_every=5)
    assert err.value.step == 1


def test_non_differentiable_target():
    """Asking for the gradient of a mask is refused, naming it."""
    p = lbm.Problem((4, 4), precision="float64", device="cpu")
    with pytest.raises(ValueError, match="wrt='mask'"):
        A.value_and_grad(p, p.parameters(), p.state(), 2, L.KineticEnergy(), wrt=("mask",))


def test_same_buffer_step_refused():
    """step(state, state) would overwrite what it reads: refused."""
    p = lbm.Problem((4, 4), device="cpu")
    st = p.state()
    with pytest.raises(ValueError, match="state_out"):
        lbm.Solver(p).step(st, st, p.parameters())


@wp.kernel
def _abs_difference(f: wp.array2d(dtype=wp.float64), out: wp.array(dtype=wp.float64)):
    # sqrt(d^2) = |d|: finite at d = 0, but its generated adjoint there is 0 / 0
    idx = wp.tid()
    d = f[1, idx] - f[2, idx]
    wp.atomic_add(out, 0, wp.sqrt(d * d))


def test_nonfinite_gradient_names_the_step():
    """A finite loss whose gradient is NaN: the call raises naming the backward step where it appeared
    (checks run after each leaf of the checkpointed backward pass, here leaves [8, 12), [4, 8), [0, 4))."""
    p = lbm.Problem((8, 8), "D2Q9", omega=1.2, precision="float64", device="cpu")
    loss = L.KernelLoss(_abs_difference, dim=p.cell_count, when="final")
    with pytest.raises(FloatingPointError, match="non-finite in the backward pass at step 8, cell"):
        A.value_and_grad(p, p.parameters(), p.state(), 12, loss, adjoint=A.Checkpointed(segment=4))
