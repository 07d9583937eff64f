"""Gradients through rollouts: the seed check, finite differences in float64, strategies agree."""

import math
import numpy as np
import pytest
import warp as wp

import difflbm as lbm
from difflbm import adjoint as A, kernels as K, losses as L
from difflbm.gradcheck import gradcheck

TOL = 1e-6


def _state(p, seed=0):
    rng = np.random.default_rng(seed)
    D = p.lattice.dim
    return p.state(1 + 0.01 * rng.standard_normal(p.shape), 0.02 * rng.standard_normal(p.shape + (D,)))


def test_seed_check_norm_192():
    """d sum(rho^2) / d f_in after one step on a 32x32 periodic D2Q9 grid at rest has norm 192."""
    p = lbm.Problem((32, 32), "D2Q9", omega=1.8, precision="float64", device="cpu")
    value, g = A.value_and_grad(p, p.parameters(), p.state(), 1, L.DensitySquared(), wrt=("initial",))
    assert abs(value - 1024.0) < 1e-9
    assert abs(np.linalg.norm(g.initial) - 192.0) < 1e-9


def _channel(collision, lattice="D2Q9"):
    sh = (12, 10) if lattice == "D2Q9" else (6, 5, 4)
    mask = np.zeros(sh, bool)
    mask[(slice(5, 7), slice(4, 6)) + (slice(None),) * (len(sh) - 2)] = True
    return lbm.Problem(sh, lattice, collision, omega=1.2, precision="float64", device="cpu",
                       boundaries=[lbm.Wall(face="y-"), lbm.Wall(face="y+", velocity=(0.02,) + (0.0,) * (len(sh) - 1)),
                                   lbm.Wall(mask=mask), lbm.VelocityInlet(face="x-", velocity=(0.03, 0.005, 0.003)[:len(sh)]),
                                   lbm.PressureOutlet(face="x+", density=1.0)])


@pytest.mark.parametrize("collision", ["bgk", "trt", "smagorinsky"])
def test_fd_channel_all_boundaries(collision):
    """Channel with walls, moving wall, obstacle, velocity inlet, pressure outlet: adjoint = FD."""
    p = _channel(collision)
    loss = L.Drag(2, when="every") + L.KineticEnergy()
    r = gradcheck(p, p.parameters(), _state(p), 20, loss,
                  wrt=("initial", "omega", "wall_velocity", "inlet_velocity", "outlet_density"))
    for k, v in r.items():
        if k != "pairs":
            assert v <= TOL, (k, v)


@pytest.mark.parametrize("lattice", ["D3Q19", "D3Q27"])
def test_fd_3d_channel(lattice):
    """3D channel with every boundary kind: adjoint = FD for the initial state and the inlet."""
    p = _channel("bgk", lattice)
    r = gradcheck(p, p.parameters(), _state(p), 20, L.KineticEnergy(), wrt=("initial", "inlet_velocity", "omega"),
                  directions=1)
    for k, v in r.items():
        if k != "pairs":
            assert v <= TOL, (k, v)


def test_fd_force_porosity_outflow_fields():
    """Body-force field, per-cell omega, solid fraction and outflow: adjoint = FD."""
    rng = np.random.default_rng(4)
    sh = (12, 10)
    p = lbm.Problem(sh, "D2Q9", "bgk", omega=rng.uniform(1.0, 1.8, sh), force=1e-4 * rng.standard_normal(sh + (2,)),
                    solid_fraction=rng.uniform(0.1, 0.9, sh), precision="float64", device="cpu",
                    boundaries=[lbm.VelocityInlet(face="x-", velocity=(0.03, 0.0)), lbm.Outflow(face="x+")])
    target = 0.01 * rng.standard_normal(sh + (2,))
    r = gradcheck(p, p.parameters(), _state(p), 20, L.VelocityMismatch(target=target),
                  wrt=("initial", "omega", "force", "solid_fraction", "inlet_velocity"))
    for k, v in r.items():
        if k != "pairs":
            assert v <= TOL, (k, v)


def test_fd_curved_wall():
    """Interpolated bounce-back around a disc, drag accumulated over steps: adjoint = FD."""
    sh = (14, 12)
    m, q = lbm.circle_link_fractions("D2Q9", sh, (6.3, 5.6), 2.4)
    p = lbm.Problem(sh, "D2Q9", omega=1.5, force=(1e-4, 0.0), boundaries=[lbm.Wall(mask=m, link_fraction=q)],
                    precision="float64", device="cpu")
    r = gradcheck(p, p.parameters(), _state(p), 20, L.Drag(0, when="every"), wrt=("initial", "omega", "force"))
    for k, v in r.items():
        if k != "pairs":
            assert v <= TOL, (k, v)


