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

``face``: the cell code read only by cells on a domain face (the lid cavity has no other coded
cells), so interior cells' pulls wait for no load.
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
from _common import DEVICE, emit, graph_of, lab_cavity, timed  # noqa: E402
from difflbm import bench, kernels as K  # noqa: E402
from difflbm.native import _literal, _signed_sum as signed_sum, division_magic  # noqa: E402
from forward_lab import make  # noqa: E402

wp.config.quiet = True
ph = K.physics("D3Q19", "float32")
Q, C, W, OPP = ph["Q"], ph["C"], ph["W"], ph["OPP"]


def _flt(v: float) -> str:
    """A C float constant equal to float32(v) (the rounding Warp's dtype(constant) does)."""
    return _literal(v, "float")


def _signed_sum(terms) -> str:
    """'a - b + c' from [(+1, 'a'), (-1, 'b'), (+1, 'c')] with zero coefficients dropped, in order."""
    return signed_sum(terms, "0.0f")


def native_body(stor: str, form: str = "off", rcp: bool = False, fastdiv: bool = False, dev: bool = False) -> str:
    """C++ of one cell's update: pull with half-way bounce-back links, moving-wall terms, BGK.

    form: ``off`` (link choice as a select of 32-bit offsets, after the code is read), ``ptr`` (a
    select of pointers), ``spec`` (every pull issued before the code is read; cells with links then
    reload their link directions from their own opposite populations in a branch); rcp: u = m * (1 / rho);
    fastdiv: the cell's coordinates by multiply-shift (magic numbers) instead of integer division;
    dev (float16 only): the collision on the stored deviations s_i = f_i - w_i (rho = 1 + sum s_i).
    """
    T = "wp::float16" if stor == "float16" else "wp::float32"
    shifted = stor == "float16"
    if dev and not shifted:
        raise ValueError("dev=True is the float16 (deviation-storing) form")
    axis = {(0, 1): "sxm", (0, -1): "sxp", (1, 1): "sym", (1, -1): "syp", (2, 1): "szm", (2, -1): "szp"}
    L = []
    a = L.append
    a("const int nyz = ny * nz;")
    a("const unsigned int un = (unsigned int)(nx * nyz);")
    a("const unsigned int ui = (unsigned int)idx;")
    if fastdiv:
        a("const int q1 = (int)(((unsigned long long)ui * (unsigned long long)mz) >> sz);")
        a("const int x = (int)(((unsigned long long)(unsigned int)q1 * (unsigned long long)my) >> sy);")
        a("const int z = idx - q1 * nz;")
        a("const int y = q1 - x * ny;")
    else:
        a("const int z = idx % nz;")
        a("const int y = (idx / nz) % ny;")
        a("const int x = idx / nyz;")
    a(f"const {T}* __restrict__ fi = f_in.data;")
    a(f"{T}* __restrict__ fo = f_out.data;")
    solid = [f"if ((cell >> {K.KIND_SHIFT}) == {K.KIND_SOLID}u) {{",
             f"    for (unsigned int q = 0; q < {Q}u; ++q) fo[q * un + ui] = fi[q * un + ui];",
             "    return;", "}"]
    if form == "face":
        # only cells on a domain face (or in a box of coded cells, empty here) may have a code: the
        # others' pulls do not wait for a load
        a("const bool may = x == 0 | x == nx - 1 | y == 0 | y == ny - 1 | z == 0 | z == nz - 1;")
        a("unsigned int cell = 0u;")
        a("if (may) cell = code.data[idx];")
        L.extend(solid)
    elif form != "spec":
        a("const unsigned int cell = code.data[idx];")
        L.extend(solid)
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
        d = " + ".join(axis[(k, C[i][k])] for k in range(3) if C[i][k] != 0)
        bit = f"((cell >> {i}u) & 1u)"
        if form in ("off", "face"):
            a(f"float f{i} = static_cast<float>(fi[{bit} ? ({OPP[i]}u * un + ui) : ({i}u * un + ui + (unsigned int)({d}))]);")
        elif form == "ptr":
            a(f"float f{i} = static_cast<float>(*({bit} ? (own + {OPP[i]}u * un) : (own + {i}u * un + ({d}))));")
        else:
            a(f"float f{i} = static_cast<float>(fi[{i}u * un + ui + (unsigned int)({d})]);")
    if form == "spec":
        a("const unsigned int cell = code.data[idx];")
        L.extend(solid)
    a(f"if (cell & {K.LINK_MASK}u) {{")
    if form == "spec":
        for i in range(1, Q):
            a(f"    if ((cell >> {i}u) & 1u) f{i} = static_cast<float>(fi[{OPP[i]}u * un + ui]);")
    a("    const int ws = wall_slot.data[idx];")
    a("    if (ws >= 0) {")
    a("        const float* wt = (const float*)((const char*)wall_term.data + (size_t)ws * (size_t)wall_term.strides[0]);")
    for i in range(1, Q):
        a(f"        if ((cell >> {i}u) & 1u) f{i} = f{i} + wt[{i}];")
    a("    }")
    a("}")
    if shifted and not dev:
        for i in range(Q):
            a(f"f{i} = f{i} + {_flt(W[i])};")
    # collision, the library's order; zero velocity components dropped from the sums
    if dev:
        a("const float drho = " + " + ".join(f"f{i}" for i in range(Q)) + ";")
        a("const float rho = 1.0f + drho;")
    else:
        a("const float rho = " + " + ".join(f"f{i}" for i in range(Q)) + ";")
    for k, m in enumerate(("mx", "my_", "mz_")):
        a(f"const float {m} = " + _signed_sum([(C[i][k], f"f{i}") for i in range(Q)]) + ";")
    if rcp:
        a("const float inv = 1.0f / rho;")
        a("const float ux = mx * inv; const float uy = my_ * inv; const float uz = mz_ * inv;")
    else:
        a("const float ux = mx / rho; const float uy = my_ / rho; const float uz = mz_ / rho;")
    a("const float usq = 1.5f * (ux * ux + uy * uy + uz * uz);")
    for i in range(Q):
        cu = _signed_sum([(C[i][0], "ux"), (C[i][1], "uy"), (C[i][2], "uz")])
        a("{")
        a(f"    const float cu = 3.0f * ({cu});")
        if dev:
            # s_i' = s_i + omega (feq_i - w_i - s_i), feq_i - w_i = w_i (drho + rho (cu + cu^2 / 2 - usq))
            a(f"    const float seq = {_flt(W[i])} * (drho + rho * (cu + 0.5f * cu * cu - usq));")
            a(f"    fo[{i}u * un + ui] = {T}(f{i} + omega * (seq - f{i}));")
        else:
            sh = f" - {_flt(W[i])}" if shifted else ""
            a(f"    const float wr = {_flt(W[i])} * rho;")
            a("    const float feq = wr * (1.0f + cu + 0.5f * cu * cu - usq);")
            a(f"    const float val = f{i} + omega * (feq - f{i});")
            a(f"    fo[{i}u * un + ui] = {T}(val{sh});")
        a("}")
    return "\n".join(L)


