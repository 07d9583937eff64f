"""Physics unit tests: lattices, equilibrium moments, collision invariants, streaming."""

import numpy as np
import pytest
import warp as wp

import difflbm as lbm
from difflbm import kernels as K
from difflbm.lattice import LATTICE_NAMES


@pytest.mark.parametrize("name", LATTICE_NAMES)
def test_lattice_weights_and_opposites(name):
    """Weights sum to one, c[opposite] = -c, and the second moment is isotropic with cs^2 = 1/3."""
    lat = lbm.get_lattice(name)
    c, w = lat.velocities, lat.weights
    assert abs(w.sum() - 1.0) < 1e-15
    np.testing.assert_array_equal(c[lat.opposite], -c)
    second = np.einsum("i,ia,ib->ab", w, c, c)
    np.testing.assert_allclose(second, np.eye(lat.dim) / 3.0, atol=1e-15)
    assert not c[0].any()


def test_unknown_lattice_named():
    """An unknown lattice name raises, naming the value and the allowed ones."""
    with pytest.raises(ValueError, match="D2Q7.*D2Q9"):
        lbm.get_lattice("D2Q7")


@pytest.mark.parametrize("name,shape", [("D2Q9", (5, 4)), ("D3Q19", (3, 4, 2)), ("D3Q27", (2, 3, 2))])
def test_equilibrium_moments_exact(name, shape):
    """The equilibrium's density and momentum equal the rho and rho*u it was built from."""
    rng = np.random.default_rng(0)
    p = lbm.Problem(shape, name, precision="float64", device="cpu")
    rho = 1.0 + 0.1 * rng.random(shape)
    u = 0.05 * rng.standard_normal(shape + (p.lattice.dim,))
    f = p.state(rho, u).populations()
    c = p.lattice.velocities
    np.testing.assert_allclose(f.sum(0), rho, rtol=1e-14)
    mom = np.einsum("ia,i...->...a", c, f)
    np.testing.assert_allclose(mom, rho[..., None] * u, atol=1e-14)


@pytest.mark.parametrize("collision", ["bgk", "trt", "smagorinsky"])
def test_collision_conserves_mass_and_momentum(collision):
    """A periodic step conserves total mass and momentum to round-off for every collision model."""
    rng = np.random.default_rng(1)
    p = lbm.Problem((8, 6), "D2Q9", collision, omega=1.7, precision="float64", device="cpu")
    st = p.state(1 + 0.05 * rng.random(p.shape), 0.05 * rng.standard_normal(p.shape + (2,)))
    f0 = st.populations()
    st.set_populations(f0 + 1e-3 * rng.random(f0.shape))  # off equilibrium so collision acts
    f0 = st.populations()
    f1 = lbm.Solver(p).run(st, 1).populations()
    c = p.lattice.velocities
    assert abs(f1.sum() - f0.sum()) < 1e-12
    np.testing.assert_allclose(c.T @ f1.reshape(9, -1).sum(1), c.T @ f0.reshape(9, -1).sum(1), atol=1e-13)
    assert np.abs(f1 - f0).max() > 1e-6  # the step did something


def test_streaming_is_a_permutation():
    """With omega near 0 a step is pure streaming: each direction's field is rolled by c_i."""
    rng = np.random.default_rng(2)
    p = lbm.Problem((5, 7, 3), "D3Q19", omega=1e-12, precision="float64", device="cpu")
    st = p.state()
    f0 = 0.05 + rng.random((19,) + p.shape)
    st.set_populations(f0)
    f1 = lbm.Solver(p).run(st, 1).populations()
    for i, ci in enumerate(p.lattice.velocities):
        np.testing.assert_allclose(f1[i], np.roll(f0[i], shift=tuple(ci), axis=(0, 1, 2)), rtol=1e-10)