def test_time_varying_inlet():
    """Inlet profile per window (4 windows over 20 steps): adjoint = FD."""
    p = lbm.Problem((10, 8), "D2Q9", omega=1.3, precision="float64", device="cpu", inlet_windows=4,
                    boundaries=[lbm.Wall(face="y-"), lbm.Wall(face="y+"),
                                lbm.VelocityInlet(face="x-", velocity=(0.03, 0.0)), lbm.Outflow(face="x+")])
    r = gradcheck(p, p.parameters(), _state(p), 20, L.Probe((7, 4), "ux"), wrt=("inlet_velocity",))
    assert r["inlet_velocity"] <= TOL


@pytest.mark.parametrize("steps", [1, 7, 20])
def test_strategies_agree(steps):
    """Store-all, checkpointing (several segment lengths) and memory budgets (two-level, host, and
    more levels when two do not fit) give the same gradient."""
    p = _channel("bgk")
    st = _state(p)
    loss = L.KineticEnergy(when="every") + L.Drag(2)
    ref_v, ref = A.value_and_grad(p, p.parameters(), st, steps, loss, adjoint=A.StoreAll())
    for strat in (A.Checkpointed(), A.Checkpointed(1), A.Checkpointed(3), A.Checkpointed(steps + 5),
                  A.MemoryBudget(states=12), A.MemoryBudget(states=6, host=True),
                  A.MemoryBudget(states=5 if steps <= 7 else 8)):  # the last: three levels for T >= 7
        v, g = A.value_and_grad(p, p.parameters(), st, steps, loss, adjoint=strat)
        assert v == ref_v
        for name in ("initial", "omega", "wall_velocity", "inlet_velocity", "outlet_density"):
            a, b = getattr(g, name), getattr(ref, name)
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15 * np.abs(b).max(), err_msg=f"{strat} {name}")


def test_memory_budget_schedules():
    """Two levels when they fit, more levels in a tighter budget, a clear error when nothing fits."""
    (k,), host = A._schedule(A.MemoryBudget(states=24), 100, 1, "cpu")
    assert k + math.ceil(100 / k) <= 24 and not host
    for n in (24, 60):
        spans, host = A._schedule(A.MemoryBudget(states=n), 10_000, 1, "cpu")
        d, leaf = len(spans), spans[-1]
        c = spans[-2] // leaf - 1
        assert d >= 2 and not host and d * c + leaf + 1 <= n and (c + 1) ** d * leaf >= 10_000
        assert all(outer % inner == 0 for outer, inner in zip(spans, spans[1:]))
    with pytest.raises(ValueError, match="it needs at least 7"):
        A._schedule(A.MemoryBudget(states=3), 20, 1, "cpu")


def test_schedules_weigh_leaf_bytes():
    """Two-level schedules: the default balances checkpoint and leaf bytes (sqrt(T) for a states
    leaf, sqrt(5 T) for a leaf step costing a fifth of a state), and a budget takes the longest leaf
    that fits, a cheap leaf step counting as its share of a state."""
    assert A._schedule(A.Checkpointed(), 100, 5, "cpu")[0] == [10]
    assert A._schedule(A.Checkpointed(), 100, 5, "cpu", 1)[0] == [23]
    assert A._schedule(A.Checkpointed(), 3, 5, "cpu", 1)[0] == [3]
    (k,), _ = A._schedule(A.MemoryBudget(states=24), 100, 1, "cpu")
    assert k == max(j for j in range(1, 101) if j + math.ceil(100 / j) <= 24) == 18
    assert A._schedule(A.MemoryBudget(states=24), 100, 5, "cpu", 1)[0] == [100]
    (k,), _ = A._schedule(A.MemoryBudget(states=12), 100, 5, "cpu", 1)
    assert k == max(j for j in range(1, 101) if j / 5 + math.ceil(100 / j) <= 12) == 50
    assert A._schedule(A.MemoryBudget(states=4, host=True), 100, 5, "cpu", 1) == ([20], True)