def native_kernel(stor_dtype, form="off", rcp=False, max_registers=None, fastdiv=False, dev=False):
    stor = "float16" if stor_dtype == wp.float16 else "float32"
    snippet = native_body(stor, form, rcp, fastdiv, dev)
    f32 = wp.float32

    @wp.func_native(snippet)
    def cell_update(f_in: wp.array2d(dtype=stor_dtype), f_out: wp.array2d(dtype=stor_dtype),
                    code: wp.array(dtype=wp.uint32), wall_slot: wp.array(dtype=wp.int32),
                    wall_term: wp.array2d(dtype=f32), omega: f32, idx: int, nx: int, ny: int, nz: int,
                    mz: wp.uint32, sz: int, my: wp.uint32, sy: int):
        ...

    @wp.kernel(enable_backward=False, module="unique", cuda_max_registers=max_registers)
    def native_step(f_in: wp.array2d(dtype=stor_dtype), f_out: wp.array2d(dtype=stor_dtype),
                    code: wp.array(dtype=wp.uint32), wall_slot: wp.array(dtype=wp.int32),
                    wall_term: wp.array2d(dtype=f32), omega_arr: wp.array(dtype=f32), nx: int, ny: int, nz: int,
                    mz: wp.uint32, sz: int, my: wp.uint32, sy: int):
        idx = wp.tid()
        cell_update(f_in, f_out, code, wall_slot, wall_term, omega_arr[0], idx, nx, ny, nz, mz, sz, my, sy)

    return native_step


# name: (form, rcp, max_registers, fastdiv, dev); the dev forms are float16 only
VARIANTS = {"nat_off": ("off", False), "nat_rcp": ("off", True),
            "nat_spec": ("spec", False), "nat_spec_rcp": ("spec", True),
            "nat_fast": ("spec", True, None, True), "nat_offfast": ("off", True, None, True),
            "nat_spec_r64": ("spec", False, 64), "nat_fast_r64": ("spec", True, 64, True),
            "nat_fast_dev": ("spec", True, None, True, True), "nat_offfast_dev": ("off", True, None, True, True),
            "nat_face": ("face", False, None, True), "nat_face_dev": ("face", True, None, True, True),
            "nat_face_r56": ("face", False, 56, True), "nat_face_r48": ("face", False, 48, True)}


def variants_for(prec):
    return {k: v for k, v in VARIANTS.items() if prec == "float16" or len(v) < 5 or not v[4]}


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
        p, s, prm, a, _ = lab_cavity(size, prec, rng)
        b, c = p.state(), p.state()
        nb = 156 if stor == wp.float32 else 80
        s.step(a, b, prm, update_walls=False)
        lib1 = b.f.numpy().copy()
        s.step(b, c, prm, update_walls=False)
        lib2 = c.f.numpy().copy()
        kernels = {name: native_kernel(stor, *spec) for name, spec in variants_for(prec).items()}
        mz, sz = division_magic(size)
        my, sy = division_magic(size)
        for d in (1, 2, 3, 7, size, 1000, 65536 + 1, 2 ** 31 - 1):  # the multiply-shift division, spot checks
            m_, s_ = division_magic(d)
            for v in (0, 1, d - 1, d, d + 1, 2 ** 31 - 1, 2 ** 31 - 2, 123456789):
                assert (v * m_) >> s_ == v // d, (d, v)

        def launch(kern, x, y):
            wp.launch(kern, dim=n, inputs=[x, y, p.code, p.wall_slot, s.wall_term, prm.omega, size, size, size,
                                           wp.uint32(mz), sz, wp.uint32(my), sy],
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
