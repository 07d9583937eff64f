"""x-slab domain decomposition on torch.distributed (gloo, CPU): forward and gradients = one rank."""

import datetime
import os
import re
import socket
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import difflbm as lbm  # noqa: E402
from difflbm import adjoint as A, distributed as DD, io, losses as L  # noqa: E402

STEPS = 20
FWD_TOL = 1e-12
GRAD_TOL = 1e-10


def _problem(case):
    sh = (16, 10)
    mask = np.zeros(sh, bool)
    mask[7:9, 4:6] = True  # crosses the cut at x = 8 (2 and 4 ranks) and sits next to x = 6 (3 ranks)
    walls = [lbm.Wall(face="y-"), lbm.Wall(face="y+", velocity=(0.02, 0.0)), lbm.Wall(mask=mask)]
    kw = dict(omega=1.2, precision="float64", device="cpu")
    if case == "curved":  # Bouzidi disc across the cut (Warp's generated adjoint; curved-wall drag)
        disc, q = lbm.circle_link_fractions("D2Q9", sh, (8.0, 5.0), 2.3)
        return lbm.Problem(sh, "D2Q9", boundaries=walls[:2] + [lbm.Wall(mask=disc, link_fraction=q)], **kw)
    if case in ("open", "open_final"):  # fused step adjoint with the Zou-He transpose
        return lbm.Problem(sh, "D2Q9", boundaries=walls + [lbm.VelocityInlet(face="x-", velocity=(0.03, 0.0)),
                                                           lbm.PressureOutlet(face="x+", density=1.0)], **kw)
    if case in ("periodic", "final", "final_omega"):  # hand-written fused step adjoint (periodic in x, the cut wraps)
        return lbm.Problem(sh, "D2Q9", boundaries=walls, **kw)
    if case == "native32":  # float32: the native step on every slab (wall rows; the solid block in some slabs only)
        return lbm.Problem(sh, "D2Q9", boundaries=walls, **dict(kw, precision="float32"))
    if case == "uniform_force":  # fused adjoint with a uniform force, which the losses also read
        return lbm.Problem(sh, "D2Q9", boundaries=walls, force=(2e-4, -1e-4), **kw)
    if case == "fields":  # per-cell omega, force and solid fraction (halo reads of the solid fraction)
        rng = np.random.default_rng(3)
        sf = np.clip(0.3 * rng.random(sh), 0, 1)
        kw["omega"] = 1.1 + 0.2 * rng.random(sh)
        return lbm.Problem(sh, "D2Q9", "trt", boundaries=walls[:2], force=1e-4 * rng.standard_normal(sh + (2,)),
                           solid_fraction=sf, **kw)
    raise ValueError(case)


def _loss(case):
    region = np.zeros((16, 10), bool)
    region[5:12, 2:8] = True
    target = np.zeros((16, 10, 2))
    target[..., 0] = 0.01
    loss = L.KineticEnergy(region=region) + L.Probe((9, 3), "uy", when="every") + \
        L.VelocityMismatch(target=target, when="every", every=5)
    if case in ("final", "open_final", "final_omega"):  # on the last state only: the moments replay applies
        # (with the omega gradient it does not: the state replay, with no loss term inside the rollout)
        return L.KineticEnergy(region=region) + L.Drag(2)
    if case != "fields":
        loss = loss + L.Drag(2, when="every")
    return loss


WRT = {"open": ("initial", "omega", "wall_velocity", "inlet_velocity", "outlet_density"),
       "periodic": ("initial", "omega", "wall_velocity"),
       "curved": ("initial", "omega", "wall_velocity"),
       "uniform_force": ("initial", "omega", "force"),
       "fields": ("initial", "omega", "force", "solid_fraction"),
       "final": ("initial", "wall_velocity"),
       "native32": ("initial", "omega", "wall_velocity"),
       "final_omega": ("initial", "omega", "wall_velocity"),
       "open_final": ("initial", "wall_velocity", "inlet_velocity", "outlet_density")}