def test_float32_matches_float64():
    """float32 gradients agree with float64 within 1e-3 relative on the same problem."""
    g = {}
    for prec in ("float32", "float64"):
        p = lbm.Problem((12, 10), "D2Q9", omega=1.3, precision=prec, device="cpu",
                        boundaries=[lbm.Wall(face="y-"), lbm.Wall(face="y+", velocity=(0.05, 0.0))])
        _, gr = A.value_and_grad(p, p.parameters(), _state(p), 20, L.KineticEnergy(), wrt=("initial", "wall_velocity"))
        g[prec] = gr
    for name in ("initial", "wall_velocity"):
        a, b = getattr(g["float32"], name).astype(np.float64), getattr(g["float64"], name)
        assert np.linalg.norm(a - b) / np.linalg.norm(b) <= 1e-3


def test_initial_field_gradients():
    """Gradients with respect to the initial density and velocity fields (through the equilibrium) = FD."""
    rng = np.random.default_rng(5)
    p = lbm.Problem((8, 8), "D2Q9", omega=1.4, precision="float64", device="cpu")
    rho = 1 + 0.01 * rng.standard_normal(p.shape)
    u = 0.02 * rng.standard_normal(p.shape + (2,))
    loss = L.KineticEnergy()
    _, g = A.value_and_grad(p, p.parameters(), p.state(rho, u), 10, loss, wrt=("initial",))
    g_rho, g_u = A.equilibrium_adjoint(p, rho, u, g.initial)
    d = rng.standard_normal(u.shape)
    h = 1e-6
    fd = (A.rollout_loss(p, p.parameters(), p.state(rho, u + h * d), 10, loss)
          - A.rollout_loss(p, p.parameters(), p.state(rho, u - h * d), 10, loss)) / (2 * h)
    assert abs(fd - np.sum(g_u * d)) <= TOL * abs(fd)
    d = rng.standard_normal(rho.shape)
    fd = (A.rollout_loss(p, p.parameters(), p.state(rho + h * d, u), 10, loss)
          - A.rollout_loss(p, p.parameters(), p.state(rho - h * d, u), 10, loss)) / (2 * h)
    assert abs(fd - np.sum(g_rho * d)) <= TOL * abs(fd)


def test_zero_gradient_warns():
    """A loss that does not depend on a requested parameter returns zeros and says so."""
    p = lbm.Problem((6, 6), "D2Q9", omega=1.4, precision="float64", device="cpu", force=(1e-5, 0.0))
    A._warned_zero.clear()
    with pytest.warns(UserWarning, match="does not depend on force"):
        _, g = A.value_and_grad(p, p.parameters(), p.state(), 0, L.DensitySquared(), wrt=("force",))
    assert not g.force.any()


@pytest.mark.parametrize("lattice,shape", [("D2Q9", (12, 10)), ("D3Q19", (6, 5, 4)), ("D3Q27", (5, 4, 4))])
@pytest.mark.parametrize("field", [False, True])
def test_fused_adjoint_matches_warp_adjoint(lattice, shape, field):
    """The hand-written fused step adjoint equals Warp's generated one (walls, moving wall, obstacle)."""
    rng = np.random.default_rng(6)
    D = len(shape)
    omega = rng.uniform(1.0, 1.8, shape) if field else 1.3
    mask = np.zeros(shape, bool)
    mask[(slice(3, 5), slice(2, 4)) + (slice(None),) * (D - 2)] = True
    p = lbm.Problem(shape, lattice, omega=omega, precision="float64", device="cpu",
                    boundaries=[lbm.Wall(face="y-"), lbm.Wall(face="y+", velocity=(0.03,) + (0.0,) * (D - 1)),
                                lbm.Wall(mask=mask)])
    st = _state(p)
    loss = L.KineticEnergy(when="every") + L.Drag(2)
    wrt = ("initial", "omega", "wall_velocity")
    v1, g1 = A.value_and_grad(p, p.parameters(), st, 15, loss, step_adjoint="warp", wrt=wrt)
    v2, g2 = A.value_and_grad(p, p.parameters(), st, 15, loss, step_adjoint="fused", wrt=wrt, adjoint=A.Checkpointed(4))
    assert v1 == v2
    for name in wrt:
        a, b = getattr(g1, name), getattr(g2, name)
        assert np.abs(a - b).max() <= 1e-12 * np.abs(a).max(), name


