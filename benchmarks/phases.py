"""Where the gradient time goes, and how far the forward kernel is from a plain pull-stream kernel.

python3 benchmarks/phases.py [size] -> JSON lines: copy bandwidth; forward step (CUDA graph of 100
steps); fused adjoint step alone (graph of 100 launches); the checkpointed gradient of 100 steps in
steady state (2 warm-up calls of the same length); and two reference kernels on the same grid that
only pull 19 populations and apply BGK (periodic, no boundary code): shape at run time vs compiled
in. All medians of 5 (gradient: of 3), device synchronized.
"""
import json, sys, time
import warp as wp
wp.config.log_level = wp.LOG_WARNING
from difflbm import adjoint as A, kernels as K, losses as L, bench
from difflbm.bench import cavity_problem
from difflbm.solver import Solver

size = int(sys.argv[1]) if len(sys.argv) > 1 else 256
import os
dev = os.environ.get("PHASES_DEVICE", "cuda:0")
cells = size ** 3


def timed(fn, repeats=5):
    """Median seconds of ``fn`` (device synchronized around each repeat), as difflbm.bench measures."""
    return bench._time(fn, dev, repeats)[0]


def graph_of(fn):
    fn()
    with wp.ScopedCapture(device=dev, force_module_load=False) as cap:
        fn()
    return lambda: wp.capture_launch(cap.graph)


bw = bench.copy_bandwidth(dev)
print(json.dumps({"copy_gbs": round(bw / 1e9), "device": wp.get_device(dev).name, "warp": wp.__version__}), flush=True)
roof = bw / 156 / 1e6

p = cavity_problem("D3Q19", size, "float32", dev)
solver = Solver(p)
params = p.parameters()
a, b = p.state(), p.state()
def fwd():
    for _ in range(50):
        solver.step(a, b, params, update_walls=False)
        solver.step(b, a, params, update_walls=False)
t_f = timed(graph_of(fwd)) / 100
print(json.dumps({"phase": "forward step", "ms": t_f * 1e3, "mlups": cells / t_f / 1e6, "roofline_fraction": cells / t_f / 1e6 / roof}), flush=True)

fused = K.step_adjoint_kernel(p.config, omega_grad=False, force_grad=False)
grads = params.zeros_like()
adj1, adj2 = p.state(), p.state()
adj_wall = wp.zeros_like(solver.wall_term)
solver.update_wall_term(params)
def bwd():
    for _ in range(50):
        A._fused_step_adjoint(solver, fused, a, adj1, adj2, params, grads, None, ("initial", "wall_velocity"), adj_wall, None)
        A._fused_step_adjoint(solver, fused, a, adj2, adj1, params, grads, None, ("initial", "wall_velocity"), adj_wall, None)
t_b = timed(graph_of(bwd)) / 100
print(json.dumps({"phase": "fused adjoint step", "ms": t_b * 1e3, "over_forward": t_b / t_f,
                  "fraction_of_232B_roofline": (cells * 232 / t_b) / bw}), flush=True)

st = p.state()
run = lambda: A.value_and_grad(p, params, st, 100, L.KineticEnergy(), wrt=("initial", "wall_velocity"))
run(); run()
t_g = timed(run, 3)
print(json.dumps({"phase": "gradient T=100 steady", "s": t_g, "mlups_equivalent": cells * 100 / t_g / 1e6,
                  "over_forward": t_g / (100 * t_f), "floor_2fwd_plus_adj_over_forward": (2 * t_f + t_b) / t_f}), flush=True)

# per-activity device time of one gradient without graphs (Warp's timing API, CUPTI), summed by name
if dev != "cpu":
    from _common import profile
    print(json.dumps({"profile": "gradient T=100 without graphs", **profile(
        lambda: A.value_and_grad(p, params, st, 100, L.KineticEnergy(), wrt=("initial", "wall_velocity"), graph=False))}),
        flush=True)

# register caps and block sizes for the step and the fused adjoint (forward step and adjoint step alone)
import dataclasses
from difflbm.problem import Problem
def sweep(label, prob, caps, blocks):
    for cap in caps:
        prob.config = dataclasses.replace(prob.config, max_registers=cap)
        s = Solver(prob)
        par = prob.parameters()
        x, y = prob.state(), prob.state()
        fk = K.step_adjoint_kernel(prob.config, omega_grad=False, force_grad=False)
        gr = par.zeros_like()
        j1, j2 = prob.state(), prob.state()
        aw = wp.zeros_like(s.wall_term)
        s.update_wall_term(par)
        for block in blocks:
            K.BLOCK_DIM = block
            def f2():
                for _ in range(50):
                    s.step(x, y, par, update_walls=False)
                    s.step(y, x, par, update_walls=False)
            def b2():
                for _ in range(50):
                    A._fused_step_adjoint(s, fk, x, j1, j2, par, gr, None, ("initial", "wall_velocity"), aw, None)
                    A._fused_step_adjoint(s, fk, x, j2, j1, par, gr, None, ("initial", "wall_velocity"), aw, None)
            tf = timed(graph_of(f2)) / 100
            tb = timed(graph_of(b2)) / 100
            print(json.dumps({"sweep": label, "cap": cap, "block": block, "forward_mlups": round(cells / tf / 1e6),
                              "forward_fraction": round(cells / tf / 1e6 / roof, 3), "adjoint_ms": round(tb * 1e3, 3),
                              "adjoint_over_forward": round(tb / tf, 2),
                              "adjoint_fraction_232B": round((cells * 232 / tb) / bw, 3)}), flush=True)
    K.BLOCK_DIM = 128

