"""Forward lab, ninth session (issue #6): the lid-cavity step with its per-cell body written as native
C++/CUDA (``wp.func_native``) inside a Warp kernel, next to the library's step, timed in alternation.

The seventh session counted 504.5 M instructions per step for the library's step against 379.6 M
for a periodic pull without boundaries, and the float16 step is bound by instructions. Warp's code
for an array read computes a 64-bit byte offset from the array's strides per access, and its
momentum sums keep the multiplications by zero velocity components. The native body:
- addresses every population as a 32-bit element offset from the array's base (one
  ``IMAD.WIDE`` per load), the link choice as a select between two offsets (``off``) or between two
  pointers (``ptr``);
- sums only the non-zero velocity components (the same additions in the same order: adding a zero
  changes no finite value, so the result is bit-identical);
- otherwise the library's operations in the library's order (checked bit for bit in float32).

Variants: ``lib`` (Solver.step), ``nat_off``, ``nat_ptr``, ``nat_rcp`` (``off`` with u = m * (1/rho):
one division instead of three; not bit-identical, the difference is printed), ``nat_off_r56`` /
``nat_off_r48`` (``off`` at register caps of 56 / 48; ptxas uncapped: 64 float32, 72 float16), ``ref`` (the periodic
pull + BGK without codes, forward_lab.py: the ceiling of the layout).
Usage: ``python3 benchmarks/forward_lab7.py [size] [time|check|ncu] [rounds]``; BENCH_DEVICE=cpu with
``check`` runs the native body on the CPU (the same C++ through Warp's CPU compiler).
Element offsets are 32-bit unsigned: Q * cells < 2^32 (the lab refuses larger grids).
"""
import os
import sys

import numpy as np
import warp as wp

sys.path.insert(0, os.path.dirname(__file__))
from _common import DEVICE, emit, graph_of, timed  # noqa: E402
from difflbm import bench, kernels as K  # noqa: E402
from difflbm.bench import cavity_problem  # noqa: E402
from difflbm.solver import Solver  # noqa: E402
from forward_lab import make  # noqa: E402

wp.config.quiet = True
ph = K.physics("D3Q19", "float32")
Q, C, W, OPP = ph["Q"], ph["C"], ph["W"], ph["OPP"]


def _flt(v: float) -> str:
    """A C float constant equal to float32(v) (the rounding Warp's dtype(constant) does)."""
    return f"((float){float(v)!r})"


def _signed_sum(terms) -> str:
    """'a - b + c' from [(+1, 'a'), (-1, 'b'), (+1, 'c')] with zero coefficients dropped, in order."""
    out = ""
    for s, t in terms:
        if s == 0:
            continue
        if not out:
            out = t if s > 0 else f"-{t}"
        else:
            out += f" + {t}" if s > 0 else f" - {t}"
    return out or "0.0f"