def _initial(p, seed=0):
    rng = np.random.default_rng(seed)
    return p.state(1 + 0.01 * rng.standard_normal(p.shape), 0.02 * rng.standard_normal(p.shape + (2,)))


def _adjoint(case):
    return A.Checkpointed(segment=6) if case in ("periodic", "final", "open_final", "final_omega") else A.StoreAll()


def _worker(case, rank, world, init, out):
    """One rank: forward and gradients through difflbm.distributed, results saved as .npz."""
    import torch.distributed as dist
    import warp as wp
    wp.config.log_level = wp.LOG_WARNING
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        f = DD.distributed_run(lambda: _problem(case), STEPS, initial=_initial)
        value, g = DD.distributed_value_and_grad(lambda: _problem(case), STEPS, _loss(case), initial=_initial,
                                                 adjoint=_adjoint(case), wrt=WRT[case])
        DD._OVERLAP = False  # whole-slab steps, to compare with the overlapped runs bit for bit
        f_plain = DD.distributed_run(lambda: _problem(case), STEPS, initial=_initial)
        value_plain, g_plain = DD.distributed_value_and_grad(lambda: _problem(case), STEPS, _loss(case),
                                                             initial=_initial, adjoint=_adjoint(case), wrt=WRT[case])
        DD._OVERLAP = True
        np.savez(os.path.join(out, f"rank{rank}.npz"), f=f, f_plain=f_plain, value=value, value_plain=value_plain,
                 **{n: getattr(g, n) for n in WRT[case]}, **{n + "_plain": getattr(g_plain, n) for n in WRT[case]})
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(case, world, tmp_path):
    """Run ``world`` ranks of this file's worker for ``case``; returns their exit codes and logs."""
    init = f"tcp://127.0.0.1:{_free_port()}"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, __file__, case, str(r), str(world), init, str(tmp_path)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for r in range(world)]
    logs = []
    for p in procs:
        try:
            logs.append(p.communicate(timeout=120)[0].decode())
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
    return [p.returncode for p in procs], logs


def _launch(case, world, tmp_path):
    codes, logs = _spawn(case, world, tmp_path)
    for code, log in zip(codes, logs):
        assert code == 0, log
    return [np.load(tmp_path / f"rank{r}.npz") for r in range(world)]


def _same_bits(a, b, name):
    """Equal bit for bit (unlike ==, tells -0.0 from 0.0 and compares NaN payloads)."""
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape, name
    assert a.tobytes() == b.tobytes(), (name, np.flatnonzero(a.view(np.uint8) != b.view(np.uint8))[:5])


def _check_against_single_rank(case, world, tmp_path):
    results = _launch(case, world, tmp_path)
    p = _problem(case)
    st = _initial(p)
    ref_f = lbm.Solver(p).run(st, STEPS).populations()
    value, g = A.value_and_grad(p, p.parameters(), st, STEPS, _loss(case), adjoint=A.StoreAll(), wrt=WRT[case])
    for res in results:
        _same_bits(res["f"], res["f_plain"], "f")  # the overlap changes no bit
        _same_bits(res["value"], res["value_plain"], "value")
        for name in WRT[case]:
            _same_bits(res[name], res[name + "_plain"], name)
        assert np.abs(res["f"] - ref_f).max() <= FWD_TOL
        assert abs(float(res["value"]) - value) <= GRAD_TOL * abs(value)
        for name in WRT[case]:
            ref = np.asarray(getattr(g, name))
            err = np.abs(res[name] - ref).max() / np.abs(ref).max()
            assert err <= GRAD_TOL, (name, err)


def test_curved_disc_across_cut_2_ranks(tmp_path):
    """A Bouzidi disc cut by the rank boundary, with the curved-wall drag in the loss: 2 ranks equal 1 rank."""
    _check_against_single_rank("curved", 2, tmp_path)


def test_open_channel_2_ranks(tmp_path):
    """Inlet/outlet channel with moving wall and an obstacle across the cut, 2 ranks: equals 1 rank."""
    _check_against_single_rank("open", 2, tmp_path)


