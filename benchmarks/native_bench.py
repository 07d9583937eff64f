"""The library's forward step with the native cell body (difflbm.native) against the Warp-generated
step, on the bench's lid cavity, per lattice, precision and size (ninth session, issue #6).

For each case: both solvers step the same perturbed state 4 times and the results are compared
bit for bit on the device (mismatching entries counted), then CUDA graphs of 100 steps of each are
timed in alternation (median of 5 replays, ``rounds`` rounds); MLUPS and the fraction of the copy
roofline at 2 Q itemsize + 4 bytes per cell (the cell code).
Usage: ``python3 benchmarks/native_bench.py [rounds] [CASES] [MODE]`` with CASES like
``D3Q19:256:float32,D3Q27:256:float32`` (default: the list below; a fourth field ``ball`` puts a solid
ball of diameter size / 4 in the cavity's centre, ``channel`` makes it a channel with a velocity inlet
and a pressure outlet, ``periodic`` a periodic box without boundaries, ``box`` / ``zwalls`` / ``zlid`` /
``xwalls`` still walls on all faces / on the z faces / z faces with the lid on z+ / the x faces); BENCH_DEVICE=cpu smoke-runs it.
MODE ``blocks``: the native step only, at CUDA blocks of 64, 128 and 256 threads (alternating);
MODE ``caps``: the native step uncapped and at register caps (D3Q19 56 / 48, D3Q27 80 / 72, alternating);
MODE ``forms``: the native step's forms (difflbm.native.FORMS: one cell per thread, link-free loads, two
    cells per thread; each checked bit for bit against the generated step first), alternating;
    NATIVE_BENCH_FORMS lists them (a suffix "+c": the grid and coded box compiled in as constants;
    "+r": the moving-wall terms from the table of distinct rows, DIFFLBM_NATIVE_WALL_ROWS=1; "+c+r";
    "+s": the solid test in every cell, DIFFLBM_NATIVE_SOLID_FLAG=0; "+f": the codes read from memory where
    they come from the faces alone, DIFFLBM_NATIVE_FACE_CODES=0; without "+r", DIFFLBM_NATIVE_WALL_ROWS=0);
MODE ``ncu``: one launch of each step inside a profiler range (``ncu --profile-from-start off``).
"""
import os
import sys

import warp as wp

sys.path.insert(0, os.path.dirname(__file__))
from _common import DEVICE, emit, graph_of, timed  # noqa: E402
import difflbm as lbm  # noqa: E402
from difflbm import bench, kernels as K  # noqa: E402
from difflbm.bench import cavity_problem  # noqa: E402
from difflbm.native import FORMS, native_step_kernel  # noqa: E402
from difflbm.solver import Solver  # noqa: E402

wp.config.quiet = True
# the forms timed by MODE forms: difflbm.native.FORMS, "+c" for the grid and box as constants
# (DIFFLBM_NATIVE_CONSTANTS=1); NATIVE_BENCH_FORMS="one,pairs+c" picks some
FORM_LIST = os.environ.get("NATIVE_BENCH_FORMS", ",".join(FORMS)).split(",")
CASES = ("D3Q19:256:float32:ball,D3Q19:256:float32,D3Q19:256:float16,D3Q19:512:float32,D3Q19:512:float16,D3Q27:256:float32,"
         "D3Q27:256:float16,D2Q9:4096:float32,D3Q19:256:float64,D3Q19:128:float32,D3Q19:64:float32")


def perturb_kernel(sdtype, shifted):
    @wp.kernel(enable_backward=False, module="unique")
    def perturb(f: wp.array2d(dtype=sdtype)):
        i, idx = wp.tid()
        r = wp.sin(float(idx) * 0.37 + float(i) * 1.3)
        if wp.static(shifted):
            f[i, idx] = sdtype(float(f[i, idx]) + 0.01 * r)
        else:
            f[i, idx] = f[i, idx] * sdtype(1.0 + 0.05 * r)
    return perturb


def mismatch_kernel(bits):
    """Counts entries whose bits differ (the populations viewed as unsigned integers of their size)."""
    @wp.kernel(enable_backward=False, module="unique")
    def mismatch(a: wp.array2d(dtype=bits), b: wp.array2d(dtype=bits), count: wp.array(dtype=wp.int32)):
        i, idx = wp.tid()
        if a[i, idx] != b[i, idx]:
            wp.atomic_add(count, 0, 1)
    return mismatch