def test_ranged_fused_adjoint_in_pieces_equals_one_launch():
    """step_adjoint_kernel(ranged=True) over cell ranges in any order (what the distributed reverse
    pass launches) stores the same adjoint and accumulates the same omega and wall gradients, bit
    for bit, as the plain kernel over all cells; the plain kernel refuses a range."""
    rng = np.random.default_rng(11)
    shape = (6, 5, 4)
    mask = np.zeros(shape, bool)
    mask[3:5, 2:4] = True
    p = lbm.Problem(shape, "D3Q19", omega=rng.uniform(1.0, 1.8, shape), precision="float64", device="cpu",
                    boundaries=[lbm.Wall(face="y-"), lbm.Wall(face="y+", velocity=(0.03, 0.0, 0.0)),
                                lbm.Wall(mask=mask)])
    s, prm = lbm.Solver(p), p.parameters()
    s.update_wall_term(prm)
    st = _state(p)
    cur = p.state()  # an adjoint state: any values (set directly, set_populations checks densities)
    cur.f.assign(rng.standard_normal((19, p.cell_count)))
    wrt = ("initial", "omega", "wall_velocity")

    def run(kernel, ranges):
        prev, grads = p.state(), prm.zeros_like()
        adj_wall = wp.zeros_like(s.wall_term)
        for first, count in ranges:
            A._fused_step_adjoint(s, kernel, st, cur, prev, prm, grads, grads.omega, wrt, adj_wall, None,
                                  first=first, count=count)
        return prev.populations(), grads.omega.numpy(), adj_wall.numpy()

    plain = K.step_adjoint_kernel(p.config, omega_grad=True, force_grad=False)
    ranged = K.step_adjoint_kernel(p.config, omega_grad=True, force_grad=False, ranged=True)
    plane = 5 * 4
    whole = run(plain, [(0, None)])
    pieces = run(ranged, [(2 * plane, 3 * plane), (0, plane), (5 * plane, plane), (plane, plane)])
    assert np.any(whole[2] != 0) and np.any(whole[1] != 0)  # the moving wall and omega gradients are exercised
    for a, b in zip(whole, pieces):
        assert a.tobytes() == b.tobytes()
    with pytest.raises(ValueError, match="ranged kernel"):
        run(plain, [(plane, plane)])


def test_fused_adjoint_fd_cavity():
    """The fused adjoint on a lid-driven cavity matches central finite differences in float64."""
    p = lbm.Problem((10, 9), "D2Q9", omega=1.7, precision="float64", device="cpu",
                    boundaries=[lbm.Wall(face="y+", velocity=(0.05, 0.0))])
    r = gradcheck(p, p.parameters(), _state(p), 25, L.KineticEnergy(when="every"),
                  wrt=("initial", "omega", "wall_velocity"))
    for k, v in r.items():
        if k != "pairs":
            assert v <= TOL, (k, v)


def test_fused_refused_where_it_does_not_apply():
    """Asking for the fused adjoint on a zero-gradient outflow problem raises instead of differentiating wrongly."""
    p = lbm.Problem((12, 10), "D2Q9", omega=1.2, precision="float64", device="cpu",
                    boundaries=[lbm.Wall(face="y-"), lbm.Wall(face="y+"),
                                lbm.VelocityInlet(face="x-", velocity=(0.03, 0.0)), lbm.Outflow(face="x+")])
    with pytest.raises(ValueError, match="step_adjoint='fused' does not cover"):
        A.value_and_grad(p, p.parameters(), _state(p), 2, L.KineticEnergy(), step_adjoint="fused")


@pytest.mark.parametrize("lattice", ["D2Q9", "D3Q19"])
@pytest.mark.parametrize("collision", ["bgk", "trt"])
def test_fused_adjoint_open_boundaries_match_warp(collision, lattice):
    """Velocity inlet (three time windows, a tangential component, so that every term of the
    tangential correction counts) and pressure outlet: the fused adjoint's Zou-He transpose equals
    Warp's generated adjoint for every control."""
    sh = (12, 10) if lattice == "D2Q9" else (6, 5, 4)
    D = len(sh)
    mask = np.zeros(sh, bool)
    mask[(slice(5, 7), slice(4, 6)) + (slice(None),) * (D - 2)] = True
    p = lbm.Problem(sh, lattice, collision, omega=1.2, precision="float64", device="cpu", inlet_windows=3,
                    boundaries=[lbm.Wall(face="y-"), lbm.Wall(face="y+", velocity=(0.02,) + (0.0,) * (D - 1)),
                                lbm.Wall(mask=mask),
                                lbm.VelocityInlet(face="x-", velocity=(0.03, 0.006, -0.004)[:D]),
                                lbm.PressureOutlet(face="x+", density=1.0)])
    rng = np.random.default_rng(8)
    params = p.parameters()
    params.inlet_velocity.assign(params.inlet_velocity.numpy() * (1 + 0.2 * rng.standard_normal((3, 1, 1))))
    params.outlet_density.assign(params.outlet_density.numpy() + 0.002 * rng.standard_normal(params.outlet_density.shape))
    st = _state(p)
    loss = L.KineticEnergy(when="every", every=2) + L.Drag(2)
    wrt = ("initial", "omega", "wall_velocity", "inlet_velocity", "outlet_density")
    v1, g1 = A.value_and_grad(p, params, st, 14, loss, step_adjoint="warp", wrt=wrt)
    v2, g2 = A.value_and_grad(p, params, st, 14, loss, step_adjoint="fused", wrt=wrt, adjoint=A.Checkpointed(4))
    assert v1 == v2
    for name in wrt:
        a, b = getattr(g1, name), getattr(g2, name)
        assert np.abs(a).max() > 0, name
        assert np.abs(a - b).max() <= 1e-11 * np.abs(a).max(), (name, np.abs(a - b).max(), np.abs(a).max())