def test_open_channel_4_ranks(tmp_path):
    """Same channel on 4 ranks (4 planes each): forward, loss and gradients equal 1 rank."""
    _check_against_single_rank("open", 4, tmp_path)


def test_periodic_fused_checkpointed_2_ranks(tmp_path):
    """Periodic-x channel through the fused step adjoint, Checkpointed(6) per rank, 2 ranks: equals 1 rank."""
    _check_against_single_rank("periodic", 2, tmp_path)


def test_uniform_force_2_ranks(tmp_path):
    """Uniform force through the fused adjoint plus velocity losses that read the force, 2 ranks: equals 1 rank."""
    _check_against_single_rank("uniform_force", 2, tmp_path)


def test_fields_uneven_3_ranks(tmp_path):
    """Per-cell omega, force, solid fraction with TRT on 3 ranks (16 = 6 + 5 + 5 planes): equals 1 rank."""
    _check_against_single_rank("fields", 3, tmp_path)


def test_final_loss_moments_replay_2_ranks(tmp_path):
    """Loss on the last state, no omega gradient: each rank replays keeping (rho, u) per step
    (halo cells included), Checkpointed(6), 2 ranks: equals 1 rank."""
    _check_against_single_rank("final", 2, tmp_path)


def test_final_loss_moments_replay_open_channel_2_ranks(tmp_path):
    """The moments replay with the inlet and the outlet (their known-link mass kept per step as a
    fifth row, halo cells included), Checkpointed(6), 2 ranks: equals 1 rank."""
    _check_against_single_rank("open_final", 2, tmp_path)


def test_final_loss_state_replay_3_ranks(tmp_path):
    """Loss on the last state with the omega gradient: the state replay with no loss term inside the
    rollout (the other fused cases add terms at every step), each reverse step overlapping its
    exchange with the adjoint of the inner planes (SlabDecomposition.adjoint_exchanged),
    Checkpointed(6), 3 uneven ranks: equals 1 rank, and the overlap changes no bit."""
    _check_against_single_rank("final_omega", 3, tmp_path)


def test_final_loss_moments_replay_4_ranks(tmp_path):
    """The moments replay on 4 ranks of 4 planes (replays and reverse passes overlapped, the inner
    planes a 2-plane range): equals 1 rank, and the overlap changes no bit."""
    _check_against_single_rank("final", 4, tmp_path)


@pytest.mark.parametrize("constants, world", [("0", 2), ("1", 4)])
def test_native_float32_ranks(constants, world, tmp_path, monkeypatch):
    """float32, where each slab steps with the native kernel (its wall-row table, the overlap's
    ranged steps; with the constants each slab's grid, coded box and any_solid compiled in: on 4
    ranks the solid block, x = 7 and 8, lies in the middle two slabs only): the forward equals one
    rank bit for bit, the loss and gradients to float32 round-off (the ranks' sums meet in another
    order)."""
    monkeypatch.setenv("DIFFLBM_NATIVE_CONSTANTS", constants)  # the ranks inherit the environment
    results = _launch("native32", world, tmp_path)
    p = _problem("native32")
    st = _initial(p)
    solver = lbm.Solver(p)
    assert solver.native_step and solver._wall_rows_on
    ref_f = solver.run(st, STEPS).populations()
    with monkeypatch.context() as m:  # and so does the Warp-generated step, so every slab's kernel is right
        m.setenv("DIFFLBM_NATIVE_STEP", "0")
        assert np.array_equal(lbm.Solver(p).run(st, STEPS).populations(), ref_f)
    value, g = A.value_and_grad(p, p.parameters(), st, STEPS, _loss("native32"), adjoint=A.StoreAll(),
                                wrt=WRT["native32"])
    for res in results:
        _same_bits(res["f"], res["f_plain"], "f")
        assert res["f"].shape == ref_f.shape and np.array_equal(res["f"].astype(ref_f.dtype), ref_f)
        assert abs(float(res["value"]) - value) <= 1e-6 * abs(value)
        for name in WRT["native32"]:
            ref = np.asarray(getattr(g, name))
            err = np.abs(res[name] - ref).max() / np.abs(ref).max()
            assert err <= 1e-6, (name, err)