def test_bounce_back_reverses_populations():
    """At a stationary wall face, the population pulled from outside is the opposite one of the cell."""
    rng = np.random.default_rng(3)
    p = lbm.Problem((4, 5), "D2Q9", omega=1e-12, boundaries=[lbm.Wall(face="y-")], precision="float64", device="cpu")
    st = p.state()
    f0 = 0.05 + rng.random((9, 4, 5))
    st.set_populations(f0)
    f1 = lbm.Solver(p).run(st, 1).populations()
    lat = p.lattice
    for i, ci in enumerate(lat.velocities):
        if ci[1] == 1:  # pulled from y = -1: bounced back
            np.testing.assert_allclose(f1[i][:, 0], f0[lat.opposite[i]][:, 0], rtol=1e-10)


@pytest.mark.parametrize("collision,tol", [("bgk", 1e-3), (lbm.CollisionTRT(magic=3 / 16), 1e-9)])
def test_poiseuille_force_driven(collision, tol):
    """Force-driven channel with half-way bounce-back walls matches the parabola: BGK within 1e-3,
    TRT with Lambda = 3/16 (wall exactly mid-link, Guo source split odd/even) to round-off."""
    ny, nu, g = 32, 0.1, 1e-6
    p = lbm.Problem((2, ny), "D2Q9", collision, omega=1 / (3 * nu + 0.5), force=(g, 0.0),
                    boundaries=[lbm.Wall(face="y-"), lbm.Wall(face="y+")], precision="float64", device="cpu")
    f = lbm.Solver(p).run(p.state(), 30000, check_every=5000).populations()
    c = p.lattice.velocities
    ux = ((np.tensordot(c[:, 0], f, 1) - 0.5 * g) / f.sum(0))[0]  # post-collision: minus F/2
    y = np.arange(ny) + 0.5
    exact = g / (2 * nu) * y * (ny - y)
    assert np.linalg.norm(ux - exact) / np.linalg.norm(exact) <= tol


@pytest.mark.parametrize("lattice", ["D2Q9", "D3Q19", "D3Q27"])
def test_velocity_inlet_imposes_the_whole_velocity(lattice):
    """Zou-He with the tangential correction: after one step every face cell of a velocity inlet
    carries exactly the prescribed velocity, its tangential component included (the plain
    non-equilibrium bounce-back gives only the normal one); edge cells next to walls are not faces."""
    from difflbm.io import macroscopic

    sh = (8, 7) if lattice == "D2Q9" else (6, 5, 5)
    D = len(sh)
    ub = (0.03, -0.012, 0.007)[:D]
    p = lbm.Problem(sh, lattice, omega=1.3, precision="float64", device="cpu",
                    boundaries=[lbm.Wall(face="y-"), lbm.Wall(face="y+"), lbm.VelocityInlet(face="x-", velocity=ub),
                                lbm.PressureOutlet(face="x+", density=1.0)])
    rng = np.random.default_rng(3)
    a = p.state(1 + 0.01 * rng.standard_normal(sh), 0.02 * rng.standard_normal(sh + (D,)))
    b = p.state()
    lbm.Solver(p).step(a, b, p.parameters())
    _, u = macroscopic(p, b)
    inner = (0, slice(1, sh[1] - 1)) + (slice(None),) * (D - 2)  # x = 0, off the walls in y
    np.testing.assert_allclose(u[inner][..., :D], np.broadcast_to(ub, u[inner][..., :D].shape), rtol=0, atol=1e-14)