def test_recursive_budget_fused_long_rollout():
    """A 300-step rollout within 12 stored states (six checkpoint levels) equals store-all, fused adjoint."""
    p = lbm.Problem((10, 9), "D2Q9", omega=1.7, precision="float64", device="cpu",
                    boundaries=[lbm.Wall(face="y+", velocity=(0.05, 0.0))])
    st = _state(p)
    loss = L.KineticEnergy(when="every", every=7)
    v1, g1 = A.value_and_grad(p, p.parameters(), st, 300, loss, adjoint=A.StoreAll(), wrt=("initial", "omega"))
    v2, g2 = A.value_and_grad(p, p.parameters(), st, 300, loss, adjoint=A.MemoryBudget(states=12), wrt=("initial", "omega"))
    assert v1 == v2
    np.testing.assert_allclose(g2.initial, g1.initial, rtol=1e-12, atol=1e-15 * np.abs(g1.initial).max())
    np.testing.assert_allclose(g2.omega, g1.omega, rtol=1e-12)


@pytest.mark.parametrize("collision", ["bgk", "trt"])
@pytest.mark.parametrize("force", ["uniform", "field"])
def test_fused_adjoint_force_trt_matches_warp(collision, force):
    """The fused adjoint with Guo forcing (uniform or field) and TRT equals Warp's generated adjoint."""
    rng = np.random.default_rng(7)
    shape = (10, 9)
    fval = (2e-4, -1e-4) if force == "uniform" else 1e-4 * rng.standard_normal(shape + (2,))
    p = lbm.Problem(shape, "D2Q9", collision, omega=1.4, force=fval, precision="float64", device="cpu",
                    boundaries=[lbm.Wall(face="y-"), lbm.Wall(face="y+", velocity=(0.03, 0.0))])
    st = _state(p)
    loss = L.KineticEnergy(when="every")
    wrt = ("initial", "omega", "force", "wall_velocity")
    v1, g1 = A.value_and_grad(p, p.parameters(), st, 12, loss, step_adjoint="warp", wrt=wrt)
    v2, g2 = A.value_and_grad(p, p.parameters(), st, 12, loss, step_adjoint="fused", wrt=wrt)
    assert v1 == v2
    for name in wrt:
        a, b = getattr(g1, name), getattr(g2, name)
        assert np.abs(a - b).max() <= 1e-11 * np.abs(a).max(), name


@pytest.mark.parametrize("collision", ["bgk", "trt"])
def test_fd_force_trt_fused_with_velocity_loss(collision):
    """Fused adjoint, uniform force, velocity mismatch loss (which itself depends on the force): = FD."""
    rng = np.random.default_rng(8)
    shape = (10, 9)
    p = lbm.Problem(shape, "D2Q9", collision, omega=1.4, force=(2e-4, -1e-4), precision="float64", device="cpu",
                    boundaries=[lbm.Wall(face="y-"), lbm.Wall(face="y+", velocity=(0.03, 0.0))])
    target = 0.01 * rng.standard_normal(shape + (2,))
    r = gradcheck(p, p.parameters(), _state(p), 20, L.VelocityMismatch(target=target, when="every", every=3),
                  wrt=("initial", "omega", "force", "wall_velocity"))
    for k, v in r.items():
        if k != "pairs":
            assert v <= TOL, (k, v)


