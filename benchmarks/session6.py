"""Sixth session: the gathered form of the moments adjoint and the forward keeping its last leaf.

python3 benchmarks/session6.py [size] [kernels|gradients|all] -> JSON lines, all on the 3D lid
cavity D3Q19 fp32 (bench's problem): copy bandwidth; forward step and forward step storing moments
(CUDA graph of 100 steps); each moments adjoint variant (plain or gathered form in and out) at
several register caps (graph of 100 launches); the checkpointed gradient of T steps (KineticEnergy
of the final state, d/d initial and wall velocity) as the fifth session ran it (sqrt(T) segments,
every leaf replayed, adjoint pushed every step) and with this session's changes one at a time, in
steady state (two warm-up calls). Medians of 5 (gradients: of 3), device synchronized.
"""
import math, sys
import warp as wp
wp.config.log_level = wp.LOG_WARNING
from difflbm import adjoint as A, kernels as K, losses as L
from _common import Cavity, emit, graph_of, profile, timed

size = int(sys.argv[1]) if len(sys.argv) > 1 else 256
part = sys.argv[2] if len(sys.argv) > 2 else "all"
c = Cavity(size)
p, solver, params, a, mom, cells, bw, t_f = c.p, c.solver, c.params, c.a, c.mom, c.cells, c.bw, c.t_f
dev = p.device

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
                 over_forward=t_g / (steps * t_f), peak_mempool_gb=wp.get_mempool_used_mem_high(dev) / 1e9 if dev.is_cuda else None)
    A._KEEP_LAST_LEAF, A._GATHERED_FORM, K.GATHERED_MAX_REGISTERS, K.GATHERED_BLOCK_DIM = True, True, cap0, block0

if part in ("sweep", "profile"):
    # where the time of one T = 100 gradient goes (graphs off, so every launch is timed)
    st = p.state()
    emit(profile="gradient T=100 without graphs", **profile(
        lambda: A.value_and_grad(p, params, st, 100, L.KineticEnergy(), wrt=("initial", "wall_velocity"), graph=False),
        top=14))
