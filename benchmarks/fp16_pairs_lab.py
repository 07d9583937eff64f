"""Float16 storage: one, two or four cells per thread (tenth session, issue #6).

The ninth session left float16 D3Q19 at 32,500 MLUPS (0.59 of the copy roofline), at the speed of a
plain periodic pull (33,000-33,900): the layout itself, one 2-byte load and one 2-byte store per
population and thread, is the ceiling. This lab asks whether wider accesses raise it: a thread
updates k cells adjacent along z (the contiguous axis, z0 = k * (thread's index along z)); the
populations with c_z = 0 are loaded as one 4-byte (k = 2) or 8-byte (k = 4) word, the others as
scalars (k = 2) or scalar + word + scalar (k = 4); every store is one word.

Variants on a periodic n^3 D3Q19 box (no walls, no codes; constants for n): ``pullK`` copies the
pulled populations (the streaming alone), ``bgkK`` adds the float32 BGK collision with the library's
float16 shift (stored f - w_i); ``...rt`` (K = 1, 2) takes n at run time, with coordinates by
multiply-shift as the library's step (tenth session, after the H200 run of the others). Each variant
is first checked against numpy (pull, then BGK in float64, tolerance of float16 rounding), and
every form of the same kind against the one-cell form bit for bit; then CUDA graphs of 100 steps are
timed in alternation (median of 5 replays, ``rounds`` rounds) next to the library's float16 native
step (its default form) on the bench's lid cavity and on the same periodic box. Roofline: 2 * 19 * 2
bytes per cell (the lab has no cell code) at the copy bandwidth of the same run.
Usage: ``python3 benchmarks/fp16_pairs_lab.py [rounds] [n]``; BENCH_DEVICE=cpu checks at n = 16.
"""
import os
import sys

import numpy as np
import warp as wp

sys.path.insert(0, os.path.dirname(__file__))
from _common import DEVICE, emit, graph_of, timed  # noqa: E402
from difflbm import bench, kernels as K  # noqa: E402
from difflbm.bench import cavity_problem  # noqa: E402
from difflbm.native import division_magic  # noqa: E402
from difflbm.solver import Solver  # noqa: E402

wp.config.quiet = True
PH = K.physics("D3Q19", "float32")
Q, C, W = PH["Q"], PH["C"], PH["W"]
OMEGA = 1.0