def test_drag_of_obstacle_across_periodic_seam():
    """An obstacle cut by a periodic seam: the links that wrap count toward its drag (by symmetry,
    the drag of a centred obstacle and of the same obstacle shifted across the seam are equal)."""
    sh = (12, 10)
    forces = []
    for shift in (0, 6):
        mask = np.zeros(sh, bool)
        mask[4:8, 3:7] = True
        mask = np.roll(mask, shift, axis=0)
        p = lbm.Problem(sh, "D2Q9", omega=1.5, force=(1e-5, 0.0), precision="float64", device="cpu",
                        boundaries=[lbm.Wall(mask=mask)])
        forces.append(A.rollout_loss(p, p.parameters(), p.state(), 30, L.Drag(0)))
    assert forces[0] != 0.0
    assert abs(forces[0] - forces[1]) <= 1e-12 * abs(forces[0])


@pytest.mark.skipif(not __import__("warp").is_cuda_available(), reason="needs a CUDA device (runs on the GPU machine)")
@pytest.mark.parametrize("open_boundaries", [False, True])
def test_cuda_graphs_match_eager(open_boundaries):
    """On CUDA, gradients with captured graphs (forward segments, leaf replay + adjoint, several
    levels) equal the eager launches, for the fused and for Warp's generated adjoint."""
    bcs = [lbm.Wall(face="y-"), lbm.Wall(face="y+", velocity=(0.04, 0.0))]
    if open_boundaries:
        bcs = [lbm.Wall(face="y-"), lbm.Wall(face="y+"), lbm.VelocityInlet(face="x-", velocity=(0.03, 0.0)),
               lbm.Outflow(face="x+")]
    p = lbm.Problem((16, 12), "D2Q9", omega=1.5, precision="float64", device="cuda:0", boundaries=bcs)
    st = _state(p)
    rng = np.random.default_rng(3)
    series = L.VelocityMismatchSeries({t: 0.01 * rng.standard_normal(p.shape + (2,)) for t in (5, 11, 30)})
    loss = L.KineticEnergy(when="every", every=3) + L.KineticEnergy() + series
    wrt = ("initial", "omega", "inlet_velocity" if open_boundaries else "wall_velocity")
    for strategy in (A.Checkpointed(4), A.MemoryBudget(states=8), A.StoreAll()):
        v1, g1 = A.value_and_grad(p, p.parameters(), st, 37, loss, adjoint=strategy, wrt=wrt, graph=False)
        v2, g2 = A.value_and_grad(p, p.parameters(), st, 37, loss, adjoint=strategy, wrt=wrt, graph=True)
        # equal up to the order of atomic additions on the GPU (loss sums, Warp's adjoint of a gather)
        assert abs(v1 - v2) <= 1e-13 * abs(v1)
        for name in wrt:
            b = getattr(g1, name)
            np.testing.assert_allclose(getattr(g2, name), b, rtol=1e-11, atol=1e-14 * np.abs(b).max(),
                                       err_msg=f"{strategy} {name}")


def test_velocity_mismatch_series_fd_and_bad_input():
    """Snapshot-series loss: adjoint = FD, value = sum of single-snapshot mismatches, bad shapes refused."""
    p = lbm.Problem((10, 8), "D2Q9", omega=1.3, precision="float64", device="cpu",
                    boundaries=[lbm.Wall(face="y-"), lbm.Wall(face="y+", velocity=(0.03, 0.0))])
    rng = np.random.default_rng(7)
    region = np.zeros(p.shape, bool)
    region[2:8, 1:6] = True
    snaps = {t: 0.02 * rng.standard_normal(p.shape + (2,)) for t in (3, 9, 20)}
    loss = L.VelocityMismatchSeries(snaps, region=region, weight=2.0)
    st = _state(p)
    r = gradcheck(p, p.parameters(), st, 20, loss, wrt=("initial", "wall_velocity", "omega"))
    for k, v in r.items():
        if k != "pairs":
            assert v <= TOL, (k, v)
    parts = [A.rollout_loss(p, p.parameters(), st, t, L.VelocityMismatch(region=region, target=v, weight=2.0))
             for t, v in snaps.items()]
    total = A.rollout_loss(p, p.parameters(), st, 20, loss)
    assert abs(total - sum(parts)) <= 1e-12 * abs(total)
    with pytest.raises(ValueError, match=r"targets\[9\] has shape"):
        bad = dict(snaps)
        bad[9] = np.zeros((3, 3, 2))
        A.rollout_loss(p, p.parameters(), st, 20, L.VelocityMismatchSeries(bad))
    with pytest.raises(ValueError, match="time levels start at 1"):
        L.VelocityMismatchSeries({0: snaps[3]})