def as_bits(arr):
    """The same memory as an unsigned-integer array of the element's size (no copy)."""
    bits = {2: wp.uint16, 4: wp.uint32, 8: wp.uint64}[wp.types.type_size_in_bytes(arr.dtype)]
    return wp.array(ptr=arr.ptr, shape=arr.shape, dtype=bits, device=arr.device), bits


def channel_problem(lattice, size, precision):
    """A channel along x: velocity inlet 0.05 (x-), pressure outlet (x+), walls on the other faces."""
    dim = 2 if lattice == "D2Q9" else 3
    walls = [lbm.Wall(face=f) for f in ("y-", "y+", "z-", "z+")[: 2 * (dim - 1)]]
    return lbm.Problem((size,) * dim, lattice, "bgk", omega=1.0, precision=precision, device=DEVICE,
                       boundaries=walls + [lbm.VelocityInlet(face="x-", velocity=(0.05,) + (0.0,) * (dim - 1)),
                                           lbm.PressureOutlet(face="x+", density=1.0)])


def periodic_problem(lattice, size, precision):
    """A fully periodic box (no boundaries, every cell code 0): the step without walls, to compare with
    the float16 lab's periodic kernels (benchmarks/fp16_pairs_lab.py)."""
    dim = 2 if lattice == "D2Q9" else 3
    return lbm.Problem((size,) * dim, lattice, "bgk", omega=1.0, precision=precision, device=DEVICE)


def walls_problem(faces, lid=None):
    """A builder of a box with still walls on ``faces`` (and a lid moving at 0.05 in x on face
    ``lid``); the other axes periodic. To split the cost of the walls: all faces ("box"), the z
    faces only ("zwalls", "zlid"), the x faces only ("xwalls")."""
    def build(lattice, size, precision):
        dim = 2 if lattice == "D2Q9" else 3
        walls = [lbm.Wall(face=f) for f in faces if f != lid]
        if lid is not None:
            walls.append(lbm.Wall(face=lid, velocity=(0.05,) + (0.0,) * (dim - 1)))
        return lbm.Problem((size,) * dim, lattice, "bgk", omega=1.0, precision=precision, device=DEVICE,
                           boundaries=walls)
    return build