def body(n: int, k: int, collide: bool, rt: bool = False) -> str:
    """C++ of one thread's update of k cells (z0 .. z0 + k - 1) of an n^3 periodic box; ``rt``: the
    side is the runtime argument ``nn`` (coordinates by multiply-shift with ``mk, sk`` for n / k and
    ``mn, sn`` for n, as the library's step), else a compile-time constant."""
    L = []
    a = L.append
    if rt:
        N, Nm1, cells = "N1", "(N1 - 1u)", "cells"
        a("const unsigned int N1 = (unsigned int)nn;")
        a("const unsigned int cells = N1 * N1 * N1;")
    else:
        N, Nm1, cells = f"{n}u", f"{n - 1}u", f"{n ** 3}u"
    a("const unsigned short* __restrict__ fi = (const unsigned short*)f_in.data;")
    a("unsigned short* __restrict__ fo = (unsigned short*)f_out.data;")
    a("const unsigned int t = (unsigned int)tid;")
    if rt:
        a("const unsigned int q1 = (unsigned int)(((unsigned long long)t * (unsigned long long)mk) >> sk);")
        a(f"const unsigned int z0 = (t - q1 * (N1 / {k}u)) * {k}u;")
        a("const unsigned int x = (unsigned int)(((unsigned long long)q1 * (unsigned long long)mn) >> sn);")
        a("const unsigned int y = q1 - x * N1;")
    else:
        a(f"const unsigned int z0 = (t % {n // k}u) * {k}u;")
        a(f"const unsigned int q1 = t / {n // k}u;")
        a(f"const unsigned int y = q1 % {n}u;")
        a(f"const unsigned int x = q1 / {n}u;")
    a(f"const unsigned int own = (x * {N} + y) * {N} + z0;")
    for i in range(Q):
        cx, cy, cz = C[i]
        xs = {0: "x", 1: f"(x == 0u ? {Nm1} : x - 1u)", -1: f"(x == {Nm1} ? 0u : x + 1u)"}[cx]
        ys = {0: "y", 1: f"(y == 0u ? {Nm1} : y - 1u)", -1: f"(y == {Nm1} ? 0u : y + 1u)"}[cy]
        a(f"const unsigned int r{i} = {i}u * {cells} + ({xs} * {N} + {ys}) * {N};")
        if cz == 0:
            if k == 1:
                a(f"const unsigned short h{i}_0 = fi[r{i} + z0];")
            elif k == 2:
                a(f"const unsigned int w{i} = *(const unsigned int*)(fi + r{i} + z0);")
                a(f"const unsigned short h{i}_0 = (unsigned short)(w{i} & 0xffffu), h{i}_1 = (unsigned short)(w{i} >> 16);")
            else:
                a(f"const unsigned long long w{i} = *(const unsigned long long*)(fi + r{i} + z0);")
                a("const unsigned short " + ", ".join(f"h{i}_{j} = (unsigned short)(w{i} >> {16 * j})" for j in range(4)) + ";")
        elif k <= 2:
            for j in range(k):
                zs = f"z0 + {j - cz}u"
                if j - cz < 0:
                    zs = f"(z0 == 0u ? {Nm1} : z0 - 1u)"
                elif j - cz >= k:
                    zs = f"(z0 + {j - cz}u == {N} ? 0u : z0 + {j - cz}u)"
                a(f"const unsigned short h{i}_{j} = fi[r{i} + {zs}];")
        else:  # k = 4: scalar, aligned word, scalar
            if cz == 1:  # sources z0 - 1 .. z0 + 2
                a(f"const unsigned short h{i}_0 = fi[r{i} + (z0 == 0u ? {Nm1} : z0 - 1u)];")
                a(f"const unsigned int w{i} = *(const unsigned int*)(fi + r{i} + z0);")
                a(f"const unsigned short h{i}_1 = (unsigned short)(w{i} & 0xffffu), h{i}_2 = (unsigned short)(w{i} >> 16);")
                a(f"const unsigned short h{i}_3 = fi[r{i} + z0 + 2u];")
            else:  # sources z0 + 1 .. z0 + 4
                a(f"const unsigned short h{i}_0 = fi[r{i} + z0 + 1u];")
                a(f"const unsigned int w{i} = *(const unsigned int*)(fi + r{i} + z0 + 2u);")
                a(f"const unsigned short h{i}_1 = (unsigned short)(w{i} & 0xffffu), h{i}_2 = (unsigned short)(w{i} >> 16);")
                a(f"const unsigned short h{i}_3 = fi[r{i} + (z0 + 4u == {N} ? 0u : z0 + 4u)];")
    for j in range(k):
        if collide:
            a("{")
            for i in range(Q):
                a(f"    wp::half v{i}; v{i}.u = h{i}_{j};")
                a(f"    const float f{i} = wp::half_to_float(v{i}) + {float(np.float32(W[i]))!r}f;")
            a("    const float rho = " + " + ".join(f"f{i}" for i in range(Q)) + ";")
            for kk, u in enumerate("xyz"):
                terms = " ".join(f"{'+' if C[i][kk] > 0 else '-'} f{i}" for i in range(Q) if C[i][kk] != 0)
                a(f"    const float u{u} = ({terms}) / rho;")
            a("    const float usq = 1.5f * (ux * ux + uy * uy + uz * uz);")
            for i in range(Q):
                cu = " ".join(f"{'+' if C[i][kk] > 0 else '-'} u{'xyz'[kk]}" for kk in range(3) if C[i][kk] != 0) or "0.0f"
                a(f"    const float cu{i} = {cu};")
                a(f"    const float fe{i} = {float(np.float32(W[i]))!r}f * rho * (1.0f + 3.0f * cu{i} + 4.5f * cu{i} * cu{i} - usq);")
                a(f"    o{i}_{j} = wp::float_to_half(f{i} + {OMEGA!r}f * (fe{i} - f{i}) - {float(np.float32(W[i]))!r}f).u;")
            a("}")
        else:
            for i in range(Q):
                a(f"o{i}_{j} = h{i}_{j};")
    # declarations must precede the collision blocks: insert them after the loads
    decl = ["unsigned short " + ", ".join(f"o{i}_{j}" for j in range(k)) + ";" for i in range(Q)]
    first_out = next(n_ for n_, line in enumerate(L) if line.startswith("o") or line == "{")
    L[first_out:first_out] = decl
    for i in range(Q):
        if k == 1:
            a(f"fo[{i}u * {cells} + own] = o{i}_0;")
        elif k == 2:
            a(f"*(unsigned int*)(fo + {i}u * {cells} + own) = (unsigned int)o{i}_0 | ((unsigned int)o{i}_1 << 16);")
        else:
            a(f"*(unsigned long long*)(fo + {i}u * {cells} + own) = "
              + " | ".join(f"((unsigned long long)o{i}_{j} << {16 * j})" for j in range(4)) + ";")
    return "\n".join(L)