def _assert_same_nonzero_gradients(g_ref, g, wrt, what):
    """Every gradient in ``wrt`` nonzero and equal to the reference within 1e-12 of its largest entry."""
    for name in wrt:
        a, b = getattr(g_ref, name), getattr(g, name)
        assert np.abs(a).max() > 0, name
        assert np.abs(a - b).max() <= 1e-12 * np.abs(a).max(), (name, what, np.abs(a - b).max())


def _moments_problem(lattice, collision, force):
    sh = (12, 10) if lattice == "D2Q9" else (6, 5, 4)
    D = len(sh)
    rng = np.random.default_rng(11)
    mask = np.zeros(sh, bool)
    mask[(slice(5, 7), slice(4, 6)) + (slice(None),) * (D - 2)] = True
    fval = None if force is None else ((2e-4,) + (-1e-4,) * (D - 1) if force == "uniform"
                                       else 1e-4 * rng.standard_normal(sh + (D,)))
    return lbm.Problem(sh, lattice, collision, omega=1.3, force=fval, precision="float64", device="cpu",
                       boundaries=[lbm.Wall(face="y-"), lbm.Wall(face="y+", velocity=(0.03,) + (0.0,) * (D - 1)),
                                   lbm.Wall(mask=mask)])


@pytest.mark.parametrize("lattice", ["D2Q9", "D3Q19"])
@pytest.mark.parametrize("collision", ["bgk", "trt"])
@pytest.mark.parametrize("force", [None, "uniform", "field"])
def test_moments_replay_equals_states_replay(lattice, collision, force, monkeypatch):
    """A leaf replay that keeps only (rho, u) per step gives the gradient of the one that keeps
    whole states, to round-off, for segment lengths that do and do not divide T and for T = 1."""
    p = _moments_problem(lattice, collision, force)
    st = _state(p)
    wrt = ("initial", "wall_velocity") + (("force",) if force else ())
    calls, plain = [], []
    original, original_step = lbm.Solver.step_moments, lbm.Solver.step

    def spy(self, *args, **kw):
        calls.append(1)
        return original(self, *args, **kw)

    def spy_step(self, *args, **kw):
        plain.append(1)
        return original_step(self, *args, **kw)

    monkeypatch.setattr(lbm.Solver, "step_moments", spy)
    monkeypatch.setattr(lbm.Solver, "step", spy_step)
    for steps, seg in [(13, 4), (12, 3), (1, 1), (7, 7), (7, 20)]:
        v1, g1 = A.value_and_grad(p, p.parameters(), st, steps, L.KineticEnergy(), wrt=wrt, replay="states",
                                  adjoint=A.Checkpointed(seg))
        assert not calls
        plain.clear()
        v2, g2 = A.value_and_grad(p, p.parameters(), st, steps, L.KineticEnergy(), wrt=wrt,
                                  adjoint=A.Checkpointed(seg))  # auto picks moments here
        # every leaf but the last keeps (rho, u) on its replay; the forward keeps the last leaf's
        # itself, so the only plain steps are the forward's outside that leaf, plus its final step
        tail = min(seg, steps)  # the remainder of steps / seg is the first segment
        assert len(calls) == (steps - math.ceil(steps / seg)), (steps, seg, len(calls))
        assert len(plain) == steps - tail + 1, (steps, seg, len(plain))
        calls.clear()
        plain.clear()
        assert v1 == v2
        _assert_same_nonzero_gradients(g1, g2, wrt, steps)
    # checkpoints in host memory: the leaf starts from a copy instead of the checkpoint itself
    v3, g3 = A.value_and_grad(p, p.parameters(), st, 13, L.KineticEnergy(), wrt=wrt,
                              adjoint=A.MemoryBudget(states=5, host=True))
    assert calls
    v4, g4 = A.value_and_grad(p, p.parameters(), st, 13, L.KineticEnergy(), wrt=wrt, replay="states")
    assert v3 == v4
    for name in wrt:
        a, b = getattr(g4, name), getattr(g3, name)
        assert np.abs(a - b).max() <= 1e-12 * np.abs(a).max(), (name, "host", np.abs(a - b).max())
    # the other strategies: everything in one leaf, the default, a budget of two levels, and one of
    # four levels (T = 40 in 8 states), which keeps the forward from keeping its last leaf
    v6, g6 = A.value_and_grad(p, p.parameters(), st, 40, L.KineticEnergy(), wrt=wrt, replay="states")
    assert len(A._schedule(A.MemoryBudget(states=8), 40, 9, "cpu", 4)[0]) == 4
    for strategy, steps, v_ref, g_ref in ((A.StoreAll(), 13, v4, g4), (A.Checkpointed(), 13, v4, g4),
                                          (A.MemoryBudget(states=6), 13, v4, g4),
                                          (A.MemoryBudget(states=8), 40, v6, g6)):
        v5, g5 = A.value_and_grad(p, p.parameters(), st, steps, L.KineticEnergy(), wrt=wrt, adjoint=strategy)
        assert v5 == v_ref
        for name in wrt:
            a, b = getattr(g_ref, name), getattr(g5, name)
            assert np.abs(a - b).max() <= 1e-12 * np.abs(a).max(), (name, strategy, np.abs(a - b).max())


