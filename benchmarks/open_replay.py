"""Two gradients the sixth session built but did not time on a GPU (seventh session, issue #6).

python3 benchmarks/open_replay.py [part] -> JSON lines
  open: a D3Q19 fp32 channel (nx x ny x nz = 2N x N x N, velocity inlet x-, pressure outlet x+,
        walls elsewhere), KineticEnergy of the final state, d/d initial and inlet velocity, T steps:
        replay="moments" vs replay="states" (same gradient to round-off, both checked here).
  fp64: the lid cavity (bench's problem) in float64: the gathered-form moments adjoint at the
        compiler's register choice (the default) vs a cap of 56.
Medians of 3 calls after a warm-up call, device synchronized.
"""
import os, sys
import numpy as np
import warp as wp
sys.path.insert(0, os.path.dirname(__file__))
from _common import DEVICE, emit, timed  # noqa: E402
from difflbm import adjoint as A, kernels as K, losses as L  # noqa: E402
from difflbm.bench import cavity_problem  # noqa: E402
from difflbm.problem import PressureOutlet, Problem, VelocityInlet, Wall  # noqa: E402

wp.config.quiet = True
part = sys.argv[1] if len(sys.argv) > 1 else "open"
n = int(sys.argv[2]) if len(sys.argv) > 2 else 128
steps = int(sys.argv[3]) if len(sys.argv) > 3 else 200


def grad_time(p, wrt, **kw):
    params, st = p.parameters(), p.state()
    out = {}

    def run():
        out["r"] = A.value_and_grad(p, params, st, steps, L.KineticEnergy(), wrt=wrt, **kw)
    t = timed(run, repeats=3)
    return t, out["r"]


if part == "open":
    p = Problem((2 * n, n, n), "D3Q19", "bgk", omega=1.6, precision="float32", device=DEVICE,
                boundaries=[VelocityInlet(face="x-", velocity=(0.04, 0.0, 0.0)), PressureOutlet(face="x+", density=1.0),
                            Wall(face="y-"), Wall(face="y+"), Wall(face="z-"), Wall(face="z+")])
    cells = p.cell_count
    wrt = ("initial", "inlet_velocity")
    res = {}
    for replay in ("moments", "states"):
        t, (loss, g) = grad_time(p, wrt, replay=replay)
        res[replay] = g
        emit(problem="channel", shape=list(p.shape), steps=steps, replay=replay, s=round(t, 4),
             mlups_equivalent=round(cells * steps / t / 1e6), loss=float(loss), schedule=g.schedule)
    gi = {k: np.asarray(res[k].inlet_velocity, dtype=np.float64) for k in res}
    d0 = {k: np.asarray(res[k].initial, dtype=np.float64) for k in res}
    emit(check="moments vs states", inlet_rel=float(np.abs(gi["moments"] - gi["states"]).max() / np.abs(gi["states"]).max()),
         initial_rel=float(np.abs(d0["moments"] - d0["states"]).max() / np.abs(d0["states"]).max()))

if part == "fp64":
    p = cavity_problem("D3Q19", n, "float64", DEVICE)
    wrt = ("initial", "wall_velocity")
    base = K.gathered_register_cap
    for cap in (None, 56, 64, 80):
        K.gathered_register_cap = (lambda cfg, cap=cap: cap)
        t, (loss, g) = grad_time(p, wrt)
        emit(problem="cavity float64", size=n, steps=steps, gathered_cap=cap, s=round(t, 4),
             mlups_equivalent=round(p.cell_count * steps / t / 1e6), replay=g.schedule.get("replay"),
             wall_velocity_grad=float(np.abs(g.wall_velocity).sum()))
    K.gathered_register_cap = base
