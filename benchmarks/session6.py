"""Sixth session: the gathered form of the moments adjoint and the forward keeping its last leaf.

python3 benchmarks/session6.py [size] [kernels|gradients|all] -> JSON lines, all on the 3D lid
cavity D3Q19 fp32 (bench's problem): copy bandwidth; forward step and forward step storing moments
(CUDA graph of 100 steps); each moments adjoint variant (plain or gathered form in and out) at
several register caps (graph of 100 launches); the checkpointed gradient of T steps (KineticEnergy
of the final state, d/d initial and wall velocity) as the fifth session ran it (sqrt(T) segments,
every leaf replayed, adjoint pushed every step) and with this session's changes one at a time, in
steady state (two warm-up calls). Medians of 5 (gradients: of 3), device synchronized.
"""
import dataclasses, json, math, sys
import warp as wp
wp.config.log_level = wp.LOG_WARNING
from difflbm import adjoint as A, kernels as K, losses as L, bench
from difflbm.bench import cavity_problem
from difflbm.solver import Solver

size = int(sys.argv[1]) if len(sys.argv) > 1 else 256
part = sys.argv[2] if len(sys.argv) > 2 else "all"
dev = "cuda:0"
cells = size ** 3
timed = lambda fn, repeats=5: bench._time(fn, dev, repeats)[0]


def graph_of(fn):
    fn()
    with wp.ScopedCapture(device=dev, force_module_load=False) as cap:
        fn()
    return lambda: wp.capture_launch(cap.graph)


def emit(**kw):
    print(json.dumps(kw), flush=True)


bw = bench.copy_bandwidth(dev)
emit(copy_gbs=round(bw / 1e9), device=wp.get_device(dev).name, warp=wp.__version__, size=size)
p = cavity_problem("D3Q19", size, "float32", dev)
solver = Solver(p)
params = p.parameters()
a, b = p.state(), p.state()
mom = wp.zeros((4, cells), dtype=wp.float32, device=dev)
solver.update_wall_term(params)


def fwd():
    for _ in range(50):
        solver.step(a, b, params, update_walls=False)
        solver.step(b, a, params, update_walls=False)


def fwd_m():
    for _ in range(50):
        solver.step_moments(a, b, mom, params)
        solver.step_moments(b, a, mom, params)


t_f = timed(graph_of(fwd)) / 100
emit(phase="forward step", ms=t_f * 1e3, mlups=cells / t_f / 1e6, fraction_152B=cells * 152 / t_f / bw)
t_fm = timed(graph_of(fwd_m)) / 100
emit(phase="forward step storing moments", ms=t_fm * 1e3, over_forward=t_fm / t_f, fraction_168B=cells * 168 / t_fm / bw)

if part in ("kernels", "all", "sweep", "final"):
    grads = params.zeros_like()
    adj1, adj2 = p.state(), p.state()
    adj_wall = wp.zeros_like(solver.wall_term)
    wrt = ("initial", "wall_velocity")

    def adjoint_time(kernel):
        def run():
            for _ in range(50):
                A._fused_step_adjoint(solver, kernel, None, adj1, adj2, params, grads, None, wrt, adj_wall, None, moments=mom)
                A._fused_step_adjoint(solver, kernel, None, adj2, adj1, params, grads, None, wrt, adj_wall, None, moments=mom)
        return timed(graph_of(run)) / 100

    sweep = (((False, True, (None,)), (True, False, (None, 80, 72, 64, 56)), (False, False, (None, 64)),
              (True, True, (None,))) if part != "sweep" else ((True, False, (64, 56, 48, 40)), (False, False, (56, 48))))
    if part == "final":  # the kernels as value_and_grad launches them
        sweep = ((False, True, (None,)), (True, False, (K.GATHERED_MAX_REGISTERS,)),
                 (False, False, (K.GATHERED_MAX_REGISTERS,)), (True, True, (None,)))
    for block in ((K.BLOCK_DIM,) if part != "sweep" else (128, 256, 64)):
        K.BLOCK_DIM, default_block = block, K.BLOCK_DIM
        for pull_in, push_out, caps in sweep:
            if part == "final":
                K.BLOCK_DIM = default_block if push_out else K.GATHERED_BLOCK_DIM
            for cap in caps:
                if block != 128 and cap not in (56, None):
                    continue
                k = K.step_adjoint_kernel(p.config, omega_grad=False, force_grad=False, moments=True, pull_in=pull_in,
                                          push_out=push_out, max_registers=cap)
                t_m = adjoint_time(k)
                emit(phase="moments adjoint", pull_in=pull_in, push_out=push_out, block_dim=block,
                     cap=cap or K.adjoint_register_cap(p.config), ms=t_m * 1e3, over_forward=t_m / t_f,
                     fraction_172B=cells * 172 / t_m / bw)
        K.BLOCK_DIM = default_block