def test_single_process_equals_value_and_grad(monkeypatch):
    """Without a process group the slab machinery runs as one rank and reproduces value_and_grad."""
    p = _problem("periodic")
    st = _initial(p)
    f = DD.distributed_run(p, STEPS, st)
    assert np.abs(f - lbm.Solver(p).run(st, STEPS).populations()).max() <= FWD_TOL
    calls = []
    original = lbm.Solver.step_moments
    monkeypatch.setattr(lbm.Solver, "step_moments", lambda *a, **kw: calls.append(1) or original(*a, **kw))
    for case, wrt in (("periodic", WRT["periodic"]), ("uniform_force", ("initial", "force")),
                      ("final", WRT["final"])):
        # the second: the fused adjoint compiled without the omega gradient; the third: moments replay
        p = _problem(case)
        st = _initial(p)
        v, g = A.value_and_grad(p, p.parameters(), st, STEPS, _loss(case), wrt=wrt, replay="states")
        calls.clear()
        v2, g2 = DD.distributed_value_and_grad(p, STEPS, _loss(case), st, wrt=wrt)
        assert bool(calls) == (case == "final"), case
        assert abs(v - v2) <= GRAD_TOL * abs(v)
        for name in wrt:
            ref = getattr(g, name)
            assert np.abs(getattr(g2, name) - ref).max() <= GRAD_TOL * np.abs(ref).max(), (case, name)


@pytest.mark.parametrize("case", ["periodic", "final", "open"])
def test_overlap_forced_on_one_rank_changes_no_bit(case, monkeypatch):
    """``_OVERLAP = "always"`` runs the split launches of a multi-rank step on one process (its own
    planes as the messages; what dist_bench.py --overlap-one-rank times on one GPU): populations,
    loss and every gradient equal the whole-slab steps bit for bit. Also checks that the split path
    really ran (the ranged step is called) and that another value of the switch is refused."""
    p = _problem(case)
    st = _initial(p)
    runs = {}
    for mode in (False, "always"):
        monkeypatch.setattr(DD, "_OVERLAP", mode)
        calls = []
        original = lbm.Solver.step_cells
        monkeypatch.setattr(lbm.Solver, "step_cells", lambda *a, **kw: calls.append(1) or original(*a, **kw))
        f = DD.distributed_run(p, STEPS, st)
        v, g = DD.distributed_value_and_grad(p, STEPS, _loss(case), st, adjoint=_adjoint(case), wrt=WRT[case])
        monkeypatch.setattr(lbm.Solver, "step_cells", original)
        assert bool(calls) == (mode == "always"), mode
        runs[mode] = (f, v, g)
    (f0, v0, g0), (f1, v1, g1) = runs[False], runs["always"]
    _same_bits(f1, f0, "f")
    _same_bits(v1, v0, "value")
    for name in WRT[case]:
        _same_bits(getattr(g1, name), getattr(g0, name), name)
    monkeypatch.setattr(DD, "_OVERLAP", "yes")
    with pytest.raises(ValueError, match="_OVERLAP='yes'"):
        DD.distributed_run(p, 2, st)