def obstacle_problem(lattice, size, precision):
    """The lid cavity with a solid ball (disc in 2D) of diameter size / 4 at its centre: a non-empty coded box."""
    import numpy as np

    p0 = cavity_problem(lattice, size, precision, DEVICE)
    grid = np.indices(p0.shape, dtype=np.float32)
    r2 = sum((g - (n - 1) / 2) ** 2 for g, n in zip(grid, p0.shape))
    return lbm.Problem(p0.shape, lattice, "bgk", omega=1.0, precision=precision, device=DEVICE,
                       boundaries=list(p0.boundaries) + [lbm.Wall(mask=r2 <= (size / 8) ** 2)])


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    cases = (sys.argv[2] if len(sys.argv) > 2 and sys.argv[2] else CASES).split(",")
    mode = sys.argv[3] if len(sys.argv) > 3 else "compare"
    default_block = K.forward_block_dim
    cuda = wp.get_device(DEVICE).is_cuda
    bw = bench.copy_bandwidth(DEVICE) if cuda else float("nan")
    emit(copy_gbs=round(bw / 1e9) if cuda else None, device=wp.get_device(DEVICE).name, warp=wp.__version__)
    for case in cases:
        lat, size, prec, *shape = case.split(":")
        size = int(size) if cuda else (64 if lat == "D2Q9" else 12)
        builders = {"ball": obstacle_problem, "channel": channel_problem, "periodic": periodic_problem,
                    "box": walls_problem(("x-", "x+", "y-", "y+", "z-", "z+")),
                    "zwalls": walls_problem(("z-", "z+")), "zlid": walls_problem(("z-", "z+"), lid="z+"),
                    "xwalls": walls_problem(("x-", "x+"))}
        p = builders[shape[0]](lat, size, prec) if shape else cavity_problem(lat, size, prec, DEVICE)
        natives = {}
        for form in (FORM_LIST if mode == "forms" else (None,)):
            if form is not None:
                flags = form.split("+")[1:]
                os.environ["DIFFLBM_NATIVE_FORM"] = form.split("+")[0]
                os.environ["DIFFLBM_NATIVE_CONSTANTS"] = "1" if "c" in flags else "0"
                os.environ["DIFFLBM_NATIVE_WALL_ROWS"] = "1" if "r" in flags else "0"
                os.environ["DIFFLBM_NATIVE_SOLID_FLAG"] = "0" if "s" in flags else "1"
                os.environ["DIFFLBM_NATIVE_FACE_CODES"] = "0" if "f" in flags else "1"
            try:
                natives[form] = Solver(p)
            finally:
                for name in ("DIFFLBM_NATIVE_FORM", "DIFFLBM_NATIVE_CONSTANTS", "DIFFLBM_NATIVE_WALL_ROWS",
                             "DIFFLBM_NATIVE_SOLID_FLAG"):
                    os.environ.pop(name, None)
        native = natives[None] if mode != "forms" else natives[FORM_LIST[0]]
        os.environ["DIFFLBM_NATIVE_STEP"] = "0"
        try:
            generated = Solver(p)
        finally:
            del os.environ["DIFFLBM_NATIVE_STEP"]
        prm = p.parameters()
        for s in list(natives.values()) + [generated]:
            s.update_wall_term(prm)
        sd = K.storage_dtype(prec)
        start = p.state()
        wp.launch(perturb_kernel(sd, prec == "float16"), dim=start.f.shape, inputs=[start.f], device=DEVICE)
        n = p.cell_count
        nb = 2 * p.lattice.q * {"float16": 2, "float32": 4, "float64": 8}[prec] + 4

        def after_4_steps(s):
            a, b = start.copy(), p.state()
            for _ in range(4):
                s.step(a, b, prm, update_walls=False)
                a, b = b, a
            return a

        reference = after_4_steps(generated)
        for form, s in natives.items():
            out = after_4_steps(s)
            count = wp.zeros(1, dtype=wp.int32, device=DEVICE)
            (a_bits, bits), (b_bits, _) = as_bits(out.f), as_bits(reference.f)
            wp.launch(mismatch_kernel(bits), dim=start.f.shape, inputs=[a_bits, b_bits, count], device=DEVICE)
            emit(case=case, native=s.native_step, form=form, mismatches_after_4_steps=int(count.numpy()[0]),
                 values=int(start.f.shape[0] * n))
            del out
        del reference, start
        a, b = p.state(), p.state()

        def run_of(s):
            def run():
                for _ in range(50):
                    s.step(a, b, prm, update_walls=False)
                    s.step(b, a, prm, update_walls=False)
            return run

        if mode == "ncu":
            import torch
            wp.synchronize_device(DEVICE)
            torch.cuda.profiler.start()
            native.step(a, b, prm, update_walls=False)
            generated.step(a, b, prm, update_walls=False)
            wp.synchronize_device(DEVICE)
            torch.cuda.profiler.stop()
            continue

        def with_block(block, run):
            def go():
                K.forward_block_dim = lambda cfg: block
                try:
                    run()
                finally:
                    K.forward_block_dim = default_block
            return go

        if mode == "caps":
            graphs = []
            for cap in (None, 80, 72) if lat == "D3Q27" else (None, 56, 48):
                capped = Solver(p)
                capped.forward_kernel = native_step_kernel(p.config, max_registers=cap)
                graphs.append((f"native_cap{cap}", graph_of(run_of(capped))))
        elif mode == "forms":
            graphs = [(f"native_{form}", graph_of(run_of(sv))) for form, sv in natives.items()]
        elif mode == "blocks":
            graphs = [(f"native_block{bd}", graph_of(with_block(bd, run_of(native)))) for bd in (64, 128, 256)]
        else:
            graphs = [("native", graph_of(run_of(native))), ("generated", graph_of(run_of(generated)))]
        for r in range(rounds):
            for name, g in graphs:
                t = timed(g) / 100
                emit(round=r, case=case, step=name, ms=round(t * 1e3, 4), mlups=round(n / t / 1e6),
                     fraction=round(n * nb / t / bw, 3) if cuda else None, bytes_per_cell=nb)
        del a, b, graphs, native, natives, generated


if __name__ == "__main__":
    main()