def test_step_cells_in_pieces_equals_one_step():
    """Solver.step_cells over consecutive ranges of cells (what the distributed overlap launches) gives
    the full step bit for bit, leaves the cells outside its range alone, and refuses a bad range."""
    rng = np.random.default_rng(7)
    p = lbm.Problem((6, 5, 4), "D3Q19", omega=1.3, precision="float32", device="cpu",
                    boundaries=[lbm.Wall(face="z+", velocity=(0.05, 0.0, 0.0)), lbm.Wall(face="z-")])
    s, prm = lbm.Solver(p), p.parameters()
    a = p.state()
    a.set_populations(a.populations() * (1 + 0.01 * rng.standard_normal((19,) + p.shape)).astype(np.float32))
    whole, pieces = p.state(), p.state()
    s.step(a, whole, prm)
    pieces.set_populations(np.full((19,) + p.shape, 7.0, dtype=np.float32))
    plane = 5 * 4
    s.step_cells(a, pieces, prm, 2 * plane, 3 * plane)
    got = pieces.populations()
    assert np.all(got[:, :2] == 7.0) and np.all(got[:, 5:] == 7.0)  # untouched outside the range
    s.step_cells(a, pieces, prm, 0, 2 * plane)
    s.step_cells(a, pieces, prm, 5 * plane, plane)
    np.testing.assert_array_equal(pieces.populations(), whole.populations())
    with pytest.raises(ValueError, match="outside"):
        s.step_cells(a, pieces, prm, 5 * plane, 2 * plane)
    with pytest.raises(TypeError, match="count=2.0"):
        s.step_cells(a, pieces, prm, 0, 2.0)
    # with moments (the overlapped moments replay): the same populations and the same stored moments
    rows = K.moment_rows(p.config)
    mom_whole = wp.zeros((rows, p.cell_count), dtype=wp.float32, device="cpu")
    mom_pieces = wp.full((rows, p.cell_count), 7.0, dtype=wp.float32, device="cpu")
    s.step_moments(a, whole, mom_whole, prm)
    pieces.set_populations(np.full((19,) + p.shape, 7.0, dtype=np.float32))
    s.step_cells(a, pieces, prm, plane, 4 * plane, moments=mom_pieces)
    assert np.all(mom_pieces.numpy()[:, :plane] == 7.0) and np.all(mom_pieces.numpy()[:, 5 * plane:] == 7.0)
    s.step_cells(a, pieces, prm, 0, plane, moments=mom_pieces)
    s.step_cells(a, pieces, prm, 5 * plane, plane, moments=mom_pieces)
    np.testing.assert_array_equal(pieces.populations(), whole.populations())
    np.testing.assert_array_equal(mom_pieces.numpy(), mom_whole.numpy())