def test_moments_replay_fd():
    """The moments replay (chosen by auto: final-state loss, no omega) against central differences."""
    p = _moments_problem("D2Q9", "trt", "field")
    r = gradcheck(p, p.parameters(), _state(p), 24, L.KineticEnergy(), wrt=("initial", "wall_velocity", "force"),
                  adjoint=A.Checkpointed(5))
    for k, v in r.items():
        if k != "pairs":
            assert v <= TOL, (k, v)


def test_moments_replay_refused_where_it_is_not_exact():
    p = _moments_problem("D2Q9", "bgk", None)
    with pytest.raises(ValueError, match="replay='moments' cannot be used here: the omega gradient"):
        A.value_and_grad(p, p.parameters(), _state(p), 3, L.KineticEnergy(), wrt=("omega",), replay="moments")
    with pytest.raises(ValueError, match="a loss term before the last step"):
        A.value_and_grad(p, p.parameters(), _state(p), 3, L.KineticEnergy(when="every"), wrt=("initial",),
                         replay="moments")
    with pytest.raises(ValueError, match="replay='everything' is not allowed"):
        A.value_and_grad(p, p.parameters(), _state(p), 3, L.KineticEnergy(), replay="everything")


@pytest.mark.parametrize("lattice", ["D2Q9", "D3Q19", "D3Q27"])
@pytest.mark.parametrize("collision", ["bgk", "trt"])
def test_moments_replay_with_inlet_and_outlet(lattice, collision, monkeypatch):
    """Velocity inlet (with a tangential component) and pressure outlet under the moments replay
    (their cells keep the mass of their known links as a fifth row): equal to the state replay to
    round-off, for several strategies, and the moments path is the one taken."""
    p = _channel(collision, lattice)
    st = _state(p)
    wrt = ("initial", "wall_velocity", "inlet_velocity", "outlet_density")
    calls = []
    original = lbm.Solver.step_moments

    def spy(self, *args, **kw):
        calls.append(args[2].shape[0])
        return original(self, *args, **kw)

    monkeypatch.setattr(lbm.Solver, "step_moments", spy)
    v_ref, g_ref = A.value_and_grad(p, p.parameters(), st, 13, L.KineticEnergy(), wrt=wrt, replay="states")
    assert not calls
    for strategy in (A.Checkpointed(4), A.Checkpointed(), A.StoreAll(), A.MemoryBudget(states=4, host=True)):
        v, g = A.value_and_grad(p, p.parameters(), st, 13, L.KineticEnergy(), wrt=wrt, adjoint=strategy)
        assert calls and set(calls) == {5}, (strategy, calls)
        assert g.schedule["replay"] == "moments" and g_ref.schedule["replay"] == "states"
        assert g.schedule["forward_kept_last_leaf"] == (not isinstance(strategy, A.MemoryBudget) or
                                                        len(g.schedule["spans"]) == 1)
        calls.clear()
        assert v == v_ref
        _assert_same_nonzero_gradients(g_ref, g, wrt, strategy)


def test_moments_replay_inlet_outlet_fd():
    """The moments replay with a velocity inlet and a pressure outlet against central differences."""
    p = _channel("trt")
    r = gradcheck(p, p.parameters(), _state(p), 24, L.KineticEnergy(),
                  wrt=("initial", "inlet_velocity", "outlet_density"), adjoint=A.Checkpointed(5))
    for k, v in r.items():
        if k != "pairs":
            assert v <= TOL, (k, v)