if part in ("gradients", "all", "sweep", "final"):
    st = p.state()
    wrt = ("initial", "wall_velocity")
    variants = [("fifth session", False, False, None), ("+ forward keeps the last leaf", True, False, None),
                ("+ gathered form, cap 96", True, True, 96), ("+ gathered form, cap 64", True, True, 64)]
    if part == "sweep":
        variants = [("gathered form, cap 64", True, True, 64), ("gathered form, cap 56", True, True, 56),
                    ("gathered form, cap 48", True, True, 48)]
    if part == "final":
        variants = [("fifth session", False, False, None), ("default Checkpointed()", True, True, None),
                    ("MemoryBudget(bytes=40e9)", True, True, None)]
    cap0, block0 = K.GATHERED_MAX_REGISTERS, K.GATHERED_BLOCK_DIM
    for steps in (100, 400, 1000):
        for name, keep, gathered, cap in variants:
            A._KEEP_LAST_LEAF, A._GATHERED_FORM = keep, gathered
            K.GATHERED_MAX_REGISTERS = cap or cap0
            K.GATHERED_BLOCK_DIM = block0 if part == "final" else 128
            strategy = (A.Checkpointed(math.isqrt(steps - 1) + 1) if name == "fifth session" else
                        A.MemoryBudget(bytes=int(40e9)) if name.startswith("MemoryBudget") else A.Checkpointed())
            spans = A._schedule(strategy, steps, a.f.capacity, dev, mom.capacity if keep else a.f.capacity)[0]
            run = lambda: A.value_and_grad(p, params, st, steps, L.KineticEnergy(), wrt=wrt)
            run(); run()
            t_g = timed(run, 3)
            emit(phase=f"gradient T={steps}", variant=name, spans=spans, s=t_g, mlups_equivalent=cells * steps / t_g / 1e6,
                 over_forward=t_g / (steps * t_f), peak_mempool_gb=wp.get_mempool_used_mem_high(dev) / 1e9)
    A._KEEP_LAST_LEAF, A._GATHERED_FORM, K.GATHERED_MAX_REGISTERS, K.GATHERED_BLOCK_DIM = True, True, cap0, block0

if part in ("sweep", "profile"):
    # where the time of one T = 100 gradient goes (graphs off, so every launch is timed)
    import time
    st = p.state()
    run_ng = lambda: A.value_and_grad(p, params, st, 100, L.KineticEnergy(), wrt=("initial", "wall_velocity"), graph=False)
    run_ng()
    wp.synchronize_device(dev)
    t0 = time.perf_counter()
    wp.timing_begin(cuda_filter=wp.TIMING_ALL)
    run_ng()
    res = wp.timing_end()
    wall = time.perf_counter() - t0
    agg = {}
    for r in res:
        n, ms = agg.get(r.name[:60], (0, 0.0))
        agg[r.name[:60]] = (n + 1, ms + r.elapsed)
    emit(profile="gradient T=100 without graphs", wall_s=wall, device_ms_total=sum(v[1] for v in agg.values()),
         by_name={k: [v[0], round(v[1], 2)] for k, v in sorted(agg.items(), key=lambda kv: -kv[1][1])[:14]})