def adjoint_variants(variants):
    """The fused adjoint step alone on the lid cavity, per (label, register cap, block size). The
    fourth session's streamed / split variants were removed from kernels.py after they measured
    slower (docs/PERF_NOTES.md has their numbers and commits)."""
    for label, cap, block in variants:
        K.BLOCK_DIM = block
        cfg = dataclasses.replace(p.config, max_registers=cap)
        fk = K.step_adjoint_kernel(cfg, omega_grad=False, force_grad=False)
        def b3():
            for _ in range(50):
                A._fused_step_adjoint(solver, fk, a, adj1, adj2, params, grads, None, ("initial", "wall_velocity"), adj_wall, None)
                A._fused_step_adjoint(solver, fk, a, adj2, adj1, params, grads, None, ("initial", "wall_velocity"), adj_wall, None)
        tb = timed(graph_of(b3)) / 100
        print(json.dumps({"adjoint variant": label, "cap": cap, "block": K.BLOCK_DIM, "adjoint_ms": round(tb * 1e3, 3),
                          "adjoint_over_forward": round(tb / t_f, 2),
                          "adjoint_fraction_232B": round((cells * 232 / tb) / bw, 3)}), flush=True)
    K.BLOCK_DIM = 128

if len(sys.argv) > 2 and sys.argv[2] == "quick":
    sys.exit(0)
if len(sys.argv) > 2 and sys.argv[2] == "caps":
    adjoint_variants([("cap %s block %d" % (c, b), c, b)
                      for c, b in [(88, 128), (96, 128), (104, 128), (112, 128), (96, 64), (96, 256), (128, 128)]])
    sys.exit(0)
if len(sys.argv) > 2 and sys.argv[2] == "sweep":
    sweep("lid cavity", cavity_problem("D3Q19", size, "float32", dev), [None, 64, 56, 48, 80], [128, 256])
    sweep("periodic box", Problem((size,) * 3, "D3Q19", "bgk", omega=1.0, precision="float32", device=dev), [None, 64], [128])
    sys.exit(0)

# reference kernels: periodic pull + BGK, nothing else
C = p.lattice.velocities3().tolist(); W = p.lattice.weights.tolist(); Q = 19
vecQ = wp.types.vector(Q, wp.float32)
NS = size

def make(const_shape: bool, cap):
    @wp.kernel(enable_backward=False, module="unique", cuda_max_registers=cap)
    def pull_bgk(f_in: wp.array2d(dtype=wp.float32), f_out: wp.array2d(dtype=wp.float32), n: int):
        idx = wp.tid()
        m = n
        if wp.static(const_shape):
            m = wp.static(NS)
        z = idx % m
        y = (idx / m) % m
        x = idx / (m * m)
        f = vecQ()
        for i in range(wp.static(Q)):
            sx = (x - wp.static(C[i][0]) + m) % m
            sy = (y - wp.static(C[i][1]) + m) % m
            sz = (z - wp.static(C[i][2]) + m) % m
            f[i] = f_in[i, (sx * m + sy) * m + sz]
        rho = float(0.0); ux = float(0.0); uy = float(0.0); uz = float(0.0)
        for i in range(wp.static(Q)):
            rho += f[i]
            ux += float(wp.static(C[i][0])) * f[i]
            uy += float(wp.static(C[i][1])) * f[i]
            uz += float(wp.static(C[i][2])) * f[i]
        ux = ux / rho; uy = uy / rho; uz = uz / rho
        usq = 1.5 * (ux * ux + uy * uy + uz * uz)
        for i in range(wp.static(Q)):
            cu = 3.0 * (float(wp.static(C[i][0])) * ux + float(wp.static(C[i][1])) * uy + float(wp.static(C[i][2])) * uz)
            feq = wp.static(W[i]) * rho * (1.0 + cu + 0.5 * cu * cu - usq)
            f_out[i, idx] = f[i] + (feq - f[i])
    return pull_bgk

fa = wp.full((Q, cells), 1.0 / 19.0, dtype=wp.float32, device=dev)
fb = wp.zeros_like(fa)
for const_shape in (False, True):
    for cap in (None, 64):
        for block in (128, 256):
            k = make(const_shape, cap)
            def ref():
                for _ in range(50):
                    wp.launch(k, dim=cells, inputs=[fa, fb, size], device=dev, block_dim=block)
                    wp.launch(k, dim=cells, inputs=[fb, fa, size], device=dev, block_dim=block)
            t = timed(graph_of(ref)) / 100
            print(json.dumps({"phase": "reference pull+BGK", "const_shape": const_shape, "cap": cap, "block": block,
                              "mlups": cells / t / 1e6, "roofline_fraction": cells / t / 1e6 / (bw / 152 / 1e6)}), flush=True)
