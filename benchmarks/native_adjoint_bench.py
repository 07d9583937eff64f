"""The moments adjoint that writes the gathered form (the gradient's hot kernel): native body
(difflbm.native, uncapped and at 56 registers) against the Warp-generated kernel (its cap of 56),
per launch, on the bench's lid cavity (ninth session, issue #6; not yet run on a GPU).

Each variant first adjoins the same random adjoint state and moments; the outputs are compared bit
for bit (mismatching entries counted). Then CUDA graphs of 100 launches are timed in alternation
(median of 5 replays, ``rounds`` rounds); the floor is 4 Q + 16 + 4 bytes per cell read and 4 Q
written (the adjoint state, rho and u, the cell code), as a fraction of the copy bandwidth.
Usage: ``python3 benchmarks/native_adjoint_bench.py [rounds] [size] [precisions]``; BENCH_DEVICE=cpu
smoke-runs it at 12^3.
"""
import os
import sys

import numpy as np
import warp as wp

sys.path.insert(0, os.path.dirname(__file__))
from _common import DEVICE, emit, graph_of, timed  # noqa: E402
from native_bench import as_bits, mismatch_kernel  # noqa: E402
from difflbm import bench, kernels as K, native as N  # noqa: E402
from difflbm.bench import cavity_problem  # noqa: E402
from difflbm.solver import Solver  # noqa: E402

wp.config.quiet = True


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    cuda = wp.get_device(DEVICE).is_cuda
    size = (int(sys.argv[2]) if len(sys.argv) > 2 else 256) if cuda else 12
    precisions = (sys.argv[3] if len(sys.argv) > 3 else "float32,float16").split(",")
    bw = bench.copy_bandwidth(DEVICE) if cuda else float("nan")
    emit(copy_gbs=round(bw / 1e9) if cuda else None, device=wp.get_device(DEVICE).name, warp=wp.__version__,
         size=size)
    rng = np.random.default_rng(0)
    for prec in precisions:
        p = cavity_problem("D3Q19", size, prec, DEVICE)
        s = Solver(p)
        prm, grads = p.parameters(), p.parameters()
        s.update_wall_term(prm)
        q, n = p.lattice.q, p.cell_count
        adj_a = wp.array(rng.standard_normal((q, n)).astype(np.float32), device=DEVICE)
        adj_b = wp.zeros((q, n), dtype=wp.float32, device=DEVICE)
        mom = wp.array(np.concatenate([1.0 + 0.01 * rng.standard_normal((1, n)),
                                       0.01 * rng.standard_normal((3, n))]).astype(np.float32), device=DEVICE)
        adj_wall = wp.zeros(s.wall_term.shape, dtype=wp.float32, device=DEVICE)
        g = p.grid3
        variants = [("generated_cap56", K.step_adjoint_kernel(p.config, omega_grad=False, force_grad=False, moments=True,
                                                             pull_in=True, push_out=False, max_registers=56), []),
                    ("native", N.native_moments_adjoint_kernel(p.config, True), N.extra_inputs(p)),
                    ("native_cap56", N.native_moments_adjoint_kernel(p.config, True, max_registers=56),
                     N.extra_inputs(p))]

        def launch(kernel, extra, x, y):
            wp.launch(kernel, dim=n, device=DEVICE, block_dim=K.GATHERED_BLOCK_DIM,
                      inputs=[None, x, y, p.code, p.solid_wall, p.face_wall, p.wall_slot, s.wall_term, prm.omega,
                              adj_wall, grads.omega, prm.force, grads.force, p.link_q, prm.solid_fraction, p.slot,
                              prm.inlet_velocity[0], prm.outlet_density, grads.inlet_velocity[0],
                              grads.outlet_density, 1, 0, 0, 0, 0, g[0], g[1], g[2], mom, 0] + extra)

        outs = []
        for name, kernel, extra in variants:
            adj_b.zero_()
            launch(kernel, extra, adj_a, adj_b)
            outs.append(wp.clone(adj_b))
        for (name, _, _), out in zip(variants[1:], outs[1:]):
            count = wp.zeros(1, dtype=wp.int32, device=DEVICE)
            (x_bits, bits), (y_bits, _) = as_bits(out), as_bits(outs[0])
            wp.launch(mismatch_kernel(bits), dim=out.shape, inputs=[x_bits, y_bits, count], device=DEVICE)
            emit(precision=prec, check=name, mismatches_vs_generated=int(count.numpy()[0]), values=q * n)
        del outs

        def run_of(kernel, extra):
            def run():
                for _ in range(50):
                    launch(kernel, extra, adj_a, adj_b)
                    launch(kernel, extra, adj_b, adj_a)
            return run

        graphs = [(name, graph_of(run_of(kernel, extra))) for name, kernel, extra in variants]
        nb = 4 * q + 16 + 4 + 4 * q
        for r in range(rounds):
            for name, gr in graphs:
                t = timed(gr) / 100
                emit(round=r, precision=prec, variant=name, ms=round(t * 1e3, 4),
                     fraction=round(n * nb / t / bw, 3) if cuda else None, bytes_per_cell=nb)
        del graphs, adj_a, adj_b, mom


if __name__ == "__main__":
    main()