@pytest.mark.skipif(not __import__("warp").is_cuda_available(), reason="needs a CUDA device (runs on the GPU machine)")
def test_overlap_forced_on_cuda_changes_no_bit(monkeypatch):
    """The overlapped schedule on a GPU (forced on one rank, ``_OVERLAP = "always"``: the ranged
    native steps, the halo kernels and torch's copies on Warp's stream): a float32 D3Q19 cavity's
    populations and initial-population gradients (state replay and moments replay) equal the
    whole-slab steps bit for bit. The losses and the wall-velocity gradient are sums that the GPU
    accumulates with atomic adds, in an order that changes from run to run: those agree to float32
    round-off (on the H200 the first version of this test, all bit for bit, saw the wall-velocity
    gradient differ in its last bits)."""
    import warp as wp
    p = lbm.Problem((24, 20, 16), "D3Q19", omega=1.6, precision="float32", device="cuda:0",
                    boundaries=[lbm.Wall(face="z+", velocity=(0.08, 0.0, 0.0))] +
                    [lbm.Wall(face=f) for f in ("x-", "x+", "y-", "y+", "z-")])
    steps = 60
    losses = (L.KineticEnergy() + L.Probe((20, 3, 8), "ux", when="every"), L.KineticEnergy())
    runs = {}
    for mode in (False, "always"):
        monkeypatch.setattr(DD, "_OVERLAP", mode)
        dec = DD.SlabDecomposition(p)
        assert dec.overlaps() == (mode == "always")
        f = DD.distributed_run(dec, steps)
        grads = [DD.distributed_value_and_grad(dec, steps, loss, wrt=("initial", "wall_velocity")) for loss in losses]
        wp.synchronize()
        runs[mode] = (f, grads)
    (f0, grads0), (f1, grads1) = runs[False], runs["always"]
    _same_bits(f1, f0, "f")
    for (v0, g0), (v1, g1) in zip(grads0, grads1):
        assert abs(v1 - v0) <= 1e-6 * abs(v0)
        _same_bits(g1.initial, g0.initial, "initial")
        w0, w1 = np.asarray(g0.wall_velocity, np.float64), np.asarray(g1.wall_velocity, np.float64)
        assert np.abs(w1 - w0).max() <= 1e-5 * np.abs(w0).max()


def _fp16_problem():
    mask = np.zeros((16, 10), bool)
    mask[7:9, 4:6] = True  # across the cut
    return lbm.Problem((16, 10), "D2Q9", omega=1.2, precision="float16", device="cpu",
                       boundaries=[lbm.Wall(face="y-"), lbm.Wall(face="y+", velocity=(0.05, 0.0)), lbm.Wall(mask=mask)])


