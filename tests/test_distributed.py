"""x-slab domain decomposition on torch.distributed (gloo, CPU): forward and gradients = one rank."""

import os
import socket
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import difflbm as lbm  # noqa: E402
from difflbm import adjoint as A, distributed as DD, losses as L  # noqa: E402

STEPS = 20
FWD_TOL = 1e-12
GRAD_TOL = 1e-10


def _problem(case):
    sh = (16, 10)
    mask = np.zeros(sh, bool)
    mask[7:9, 4:6] = True  # crosses the cut at x = 8 (2 and 4 ranks) and sits next to x = 6 (3 ranks)
    walls = [lbm.Wall(face="y-"), lbm.Wall(face="y+", velocity=(0.02, 0.0)), lbm.Wall(mask=mask)]
    kw = dict(omega=1.2, precision="float64", device="cpu")
    if case == "open":  # Warp's generated step adjoint
        return lbm.Problem(sh, "D2Q9", boundaries=walls + [lbm.VelocityInlet(face="x-", velocity=(0.03, 0.0)),
                                                           lbm.PressureOutlet(face="x+", density=1.0)], **kw)
    if case == "periodic":  # hand-written fused step adjoint (periodic in x, the cut wraps)
        return lbm.Problem(sh, "D2Q9", boundaries=walls, **kw)
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
    if case != "fields":
        loss = loss + L.Drag(2, when="every")
    return loss


WRT = {"open": ("initial", "omega", "wall_velocity", "inlet_velocity", "outlet_density"),
       "periodic": ("initial", "omega", "wall_velocity"),
       "uniform_force": ("initial", "omega", "force"),
       "fields": ("initial", "omega", "force", "solid_fraction")}


def _initial(p, seed=0):
    rng = np.random.default_rng(seed)
    return p.state(1 + 0.01 * rng.standard_normal(p.shape), 0.02 * rng.standard_normal(p.shape + (2,)))


def _adjoint(case):
    return A.Checkpointed(segment=6) if case == "periodic" else A.StoreAll()


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
        np.savez(os.path.join(out, f"rank{rank}.npz"), f=f, value=value,
                 **{n: getattr(g, n) for n in WRT[case]})
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(case, world, tmp_path):
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
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log
    return [np.load(tmp_path / f"rank{r}.npz") for r in range(world)]


def _check_against_single_rank(case, world, tmp_path):
    results = _launch(case, world, tmp_path)
    p = _problem(case)
    st = _initial(p)
    ref_f = lbm.Solver(p).run(st, STEPS).populations()
    value, g = A.value_and_grad(p, p.parameters(), st, STEPS, _loss(case), adjoint=A.StoreAll(), wrt=WRT[case])
    for res in results:
        assert np.abs(res["f"] - ref_f).max() <= FWD_TOL
        assert abs(float(res["value"]) - value) <= GRAD_TOL * abs(value)
        for name in WRT[case]:
            ref = np.asarray(getattr(g, name))
            err = np.abs(res[name] - ref).max() / np.abs(ref).max()
            assert err <= GRAD_TOL, (name, err)


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


def test_single_process_equals_value_and_grad():
    """Without a process group the slab machinery runs as one rank and reproduces value_and_grad."""
    p = _problem("periodic")
    st = _initial(p)
    f = DD.distributed_run(p, STEPS, st)
    assert np.abs(f - lbm.Solver(p).run(st, STEPS).populations()).max() <= FWD_TOL
    v, g = A.value_and_grad(p, p.parameters(), st, STEPS, _loss("periodic"), wrt=WRT["periodic"])
    v2, g2 = DD.distributed_value_and_grad(p, STEPS, _loss("periodic"), st, wrt=WRT["periodic"])
    assert abs(v - v2) <= GRAD_TOL * abs(v)
    for name in WRT["periodic"]:
        ref = getattr(g, name)
        assert np.abs(getattr(g2, name) - ref).max() <= GRAD_TOL * np.abs(ref).max(), name


def test_bad_decompositions():
    """More ranks than x-planes, MemoryBudget and a KernelLoss are refused with a ValueError."""
    p = _problem("periodic")
    with pytest.raises(ValueError, match="nx=16.*17 ranks"):
        DD.SlabDecomposition(p, rank=0, world=17)
    assert DD.slab_bounds(16, 3) == [(0, 6), (6, 5), (11, 5)]
    with pytest.raises(ValueError, match="MemoryBudget"):
        DD.distributed_value_and_grad(p, 2, L.KineticEnergy(), adjoint=A.MemoryBudget(states=4))
    kl = L.KernelLoss(None, dim=1)
    with pytest.raises(ValueError, match="KernelLoss"):
        DD.SlabDecomposition(p, rank=0, world=2).local_loss_terms(kl)


if __name__ == "__main__":
    _worker(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5])
