"""Pieces the GPU benchmark scripts share: JSON lines, CUDA graphs of launch sequences, the lid
cavity with its forward-step times, and the device-time profile of one call."""
import json, os, time
import warp as wp
from difflbm import bench
from difflbm.bench import cavity_problem
from difflbm.solver import Solver

DEVICE = os.environ.get("BENCH_DEVICE", "cuda:0")  # "cpu" only to smoke-test a script


def emit(**kw):
    print(json.dumps(kw), flush=True)


def timed(fn, repeats=5):
    """Median seconds of fn over ``repeats`` calls, device synchronized (difflbm.bench._time)."""
    return bench._time(fn, DEVICE, repeats)[0]


def graph_of(fn):
    """Run fn once (loading its kernels), then capture it; returns the graph's replay (fn on the CPU)."""
    fn()
    if not wp.get_device(DEVICE).is_cuda:
        return fn
    with wp.ScopedCapture(device=DEVICE, force_module_load=False) as cap:
        fn()

    def replay():
        wp.capture_launch(cap.graph)

    # the graph holds pointers, not the arrays: keep fn (and the solver and arrays it closes over)
    # alive as long as the replay (a freed solver's wall terms made the tenth session's first caps
    # run end in an illegal memory access)
    replay.keeps = fn
    return replay


class Cavity:
    """The bench's D3Q19 fp32 lid cavity: problem, solver, parameters, two states, a moments array,
    the copy bandwidth and the median times of a forward step with and without storing moments
    (graphs of 100 steps), emitted as JSON lines."""

    def __init__(self, size):
        self.size, self.cells = size, size ** 3
        self.bw = bench.copy_bandwidth(DEVICE) if wp.get_device(DEVICE).is_cuda else float("nan")
        emit(copy_gbs=round(self.bw / 1e9) if self.bw == self.bw else None, device=wp.get_device(DEVICE).name,
             warp=wp.__version__, size=size)
        self.p = p = cavity_problem("D3Q19", size, "float32", DEVICE)
        self.solver, self.params = Solver(p), p.parameters()
        self.a, self.b = p.state(), p.state()
        self.mom = wp.zeros((4, self.cells), dtype=wp.float32, device=DEVICE)
        self.solver.update_wall_term(self.params)
        s, a, b, prm, mom = self.solver, self.a, self.b, self.params, self.mom

        def fwd():
            for _ in range(50):
                s.step(a, b, prm, update_walls=False)
                s.step(b, a, prm, update_walls=False)

        def fwd_m():
            for _ in range(50):
                s.step_moments(a, b, mom, prm)
                s.step_moments(b, a, mom, prm)

        self.t_f = timed(graph_of(fwd)) / 100
        emit(phase="forward step", ms=self.t_f * 1e3, mlups=self.cells / self.t_f / 1e6,
             fraction_152B=self.cells * 152 / self.t_f / self.bw)
        self.t_fm = timed(graph_of(fwd_m)) / 100
        emit(phase="forward step storing moments", ms=self.t_fm * 1e3, over_forward=self.t_fm / self.t_f,
             fraction_168B=self.cells * 168 / self.t_fm / self.bw)


def lab_cavity(size, precision, rng):
    """The forward labs' setup: the bench's D3Q19 lid cavity at ``precision`` ("float32" or
    "float16"), its solver with the wall terms set, parameters, and a state ``a`` of equilibrium
    weights perturbed by 5 % (float16 stores the deviation f - w). Returns (p, s, prm, a, f0)."""
    import numpy as np
    from difflbm import kernels as K

    W = K.physics("D3Q19", "float32")["W"]
    p = cavity_problem("D3Q19", size, precision, DEVICE)
    s = Solver(p)
    prm = p.parameters()
    s.update_wall_term(prm)
    a = p.state()
    w = np.array(W, dtype=np.float32)[:, None]
    f0 = w * (1.0 + 0.05 * rng.standard_normal((len(W), p.cell_count)).astype(np.float32))
    if precision == "float16":
        f0 = f0 - w
    a.f.assign(f0.astype(np.float16 if precision == "float16" else np.float32))
    return p, s, prm, a, f0


def profile(run, top=12) -> dict:
    """Device time per activity name (first 60 characters) of one call of ``run`` after a warm-up
    call, from Warp's timing API; with the wall time of that call."""
    run()
    wp.synchronize_device(DEVICE)
    t0 = time.perf_counter()
    wp.timing_begin(cuda_filter=wp.TIMING_ALL)
    run()
    res = wp.timing_end()
    wall = time.perf_counter() - t0
    agg = {}
    for r in res:
        n, ms = agg.get(r.name[:60], (0, 0.0))
        agg[r.name[:60]] = (n + 1, ms + r.elapsed)
    return dict(wall_s=wall, device_ms_total=sum(v[1] for v in agg.values()),
                by_name={k: [v[0], round(v[1], 2)] for k, v in sorted(agg.items(), key=lambda kv: -kv[1][1])[:top]})