def _fp16_worker(rank, world, init, out):
    """One rank of the float16 slab run: 20 steps; 10 steps, a restart, 10 more; the gradient refused."""
    import torch.distributed as dist
    import warp as wp
    wp.config.log_level = wp.LOG_WARNING
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        f20 = DD.distributed_run(_fp16_problem, STEPS, initial=_initial)
        f10 = DD.distributed_run(_fp16_problem, STEPS // 2, initial=_initial, gather=False)
        DD.distributed_save_restart(os.path.join(out, "ck"), _fp16_problem, f10, step=STEPS // 2)
        g, step = DD.distributed_load_restart(os.path.join(out, "ck"), _fp16_problem)
        f20b = DD.distributed_run(_fp16_problem, STEPS - step, initial=g)
        try:
            DD.distributed_value_and_grad(_fp16_problem, 2, L.KineticEnergy(), initial=_initial)
            refused = ""
        except ValueError as err:
            refused = str(err)
        np.savez(os.path.join(out, f"rank{rank}.npz"), f20=f20, f10=f10, g=g, f20b=f20b, refused=refused)
    finally:
        dist.destroy_process_group()


def test_float16_slabs_2_ranks(tmp_path):
    """float16 storage on 2 gloo ranks: the forward equals one device's Solver.run bit for bit
    (populations in float32, as State.populations gives them); 10 steps, a restart and 10 more
    equal 20 steps bit for bit (the restart stores the float16 values; loading gives the slab's
    populations, which convert back exactly); the gradient is refused on every rank."""
    results = _launch("fp16", 2, tmp_path)
    p = _fp16_problem()
    st = _initial(p)
    solver = lbm.Solver(p)
    ref20 = solver.run(st, STEPS).populations()
    ref10 = solver.run(st, STEPS // 2).populations()
    assert ref20.dtype == np.float32
    assert not np.array_equal(ref20, p.state().populations())  # the lid moved the flow
    for r, res in enumerate(results):
        _same_bits(res["f20"], ref20, "f20")
        _same_bits(res["f20b"], ref20, "f20 after the restart")
        x0, n = DD.slab_bounds(16, 2)[r]
        _same_bits(res["f10"], ref10[:, x0:x0 + n], "owned slab")
        _same_bits(res["g"], res["f10"], "loaded slab")
        assert "precision='float16' is not supported by distributed_value_and_grad" in str(res["refused"])
    stored = np.load(tmp_path / "ck_0.npz")["f"]
    assert stored.dtype == np.float16  # the restart keeps the stored values


@pytest.mark.parametrize("lattice", ["D2Q9", "D3Q19", "D3Q27"])
def test_float16_stored_values_round_trip(lattice):
    """Every finite float16 value in every direction comes back bit for bit from the float32
    populations that slabs and restarts hand out (SlabDecomposition.populations, then _stored);
    -0.0 comes back as +0.0, which computes the same."""
    shape = (4, 3) if lattice == "D2Q9" else (4, 3, 2)
    dec = DD.SlabDecomposition(lbm.Problem(shape, lattice, precision="float16", device="cpu"))
    q = dec.problem.lattice.q
    x = np.arange(65536, dtype=np.uint16).view(np.float16)
    x = np.where(x.view(np.uint16) == 0x8000, np.float16(0), x)
    x = np.broadcast_to(x[np.isfinite(x)], (q, int(np.isfinite(x).sum()))).copy()
    pops = dec.populations(x)
    assert pops.dtype == np.float32
    back = dec._stored(pops)
    assert back.dtype == np.float16 and back.tobytes() == x.tobytes()


def test_bad_decompositions():
    """More ranks than x-planes, MemoryBudget, a KernelLoss and a snapshot series are refused (ValueError)."""
    p = _problem("periodic")
    with pytest.raises(ValueError, match="nx=16.*17 ranks"):
        DD.SlabDecomposition(p, rank=0, world=17)
    assert DD.slab_bounds(16, 3) == [(0, 6), (6, 5), (11, 5)]
    with pytest.raises(ValueError, match="MemoryBudget"):
        DD.distributed_value_and_grad(p, 2, L.KineticEnergy(), adjoint=A.MemoryBudget(states=4))
    kl = L.KernelLoss(None, dim=1)
    with pytest.raises(ValueError, match="KernelLoss"):
        DD.SlabDecomposition(p, rank=0, world=2).local_loss_terms(kl)
    series = L.VelocityMismatchSeries({3: np.zeros(p.shape + (p.lattice.dim,))})
    with pytest.raises(ValueError, match="VelocityMismatchSeries is not supported"):
        DD.SlabDecomposition(p, rank=0, world=2).local_loss_terms(series)


# ------------------------------------------------------------------ files per rank, bad input
HALF = 10


def _outcome(fn):
    """'TypeName: message' of what ``fn()`` raises, or 'no error'."""
    try:
        fn()
    except Exception as err:  # noqa: BLE001 - the test records whatever comes out
        return f"{type(err).__name__}: {err}"
    return "no error"


def _files_worker(rank, world, init, out):
    """One rank: restart round trip, VTK pieces, inputs that must fail on every rank; then rank 1
    dies and rank 0 tries to write VTK once more."""
    import torch.distributed as dist
    import warp as wp
    wp.config.log_level = wp.LOG_WARNING
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=20))
    out = Path(out)

    def make():
        return _problem("open")

    full = DD.distributed_run(make, 2 * HALF, initial=_initial, gather=False)
    dec = DD.SlabDecomposition(make())  # reused from here on: built once, as a caller may
    half = DD.distributed_run(dec, HALF, initial=_initial, gather=False)
    index = DD.distributed_save_restart(out / "ckpt", dec, half, HALF)
    f, step = DD.distributed_load_restart(index, make)
    resumed = DD.distributed_run(dec, HALF, initial=f, gather=False)
    DD.distributed_write_vti(out / "flow", make, full)
    outcomes = {
        "overwrite": _outcome(lambda: DD.distributed_write_vti(out / "flow", dec, full)),
        # rank 1 passes a slab of the wrong shape: rank 0's piece must not be published either
        "bad_piece": _outcome(lambda: DD.distributed_write_vti(out / "broken", dec,
                                                               full if rank == 0 else full[:, :-1])),
        "shapes": _outcome(lambda: DD.distributed_run(
            lambda: lbm.Problem((16, 10 + rank), "D2Q9", precision="float64", device="cpu"), 1)),
        "planes": _outcome(lambda: DD.distributed_run(
            lambda: lbm.Problem((1, 10), "D2Q9", precision="float64", device="cpu"), 1)),
    }
    # the group still works after every refusal: no rank was left inside a collective
    outcomes["after"] = _outcome(lambda: DD.distributed_run(dec, 1))
    # a rank that dies: the survivor's next collective must raise, and no index may appear
    f = DD.distributed_run(dec, 2, initial=_initial, gather=False)
    dist.barrier()
    if rank == 1:
        time.sleep(0.5)  # let rank 0 finish the barrier before the connection drops
        os._exit(3)
    t0 = time.perf_counter()
    outcomes["dead"] = _outcome(lambda: DD.distributed_write_vti(out / "dead", dec, f))
    outcomes["dead_seconds"] = time.perf_counter() - t0
    np.savez(out / "rank0.npz", full=full, resumed=resumed, step=step, **{k: np.array(v) for k, v in outcomes.items()})
    os._exit(0)  # the group cannot be torn down without its peer


def _read_vti(path):
    """(extent, {name: array (nx, ny, nz[, 3])}) of a VTK ImageData file with raw appended data."""
    raw = Path(path).read_bytes()
    head, _, appended = raw.partition(b"<AppendedData")
    root = ET.fromstring(head + b"</VTKFile>")
    ext = [int(v) for v in root.find("ImageData/Piece").get("Extent").split()]
    shape = (ext[1] - ext[0], ext[3] - ext[2], ext[5] - ext[4])
    data = appended[appended.index(b"_") + 1:]
    out = {}
    for a in root.iter("DataArray"):
        at = int(a.get("offset"))
        n = int(np.frombuffer(data[at:at + 8], np.uint64)[0])
        v = np.frombuffer(data[at + 8:at + 8 + n], np.float64)
        k = int(a.get("NumberOfComponents"))
        out[a.get("Name")] = v.reshape(shape[::-1] + (k,)).transpose(2, 1, 0, 3)  # x fastest, components last
    return tuple(ext), out


def test_files_restart_vtk_and_refusals_2_ranks(tmp_path):
    """2 ranks: N + save + load + N steps equal 2N bit for bit; the .pvti's pieces assemble to the
    single-rank field; bad input raises on every rank and publishes nothing; a dead rank makes the
    survivor raise; a 2-rank restart does not load on 1 rank."""
    codes, logs = _spawn("files", 2, tmp_path)
    assert codes == [0, 3], logs  # rank 1 exits with 3 on purpose
    res = np.load(tmp_path / "rank0.npz")
    assert np.array_equal(res["resumed"], res["full"])
    assert int(res["step"]) == HALF
    # VTK: the index names both pieces at their global extents; the pieces hold the global field
    root = ET.parse(tmp_path / "flow.pvti").getroot()
    assert root.find("PImageData").get("WholeExtent").split() == ["0", "16", "0", "10", "0", "1"]
    pieces = [(p.get("Extent"), p.get("Source")) for p in root.iter("Piece")]
    assert pieces == [("0 8 0 10 0 1", "flow_0.vti"), ("8 16 0 10 0 1", "flow_1.vti")]
    p = _problem("open")
    rho, u = io.macroscopic(p, lbm.Solver(p).run(_initial(p), 2 * HALF))
    parts = [_read_vti(tmp_path / src) for _, src in pieces]
    assert [e for e, _ in parts] == [(0, 8, 0, 10, 0, 1), (8, 16, 0, 10, 0, 1)]
    np.testing.assert_allclose(np.concatenate([d["density"][:, :, 0, 0] for _, d in parts]), rho, rtol=0, atol=1e-13)
    np.testing.assert_allclose(np.concatenate([d["velocity"][:, :, 0] for _, d in parts]), u, rtol=0, atol=1e-13)
    # refusals (rank 0's view; the worker also checks that the group still works afterwards, which
    # it would not if rank 1 had been left inside a collective)
    assert str(res["overwrite"]).startswith("FileExistsError") and "overwrite=True" in str(res["overwrite"])
    assert str(res["bad_piece"]).startswith("ValueError: distributed_write_vti failed on rank 1")
    assert "f holds populations of shape (9, 7, 10)" in str(res["bad_piece"])
    assert str(res["shapes"]).startswith("ValueError: the ranks built different global problems")
    assert "shape: rank 0 [16, 10], rank 1 [16, 11]" in str(res["shapes"])
    assert str(res["planes"]).startswith("ValueError: nx=1 x-planes cannot be split over 2 ranks")
    assert str(res["after"]) == "no error"
    assert str(res["dead"]).startswith("RuntimeError"), str(res["dead"])
    assert float(res["dead_seconds"]) < 15  # the closed connection is seen before the 20 s timeout
    left = sorted(f.name for f in tmp_path.iterdir())
    assert not [n for n in left if n.startswith(("broken", "dead", "."))], left
    index = tmp_path / "ckpt.json"
    stored_and_expected = re.escape(f"restart '{index}' was written by world_size=2 ") + ".*world_size=1"
    with pytest.raises(ValueError, match=stored_and_expected):
        DD.distributed_load_restart(index, _problem("open"))


def test_restart_refuses_other_shape(tmp_path):
    """A restart loads only into the same global problem: ValueError naming file, stored and expected shape."""
    p = _problem("periodic")
    f = DD.distributed_run(p, 2, initial=_initial, gather=False)
    index = DD.distributed_save_restart(tmp_path / "r", p, f, 2)
    f2, step = DD.distributed_load_restart(index, p)
    assert step == 2 and np.array_equal(f2, f)
    other = lbm.Problem((16, 12), "D2Q9", precision="float64", device="cpu")
    with pytest.raises(ValueError, match=r"r\.json' does not match.*shape: file \[16, 10\], expected \[16, 12\]"):
        DD.distributed_load_restart(index, other)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        DD.distributed_save_restart(tmp_path / "r", p, f, 2)


def test_dist_bench_runs_as_one_gloo_rank(tmp_path, monkeypatch):
    """benchmarks/dist_bench.py runs on the CPU as one gloo rank and writes a JSON line; against itself
    as the baseline its efficiencies are 1."""
    import importlib.util
    import json

    import torch.distributed as dist
    script = Path(__file__).parents[1] / "benchmarks" / "dist_bench.py"
    spec = importlib.util.spec_from_file_location("dist_bench", script)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    for name, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "127.0.0.1"),
                        ("MASTER_PORT", str(_free_port()))):
        monkeypatch.setenv(name, value)
    out = tmp_path / "bench.jsonl"
    try:
        bench.main(["--mode", "strong", "--size", "6", "--steps", "2", "--repeats", "1", "--gradient",
                    "--device", "cpu", "--out", str(out)])
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    row = json.loads(out.read_text())
    assert row["cells"] == 216 and row["world_size"] == 1 and row["forward_mlups"] > 0
    assert row["gradient_mlups_equivalent"] > 0
    assert bench.efficiency(row, out) == {"forward_efficiency": 1.0, "gradient_efficiency": 1.0}


if __name__ == "__main__":
    if sys.argv[1] == "fp16":
        _fp16_worker(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5])
    elif sys.argv[1] == "files":
        _files_worker(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5])
    else:
        _worker(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5])
