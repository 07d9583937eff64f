"""Forward step of the bench's lid cavity per lattice at register caps and block sizes (seventh
session, issue #6): D2Q9 4096^2, D3Q27 256^3, D3Q19 256^3 and 512^3 (fp32), D3Q19 fp16 256^3.

python3 benchmarks/lattices.py [quick] -> JSON lines: copy bandwidth, then per configuration the
median step time of a CUDA graph of 100 steps (5 repeats), MLUPS and the fraction of the copy
roofline at the bytes a step moves (2 Q itemsize + the 4-byte cell code).
"""
import dataclasses, os, sys
import warp as wp
sys.path.insert(0, os.path.dirname(__file__))
from _common import DEVICE, emit, graph_of, timed  # noqa: E402
from difflbm import bench, kernels as K  # noqa: E402
from difflbm.bench import cavity_problem  # noqa: E402
from difflbm.solver import Solver  # noqa: E402

wp.config.quiet = True
cuda = wp.get_device(DEVICE).is_cuda
quick = len(sys.argv) > 1 and sys.argv[1] == "quick"
bw = bench.copy_bandwidth(DEVICE) if cuda else float("nan")
emit(copy_gbs=round(bw / 1e9) if cuda else None, device=wp.get_device(DEVICE).name, warp=wp.__version__)
cases = [("D2Q9", 4096, "float32", (None, 64, 48, 40, 32)), ("D3Q27", 256, "float32", (None, 96, 80, 72, 64)),
         ("D3Q19", 512, "float32", (None,)), ("D3Q19", 256, "float16", (None, 64))]
if quick or not cuda:
    cases = [(lat, 16 if lat != "D2Q9" else 64, prec, caps[:2]) for lat, _, prec, caps in cases]
for lat, size, prec, caps in cases:
    p = cavity_problem(lat, size, prec, DEVICE)
    s, prm = Solver(p), p.parameters()
    s.update_wall_term(prm)
    a, b = p.state(), p.state()
    q = p.lattice.q
    nb = 2 * q * (2 if prec == "float16" else 4) + 4
    for cap in caps:
        kern = K.step_kernel(dataclasses.replace(p.config, max_registers=cap), backward=False)
        for blk in (64, 128, 256):
            def stp(x, y, kern=kern, blk=blk):
                args = s.step_inputs(x, prm, 0)
                args[1] = y.f
                wp.launch(kern, dim=p.cell_count, inputs=args, device=DEVICE, block_dim=blk)

            def run100(stp=stp):
                for _ in range(50):
                    stp(a, b)
                    stp(b, a)
            t = timed(graph_of(run100)) / 100
            emit(lattice=lat, size=size, precision=prec, cap=cap, block=blk, ms=round(t * 1e3, 4),
                 mlups=round(p.cell_count / t / 1e6), fraction=round(p.cell_count * nb / t / bw, 3) if cuda else None,
                 bytes_per_cell=nb)
    del a, b