def lab_kernel(n: int, k: int, collide: bool, rt: bool = False):
    @wp.func_native(body(n, k, collide, rt))
    def cells_update(f_in: wp.array2d(dtype=wp.float16), f_out: wp.array2d(dtype=wp.float16), tid: int,
                     nn: int, mk: wp.uint32, sk: int, mn: wp.uint32, sn: int):
        ...

    @wp.kernel(enable_backward=False, module="unique")
    def lab_step(f_in: wp.array2d(dtype=wp.float16), f_out: wp.array2d(dtype=wp.float16),
                 nn: int, mk: wp.uint32, sk: int, mn: wp.uint32, sn: int):
        cells_update(f_in, f_out, wp.tid(), nn, mk, sk, mn, sn)

    return lab_step


def reference(f: np.ndarray, n: int, collide: bool) -> np.ndarray:
    """numpy: periodic pull (then BGK in float64 with the float16 shift) of f (Q, n^3) float16."""
    g = f.astype(np.float64).reshape(Q, n, n, n)
    pulled = np.stack([np.roll(g[i], shift=C[i], axis=(0, 1, 2)) for i in range(Q)])
    if not collide:
        return pulled.reshape(Q, -1)
    w = np.asarray(W)[:, None, None, None]
    full = pulled + w
    rho = full.sum(0)
    c = np.asarray(C, dtype=np.float64)
    u = np.einsum("qk,qxyz->kxyz", c, full) / rho
    cu = np.einsum("qk,kxyz->qxyz", c, u)
    feq = w * rho * (1 + 3 * cu + 4.5 * cu ** 2 - 1.5 * (u ** 2).sum(0))
    return (full + OMEGA * (feq - full) - w).reshape(Q, -1)


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    cuda = wp.get_device(DEVICE).is_cuda
    n = (int(sys.argv[2]) if len(sys.argv) > 2 else 256) if cuda else 16
    cells = n ** 3
    bw = bench.copy_bandwidth(DEVICE) if cuda else float("nan")
    emit(copy_gbs=round(bw / 1e9) if cuda else None, device=wp.get_device(DEVICE).name, warp=wp.__version__, n=n)
    rng = np.random.default_rng(0)
    f0 = (np.asarray(W)[:, None] * 0.02 * rng.standard_normal((Q, cells))).astype(np.float16)
    a = wp.array(f0, dtype=wp.float16, device=DEVICE)
    b = wp.zeros((Q, cells), dtype=wp.float16, device=DEVICE)
    graphs = []
    for collide in (False, True):
        outs = {}
        ref = reference(f0, n, collide)
        for k, rt in ((1, False), (2, False), (4, False), (1, True), (2, True)):
            name = f"{'bgk' if collide else 'pull'}{k}{'rt' if rt else ''}"
            kern = lab_kernel(n, k, collide, rt)
            mk, sk = division_magic(n // k)
            mn, sn = division_magic(n)
            extra = [n, wp.uint32(mk), sk, wp.uint32(mn), sn]
            a.assign(f0)  # the timing runs below step a and b in place
            b.zero_()
            wp.launch(kern, dim=cells // k, inputs=[a, b] + extra, device=DEVICE, block_dim=64)
            out = b.numpy().copy()
            outs[(k, rt)] = out.view(np.uint16)
            err = float(np.max(np.abs(out.astype(np.float64) - ref)))
            same = bool(np.array_equal(outs[(k, rt)], outs[(1, False)]))
            emit(check=name, max_abs_error_vs_numpy=err, same_bits_as_k1=same)
            if err > (0.0 if not collide else 2e-3 * float(np.max(np.abs(ref)))):
                raise SystemExit(f"{name}: error {err} against numpy")
            if not same:
                raise SystemExit(f"{name}: bits differ from the one-cell form")

            def run(kern=kern, k=k, extra=extra):
                for _ in range(50):
                    wp.launch(kern, dim=cells // k, inputs=[a, b] + extra, device=DEVICE, block_dim=64)
                    wp.launch(kern, dim=cells // k, inputs=[b, a] + extra, device=DEVICE, block_dim=64)
            graphs.append((name, graph_of(run)))
    if cuda:
        from native_bench import periodic_problem

        # the library's float16 step (its default form) on the lid cavity and on this lab's periodic box
        for label, p in (("cavity", cavity_problem("D3Q19", n, "float16", DEVICE)),
                         ("periodic", periodic_problem("D3Q19", n, "float16"))):
            s = Solver(p)
            prm = p.parameters()
            s.update_wall_term(prm)
            sa, sb = p.state(), p.state()

            def lib(s=s, prm=prm, sa=sa, sb=sb):
                for _ in range(50):
                    s.step(sa, sb, prm, update_walls=False)
                    s.step(sb, sa, prm, update_walls=False)
            graphs.append((f"library_native_{label}", graph_of(lib)))
    for r in range(rounds if cuda else 1):
        for name, g in graphs:
            t = timed(g) / 100
            emit(round=r, variant=name, ms=round(t * 1e3, 4), mlups=round(cells / t / 1e6),
                 fraction=round(cells * 76 / t / bw, 3) if cuda else None)


if __name__ == "__main__":
    main()