def native_body(stor: str, form: str = "off", rcp: bool = False) -> str:
    """C++ of one cell's update: pull with half-way bounce-back links, moving-wall terms, BGK."""
    T = "wp::float16" if stor == "float16" else "wp::float32"
    shifted = stor == "float16"
    axis = {(0, 1): "sxm", (0, -1): "sxp", (1, 1): "sym", (1, -1): "syp", (2, 1): "szm", (2, -1): "szp"}
    L = []
    a = L.append
    a("const int nyz = ny * nz;")
    a("const unsigned int un = (unsigned int)(nx * nyz);")
    a("const unsigned int ui = (unsigned int)idx;")
    a("const int z = idx % nz;")
    a("const int y = (idx / nz) % ny;")
    a("const int x = idx / nyz;")
    a(f"const {T}* __restrict__ fi = f_in.data;")
    a(f"{T}* __restrict__ fo = f_out.data;")
    a("const unsigned int cell = code.data[idx];")
    a(f"if ((cell >> {K.KIND_SHIFT}) == {K.KIND_SOLID}u) {{")
    a(f"    for (unsigned int q = 0; q < {Q}u; ++q) fo[q * un + ui] = fi[q * un + ui];")
    a("    return;")
    a("}")
    # offsets of the pull sources along each axis, wrapped (the source of c = +1 is x - 1)
    a("const int sxm = (x == 0) ? (nx - 1) * nyz : -nyz;")
    a("const int sxp = (x == nx - 1) ? -(nx - 1) * nyz : nyz;")
    a("const int sym = (y == 0) ? (ny - 1) * nz : -nz;")
    a("const int syp = (y == ny - 1) ? -(ny - 1) * nz : nz;")
    a("const int szm = (z == 0) ? nz - 1 : -1;")
    a("const int szp = (z == nz - 1) ? -(nz - 1) : 1;")
    if form == "ptr":
        a(f"const {T}* __restrict__ own = fi + ui;")
    a("float f0 = static_cast<float>(fi[ui]);")
    for i in range(1, Q):
        parts = [axis[(k, C[i][k])] for k in range(3) if C[i][k] != 0]
        d = " + ".join(parts)
        bit = f"((cell >> {i}u) & 1u)"
        if form == "off":
            a(f"float f{i} = static_cast<float>(fi[{bit} ? ({OPP[i]}u * un + ui) : ({i}u * un + ui + (unsigned int)({d}))]);")
        else:
            a(f"float f{i} = static_cast<float>(*({bit} ? (own + {OPP[i]}u * un) : (own + {i}u * un + ({d}))));")
    a(f"if (cell & {K.LINK_MASK}u) {{")
    a("    const int ws = wall_slot.data[idx];")
    a("    if (ws >= 0) {")
    a("        const float* wt = (const float*)((const char*)wall_term.data + (size_t)ws * (size_t)wall_term.strides[0]);")
    for i in range(1, Q):
        a(f"        if ((cell >> {i}u) & 1u) f{i} = f{i} + wt[{i}];")
    a("    }")
    a("}")
    if shifted:
        for i in range(Q):
            a(f"f{i} = f{i} + {_flt(W[i])};")
    # collision, the library's order; zero velocity components dropped from the sums
    a("const float rho = " + " + ".join(f"f{i}" for i in range(Q)) + ";")
    for k, m in enumerate(("mx", "my", "mz")):
        a(f"const float {m} = " + _signed_sum([(C[i][k], f"f{i}") for i in range(Q)]) + ";")
    if rcp:
        a("const float inv = 1.0f / rho;")
        a("const float ux = mx * inv; const float uy = my * inv; const float uz = mz * inv;")
    else:
        a("const float ux = mx / rho; const float uy = my / rho; const float uz = mz / rho;")
    a("const float usq = 1.5f * (ux * ux + uy * uy + uz * uz);")
    for i in range(Q):
        cu = _signed_sum([(C[i][0], "ux"), (C[i][1], "uy"), (C[i][2], "uz")])
        sh = f" - {_flt(W[i])}" if shifted else ""
        a("{")
        a(f"    const float cu = 3.0f * ({cu});")
        a(f"    const float wr = {_flt(W[i])} * rho;")
        a("    const float feq = wr * (1.0f + cu + 0.5f * cu * cu - usq);")
        a(f"    const float val = f{i} + omega * (feq - f{i});")
        a(f"    fo[{i}u * un + ui] = {T}(val{sh});")
        a("}")
    return "\n".join(L)


def native_kernel(stor_dtype, form="off", rcp=False, max_registers=None):
    stor = "float16" if stor_dtype == wp.float16 else "float32"
    snippet = native_body(stor, form, rcp)
    f32 = wp.float32

    @wp.func_native(snippet)
    def cell_update(f_in: wp.array2d(dtype=stor_dtype), f_out: wp.array2d(dtype=stor_dtype),
                    code: wp.array(dtype=wp.uint32), wall_slot: wp.array(dtype=wp.int32),
                    wall_term: wp.array2d(dtype=f32), omega: f32, idx: int, nx: int, ny: int, nz: int):
        ...

    @wp.kernel(enable_backward=False, module="unique", cuda_max_registers=max_registers)
    def native_step(f_in: wp.array2d(dtype=stor_dtype), f_out: wp.array2d(dtype=stor_dtype),
                    code: wp.array(dtype=wp.uint32), wall_slot: wp.array(dtype=wp.int32),
                    wall_term: wp.array2d(dtype=f32), omega_arr: wp.array(dtype=f32), nx: int, ny: int, nz: int):
        idx = wp.tid()
        cell_update(f_in, f_out, code, wall_slot, wall_term, omega_arr[0], idx, nx, ny, nz)

    return native_step


VARIANTS = {"nat_off": ("off", False), "nat_ptr": ("ptr", False), "nat_rcp": ("off", True),
            "nat_off_r56": ("off", False, 56), "nat_off_r48": ("off", False, 48)}