@pytest.mark.parametrize("precision", ["float64", "float32"])  # float32: the native step and its extra inputs
def test_recorded_launches_replay_the_same_steps(precision, monkeypatch):
    """Solver.run replays recorded step launches (Solver.recorded_launches): bit-identical to steps
    launched one by one, with inlet windows (a launch per window); one record per buffer pair and
    window, every step a replay, none kept after the block; with a callback that replaces a
    parameter array nothing is recorded (and the new array acts); launch_key tells arrays apart by
    memory, not by Python object, and floats by their bits."""
    from warp._src.context import Launch

    from difflbm import solver as S
    p = lbm.Problem((12, 8), "D2Q9", omega=1.3, precision=precision, device="cpu", inlet_windows=3,
                    boundaries=[lbm.Wall(face="y-"), lbm.Wall(face="y+", velocity=(0.02, 0.0)),
                                lbm.VelocityInlet(face="x-", velocity=(0.02, 0.0)),
                                lbm.PressureOutlet(face="x+", density=1.0)])
    solver = lbm.Solver(p)
    assert solver.native_step == (precision == "float32")
    steps = 9

    def windows():  # another inlet speed in each window
        prm = p.parameters()
        v = prm.inlet_velocity.numpy()
        v[..., 0] = np.array([0.01, 0.02, 0.03])[:, None]
        prm.inlet_velocity.assign(v)
        return prm
    params = windows()
    ref, b = p.state(), lbm.State.empty(p)
    solver.update_wall_term(params)
    for t in range(steps):
        solver.step(ref, b, params, solver.window(t, steps), update_walls=False)
        ref, b = b, ref
    assert solver._records is None
    replays = []
    original = Launch.launch
    monkeypatch.setattr(Launch, "launch", lambda self, *a, **kw: replays.append(1) or original(self, *a, **kw))
    out = solver.run(p.state(), steps, params)
    assert len(replays) == steps  # every step launched from a record
    assert out.f.numpy().tobytes() == ref.f.numpy().tobytes()
    assert solver._records is None  # dropped with the block
    seen = []
    with solver.recorded_launches():
        solver.run(p.state(), steps, params)  # nested: shares the outer records
        seen.append(len(solver._records))
    assert seen == [3 * 2]  # 3 windows x 2 directions of the ping-pong

    def swap_omega(t, state):  # a callback that replaces an array: run records nothing
        if t == 4:
            params.omega = wp.array(np.full(params.omega.shape, 1.1), dtype=params.omega.dtype, device=p.device)
        assert solver._records is None
    params = windows()
    replays.clear()
    got = solver.run(p.state(), steps, params, callback=swap_omega)
    assert not replays
    params2 = windows()
    ref, b = p.state(), lbm.State.empty(p)
    for t in range(steps):
        solver.step(ref, b, params2, solver.window(t, steps))
        ref, b = b, ref
        if t + 1 == 4:
            params2.omega = wp.array(np.full(params2.omega.shape, 1.1), dtype=params2.omega.dtype, device=p.device)
    assert got.f.numpy().tobytes() == ref.f.numpy().tobytes()
    assert not np.array_equal(got.f.numpy(), out.f.numpy())  # the replaced omega did act

    a = wp.zeros((2, 6), dtype=wp.float64, device="cpu")
    k = solver.forward_kernel
    assert S.launch_key(k, 6, None, [a[1], 3]) == S.launch_key(k, 6, None, [a[1], 3])  # fresh views
    assert S.launch_key(k, 6, None, [a[0], 3]) != S.launch_key(k, 6, None, [a[1], 3])
    c, d = wp.zeros(6, dtype=wp.float64, device="cpu"), wp.zeros(6, dtype=wp.float64, device="cpu")
    assert S.launch_key(k, 6, None, [c]) != S.launch_key(k, 6, None, [d])
    assert S.launch_key(k, 6, None, [a, 3]) != S.launch_key(k, 6, None, [a, 4])
    assert S.launch_key(k, 6, None, [0.0]) != S.launch_key(k, 6, None, [-0.0])
    assert S.launch_key(k, 6, None, [[1, 2]]) is None  # not hashable: launched as usual


@wp.kernel
def _fill(a: wp.array(dtype=float), v: float):
    a[wp.tid()] = v


def test_replay_launch_records_stay_bounded():
    """A loop that launches on ever new arrays keeps at most MAX_RECORDS records (each holds its
    arrays), dropping the least recently used; each replay writes what a plain launch would; an
    empty launch does nothing, recorded or not."""
    from collections import OrderedDict

    from difflbm import solver as S
    records = OrderedDict()
    arrays = [wp.zeros(4, dtype=float, device="cpu") for _ in range(S.MAX_RECORDS + 6)]
    S.replay_launch(records, _fill, 4, [arrays[0], 0.0], "cpu")
    for i, a in enumerate(arrays):
        S.replay_launch(records, _fill, 4, [a, float(i)], "cpu")
        S.replay_launch(records, _fill, 4, [arrays[0], 0.0], "cpu")  # kept in use: never dropped
        assert len(records) <= S.MAX_RECORDS
    assert S.launch_key(_fill, 4, None, [arrays[0], 0.0]) in records
    assert S.launch_key(_fill, 4, None, [arrays[1], 1.0]) not in records  # the least recently used went
    S.replay_launch(records, _fill, 4, [arrays[-1], 7.0], "cpu")
    assert [float(a.numpy()[0]) for a in arrays[-2:]] == [S.MAX_RECORDS + 4.0, 7.0]
    S.replay_launch(records, _fill, 0, [arrays[1], 5.0], "cpu")
    S.replay_launch(None, _fill, 0, [arrays[1], 5.0], "cpu")
    assert float(arrays[1].numpy()[0]) == 1.0
