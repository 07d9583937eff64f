"""Is the D2Q9 forward faster at a register cap of 32, or was it the order of the runs? The
uncapped and the capped step of the bench's D2Q9 fp32 4096^2 lid cavity alternate three times
(CUDA graphs of 100 steps, median of 5 each). python3 benchmarks/d2q9_order.py [size]"""
import dataclasses, os, sys
import warp as wp
sys.path.insert(0, os.path.dirname(__file__))
from _common import DEVICE, emit, graph_of, timed  # noqa: E402
from difflbm import bench, kernels as K  # noqa: E402
from difflbm.bench import cavity_problem  # noqa: E402
from difflbm.solver import Solver  # noqa: E402

wp.config.quiet = True
size = int(sys.argv[1]) if len(sys.argv) > 1 else 4096
p = cavity_problem("D2Q9", size, "float32", DEVICE)
s, prm = Solver(p), p.parameters()
s.update_wall_term(prm)
a, b = p.state(), p.state()
unc = K.step_kernel(p.config, backward=False)  # the default: no cap (ptxas: 32 registers anyway)
cap = K.step_kernel(dataclasses.replace(p.config, max_registers=32), backward=False)
for rnd in range(3):
    for name, kern in (("uncapped", unc), ("cap 32", cap)):
        def stp(x, y, kern=kern):
            args = s.step_inputs(x, prm, 0)
            args[1] = y.f
            wp.launch(kern, dim=p.cell_count, inputs=args, device=DEVICE, block_dim=128)

        def run100(stp=stp):
            for _ in range(50):
                stp(a, b)
                stp(b, a)
        t = timed(graph_of(run100)) / 100
        emit(round=rnd, kernel=name, ms=round(t * 1e3, 4), mlups=round(p.cell_count / t / 1e6))
emit(copy_gbs=round(bench.copy_bandwidth(DEVICE) / 1e9) if wp.get_device(DEVICE).is_cuda else None)