def main():
    size = int(sys.argv[1]) if len(sys.argv) > 1 else 256
    what = sys.argv[2] if len(sys.argv) > 2 else "time"
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    cuda = wp.get_device(DEVICE).is_cuda
    n = size ** 3
    if Q * n >= 2 ** 32:
        raise ValueError(f"size={size}: Q * cells must be < 2^32 for the lab's 32-bit offsets")
    bw = bench.copy_bandwidth(DEVICE) if cuda and what == "time" else float("nan")
    emit(copy_gbs=round(bw / 1e9) if bw == bw else None, device=wp.get_device(DEVICE).name, warp=wp.__version__,
         size=size)
    rng = np.random.default_rng(0)
    only = os.environ.get("LAB7_ONLY")
    precs = os.environ.get("LAB7_PRECISION", "float32,float16").split(",")
    for prec, stor in (("float32", wp.float32), ("float16", wp.float16)):
        if prec not in precs:
            continue
        p = cavity_problem("D3Q19", size, prec, DEVICE)
        s = Solver(p)
        prm = p.parameters()
        s.update_wall_term(prm)
        a, b, c = p.state(), p.state(), p.state()
        w = np.array(W, dtype=np.float32)[:, None]
        f0 = w * (1.0 + 0.05 * rng.standard_normal((Q, n)).astype(np.float32))
        if stor == wp.float16:
            f0 = f0 - w
        npd = np.float16 if stor == wp.float16 else np.float32
        a.f.assign(f0.astype(npd))
        nb = 156 if stor == wp.float32 else 80
        s.step(a, b, prm, update_walls=False)
        lib1 = b.f.numpy().copy()
        s.step(b, c, prm, update_walls=False)
        lib2 = c.f.numpy().copy()
        kernels = {name: native_kernel(stor, *spec) for name, spec in VARIANTS.items()}

        def launch(kern, x, y):
            wp.launch(kern, dim=n, inputs=[x, y, p.code, p.wall_slot, s.wall_term, prm.omega, size, size, size],
                      device=DEVICE, block_dim=K.BLOCK_DIM)

        for name, kern in kernels.items():
            launch(kern, a.f, b.f)
            out1 = b.f.numpy().copy()
            launch(kern, b.f, c.f)
            out2 = c.f.numpy()
            emit(check=name, precision=prec, step1_bit_identical=bool(np.array_equal(out1, lib1)),
                 step2_bit_identical=bool(np.array_equal(out2, lib2)),
                 max_abs_diff=float(np.abs(out2.astype(np.float64) - lib2.astype(np.float64)).max()))
        if what == "ncu":
            import torch
            wp.synchronize_device(DEVICE)
            torch.cuda.profiler.start()
            s.step(a, b, prm, update_walls=False)
            for kern in kernels.values():
                launch(kern, a.f, b.f)
            wp.synchronize_device(DEVICE)
            torch.cuda.profiler.stop()
        if what != "time":
            continue
        rsteps = make("ref", stor)
        bits = wp.zeros(1, dtype=wp.uint32, device=DEVICE)

        def lib():
            for _ in range(50):
                s.step(a, b, prm, update_walls=False)
                s.step(b, a, prm, update_walls=False)

        def native_of(kern):
            def run():
                for _ in range(50):
                    launch(kern, a.f, b.f)
                    launch(kern, b.f, a.f)
            return run

        def ref():
            for _ in range(50):
                for x, y in ((a.f, b.f), (b.f, a.f)):
                    wp.launch(rsteps, dim=n, inputs=[x, y, p.code, bits, p.wall_slot, s.wall_term, prm.omega,
                                                     size, size, size, 0], device=DEVICE, block_dim=128)

        timed_variants = [("lib", lib)] + [(nm, native_of(k)) for nm, k in kernels.items()] + [("ref", ref)]
        if only:
            timed_variants = [(nm, fn) for nm, fn in timed_variants if nm in only.split(",")]
        graphs = [(name, graph_of(fn)) for name, fn in timed_variants]
        for r in range(rounds):
            for name, g in graphs:
                t = timed(g) / 100
                emit(round=r, variant=name, precision=prec, ms=round(t * 1e3, 4), mlups=round(n / t / 1e6),
                     fraction=round(n * nb / t / bw, 3), bytes_per_cell=nb)
        del a, b, c, graphs


if __name__ == "__main__":
    main()
