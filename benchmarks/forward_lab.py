"""Forward-kernel variants of the D3Q19 BGK step, measured side by side (seventh session, issue #6).

Each variant is a stand-alone kernel of this file; the lid-cavity variants must give the library's
step bit for bit (checked here before timing). Usage:
    python3 benchmarks/forward_lab.py [size] [time|ncu|check]
``time``: copy bandwidth, then each variant as a CUDA graph of 100 steps (median of 5); ``ncu``:
each variant launched twice (for Nsight Compute); ``check``: equality with the library only.
BENCH_DEVICE=cpu runs it on the CPU (small sizes: a correctness smoke test).
"""
import os
import sys

import numpy as np
import warp as wp

sys.path.insert(0, os.path.dirname(__file__))
from _common import DEVICE, emit, graph_of, timed  # noqa: E402
from difflbm import bench, kernels as K  # noqa: E402
from difflbm.bench import cavity_problem  # noqa: E402
from difflbm.problem import Problem  # noqa: E402
from difflbm.solver import Solver  # noqa: E402

wp.config.quiet = True
ph = K.physics("D3Q19", "float32")
Q, C, W, OPP = ph["Q"], ph["C"], ph["W"], ph["OPP"]
SOLID = K.KIND_SOLID
vec19 = wp.types.vector(19, wp.float32)
src_of = K.source_index  # flat index of (x, y, z) - c from pre-wrapped neighbour coordinates
KS = K.KIND_SHIFT
LM = K.LINK_MASK


def make(mode, stor, cells_per_thread=1):
    """A forward step kernel. mode: 'ref' (periodic pull + BGK, no cell codes), 'lid' (the library's
    lid-cavity step: uint32 code per cell), 'bits' (a bit per cell says whether the cell has a code;
    only those cells read it), 'xwalk' (ref, each thread walks 4 cells along x)."""
    shifted = stor == wp.float16
    SH = [float(w) if shifted else 0.0 for w in W]
    f32 = wp.float32

    @wp.func
    def collide_store(f: vec19, f_out: wp.array2d(dtype=stor), idx: int, omega: f32):
        # the library's operations in the library's order (its step is the reference for the lid variants)
        rho = f32(0.0)
        m = wp.vec3()
        for i in range(19):
            rho += f[i]
            m += f[i] * wp.vec3(f32(wp.static(C[i][0])), f32(wp.static(C[i][1])), f32(wp.static(C[i][2])))
        u = m / rho
        usq = f32(1.5) * wp.dot(u, u)
        for i in range(19):
            cu = f32(3.0) * (f32(wp.static(C[i][0])) * u[0] + f32(wp.static(C[i][1])) * u[1] + f32(wp.static(C[i][2])) * u[2])
            feq = f32(wp.static(W[i])) * rho * (f32(1.0) + cu + f32(0.5) * cu * cu - usq)
            val = f[i] + omega * (feq - f[i])
            if wp.static(shifted):
                val = val - f32(wp.static(SH[i]))
            f_out[i, idx] = stor(val)

    @wp.func
    def decode(idx: int, ny: int, nz: int) -> wp.vec3i:
        z = idx % nz
        y = (idx / nz) % ny
        x = idx / (ny * nz)
        return wp.vec3i(x, y, z)

    def ref(f_in: wp.array2d(dtype=stor), f_out: wp.array2d(dtype=stor), code: wp.array(dtype=wp.uint32),
            bits: wp.array(dtype=wp.uint32), wall_slot: wp.array(dtype=wp.int32), wall_term: wp.array2d(dtype=f32),
            omega_arr: wp.array(dtype=f32), nx: int, ny: int, nz: int, half: int):
        t = wp.tid()
        for h in range(wp.static(cells_per_thread)):
            idx = t + h * half
            p = decode(idx, ny, nz)
            x = p[0]
            y = p[1]
            z = p[2]
            xm = wp.where(x == 0, nx - 1, x - 1)
            xp = wp.where(x == nx - 1, 0, x + 1)
            ym = wp.where(y == 0, ny - 1, y - 1)
            yp = wp.where(y == ny - 1, 0, y + 1)
            zm = wp.where(z == 0, nz - 1, z - 1)
            zp = wp.where(z == nz - 1, 0, z + 1)
            f = vec19()
            for i in range(19):
                src = src_of(x, y, z, xm, xp, ym, yp, zm, zp, wp.static(C[i][0]), wp.static(C[i][1]),
                             wp.static(C[i][2]), ny, nz)
                f[i] = f32(f_in[i, src]) + f32(wp.static(SH[i]))
            collide_store(f, f_out, idx, omega_arr[0])

    def ref2(f_in: wp.array2d(dtype=stor), f_out: wp.array2d(dtype=stor), code: wp.array(dtype=wp.uint32),
             bits: wp.array(dtype=wp.uint32), wall_slot: wp.array(dtype=wp.int32), wall_term: wp.array2d(dtype=f32),
             omega_arr: wp.array(dtype=f32), nx: int, ny: int, nz: int, half: int):
        # two cells per thread (t and t + half), all 38 loads before any store
        t = wp.tid()
        fa = vec19()
        fb = vec19()
        pa = decode(t, ny, nz)
        pb = decode(t + half, ny, nz)
        for h in range(2):
            p = pa
            if h == 1:
                p = pb
            x = p[0]
            y = p[1]
            z = p[2]
            xm = wp.where(x == 0, nx - 1, x - 1)
            xp = wp.where(x == nx - 1, 0, x + 1)
            ym = wp.where(y == 0, ny - 1, y - 1)
            yp = wp.where(y == ny - 1, 0, y + 1)
            zm = wp.where(z == 0, nz - 1, z - 1)
            zp = wp.where(z == nz - 1, 0, z + 1)
            for i in range(19):
                src = src_of(x, y, z, xm, xp, ym, yp, zm, zp, wp.static(C[i][0]), wp.static(C[i][1]),
                             wp.static(C[i][2]), ny, nz)
                v = f32(f_in[i, src]) + f32(wp.static(SH[i]))
                if h == 0:
                    fa[i] = v
                else:
                    fb[i] = v
        omega = omega_arr[0]
        collide_store(fa, f_out, t, omega)
        collide_store(fb, f_out, t + half, omega)

    def lid(f_in: wp.array2d(dtype=stor), f_out: wp.array2d(dtype=stor), code: wp.array(dtype=wp.uint32),
            bits: wp.array(dtype=wp.uint32), wall_slot: wp.array(dtype=wp.int32), wall_term: wp.array2d(dtype=f32),
            omega_arr: wp.array(dtype=f32), nx: int, ny: int, nz: int, half: int):
        idx = wp.tid()
        cell = wp.uint32(0)
        if wp.static(mode == "bits"):
            word = bits[idx >> 5]
            if ((word >> wp.uint32(idx & 31)) & wp.uint32(1)) != wp.uint32(0):
                cell = code[idx]
        else:
            cell = code[idx]
        if int(cell >> wp.uint32(KS)) == SOLID:
            for i in range(19):
                f_out[i, idx] = f_in[i, idx]
            return
        p = decode(idx, ny, nz)
        x = p[0]
        y = p[1]
        z = p[2]
        xm = wp.where(x == 0, nx - 1, x - 1)
        xp = wp.where(x == nx - 1, 0, x + 1)
        ym = wp.where(y == 0, ny - 1, y - 1)
        yp = wp.where(y == ny - 1, 0, y + 1)
        zm = wp.where(z == 0, nz - 1, z - 1)
        zp = wp.where(z == nz - 1, 0, z + 1)
        f = vec19()
        f[0] = f32(f_in[0, idx])
        for i in range(1, 19):
            src = src_of(x, y, z, xm, xp, ym, yp, zm, zp, wp.static(C[i][0]), wp.static(C[i][1]),
                         wp.static(C[i][2]), ny, nz)
            is_link = ((cell >> wp.uint32(i)) & wp.uint32(1)) != wp.uint32(0)
            f[i] = f32(f_in[wp.where(is_link, wp.static(OPP[i]), i), wp.where(is_link, idx, src)])
        if (cell & wp.uint32(LM)) != wp.uint32(0):
            ws = wall_slot[idx]
            if ws >= 0:
                for i in range(1, 19):
                    if ((cell >> wp.uint32(i)) & wp.uint32(1)) != wp.uint32(0):
                        f[i] = f[i] + wall_term[ws, i]
        if wp.static(shifted):
            for i in range(19):
                f[i] = f[i] + f32(wp.static(SH[i]))
        collide_store(f, f_out, idx, omega_arr[0])

    def xwalk(f_in: wp.array2d(dtype=stor), f_out: wp.array2d(dtype=stor), code: wp.array(dtype=wp.uint32),
              bits: wp.array(dtype=wp.uint32), wall_slot: wp.array(dtype=wp.int32), wall_term: wp.array2d(dtype=f32),
              omega_arr: wp.array(dtype=f32), nx: int, ny: int, nz: int, half: int):
        t = wp.tid()
        z = t % nz
        y = (t / nz) % ny
        x0 = (t / (ny * nz)) * 4
        ym = wp.where(y == 0, ny - 1, y - 1)
        yp = wp.where(y == ny - 1, 0, y + 1)
        zm = wp.where(z == 0, nz - 1, z - 1)
        zp = wp.where(z == nz - 1, 0, z + 1)
        omega = omega_arr[0]
        for k in range(4):
            x = x0 + k
            xm = wp.where(x == 0, nx - 1, x - 1)
            xp = wp.where(x == nx - 1, 0, x + 1)
            f = vec19()
            for i in range(19):
                src = src_of(x, y, z, xm, xp, ym, yp, zm, zp, wp.static(C[i][0]), wp.static(C[i][1]),
                             wp.static(C[i][2]), ny, nz)
                f[i] = f32(f_in[i, src]) + f32(wp.static(SH[i]))
            collide_store(f, f_out, (x * ny + y) * nz + z, omega)

    fn = {"ref": ref, "lid": lid, "bits": lid, "xwalk": xwalk, "ref2": ref2}[mode]
    fn.__name__ = fn.__qualname__ = f"lab_{mode}_{'h' if shifted else 's'}{cells_per_thread}"
    return wp.kernel(fn, module="unique", module_options={"enable_backward": False, "max_unroll": 64})



def make2(mode, stor, walk=False, flat=False, dev=False):
    """Second round. mode 'fix': the lid cavity with pulls that do not wait for the cell code (every
    direction pulls; boundary cells then replace their link directions by their own opposite
    populations in one branch); 'ref': periodic pull + BGK. walk: each thread walks a run of
    ``chunk`` cells along x (a runtime loop; the cell decode and the y/z wraps once per run). flat:
    populations addressed as one 1D array (offset i*n + cell). dev (float16): the collision works on
    the stored deviations s_i = f_i - w_i (rho = 1 + sum s_i, m = sum c_i s_i), no shift per value."""
    shifted = stor == wp.float16
    SH = [float(w) if (shifted and not dev) else 0.0 for w in W]
    f32 = wp.float32
    farr = wp.array(dtype=stor) if flat else wp.array2d(dtype=stor)

    @wp.func
    def ld(f: farr, i: int, k: int, n: int) -> f32:
        if wp.static(flat):
            return f32(f[i * n + k])
        else:
            return f32(f[i, k])

    @wp.func
    def st(f: farr, i: int, k: int, n: int, v: f32):
        if wp.static(flat):
            f[i * n + k] = stor(v)
        else:
            f[i, k] = stor(v)

    @wp.func
    def update(f_in: farr, f_out: farr, code: wp.array(dtype=wp.uint32), wall_slot: wp.array(dtype=wp.int32),
               wall_term: wp.array2d(dtype=f32), omega: f32, x: int, y: int, z: int, xm: int, xp: int,
               ym: int, yp: int, zm: int, zp: int, ny: int, nz: int, n: int):
        idx = (x * ny + y) * nz + z
        cell = wp.uint32(0)
        if wp.static(mode == "fix"):
            cell = code[idx]
        f = vec19()
        if wp.static(mode == "split"):
            # cells without a code (fluid, no boundary link: most cells) pull plainly; the others
            # take the library's gather
            cell = code[idx]
            if cell == wp.uint32(0):
                for i in range(19):
                    src = src_of(x, y, z, xm, xp, ym, yp, zm, zp, wp.static(C[i][0]), wp.static(C[i][1]),
                                 wp.static(C[i][2]), ny, nz)
                    f[i] = ld(f_in, wp.static(i), src, n)
            else:
                if int(cell >> wp.uint32(KS)) == SOLID:
                    for i in range(19):
                        st(f_out, wp.static(i), idx, n, ld(f_in, wp.static(i), idx, n) - f32(wp.static(SH[i])) + f32(wp.static(SH[i])))
                    return
                f[0] = ld(f_in, 0, idx, n)
                for i in range(1, 19):
                    src = src_of(x, y, z, xm, xp, ym, yp, zm, zp, wp.static(C[i][0]), wp.static(C[i][1]),
                                 wp.static(C[i][2]), ny, nz)
                    is_link = ((cell >> wp.uint32(i)) & wp.uint32(1)) != wp.uint32(0)
                    f[i] = f32(f_in[wp.where(is_link, wp.static(OPP[i]), i), wp.where(is_link, idx, src)])
                if (cell & wp.uint32(LM)) != wp.uint32(0):
                    ws = wall_slot[idx]
                    if ws >= 0:
                        for i in range(1, 19):
                            if ((cell >> wp.uint32(i)) & wp.uint32(1)) != wp.uint32(0):
                                f[i] = f[i] + wall_term[ws, i]
        elif wp.static(mode == "lid"):
            # the library's gather: a boundary link loads the cell's own opposite population
            cell = code[idx]
            if int(cell >> wp.uint32(KS)) == SOLID:
                for i in range(19):
                    st(f_out, wp.static(i), idx, n, ld(f_in, wp.static(i), idx, n) - f32(wp.static(SH[i])) + f32(wp.static(SH[i])))
                return
            f[0] = ld(f_in, 0, idx, n)
            for i in range(1, 19):
                src = src_of(x, y, z, xm, xp, ym, yp, zm, zp, wp.static(C[i][0]), wp.static(C[i][1]),
                             wp.static(C[i][2]), ny, nz)
                is_link = ((cell >> wp.uint32(i)) & wp.uint32(1)) != wp.uint32(0)
                if wp.static(flat):
                    f[i] = f32(f_in[wp.where(is_link, wp.static(OPP[i]) * n + idx, wp.static(i) * n + src)])
                else:
                    f[i] = f32(f_in[wp.where(is_link, wp.static(OPP[i]), i), wp.where(is_link, idx, src)])
            if (cell & wp.uint32(LM)) != wp.uint32(0):
                ws = wall_slot[idx]
                if ws >= 0:
                    for i in range(1, 19):
                        if ((cell >> wp.uint32(i)) & wp.uint32(1)) != wp.uint32(0):
                            f[i] = f[i] + wall_term[ws, i]
        else:
            for i in range(19):
                src = src_of(x, y, z, xm, xp, ym, yp, zm, zp, wp.static(C[i][0]), wp.static(C[i][1]),
                             wp.static(C[i][2]), ny, nz)
                f[i] = ld(f_in, wp.static(i), src, n)
        if wp.static(mode == "fix"):
            if cell != wp.uint32(0):
                if int(cell >> wp.uint32(KS)) == SOLID:
                    for i in range(19):
                        st(f_out, wp.static(i), idx, n, ld(f_in, wp.static(i), idx, n) - f32(wp.static(SH[i])) + f32(wp.static(SH[i])))
                    return
                for i in range(1, 19):
                    is_link = ((cell >> wp.uint32(i)) & wp.uint32(1)) != wp.uint32(0)
                    f[i] = wp.where(is_link, ld(f_in, wp.static(OPP[i]), idx, n), f[i])
                if (cell & wp.uint32(LM)) != wp.uint32(0):
                    ws = wall_slot[idx]
                    if ws >= 0:
                        for i in range(1, 19):
                            if ((cell >> wp.uint32(i)) & wp.uint32(1)) != wp.uint32(0):
                                f[i] = f[i] + wall_term[ws, i]
        rho = f32(0.0)
        m = wp.vec3()
        if wp.static(shifted and not dev):
            for i in range(19):
                f[i] = f[i] + f32(wp.static(SH[i]))
        for i in range(19):
            rho += f[i]
            m += f[i] * wp.vec3(f32(wp.static(C[i][0])), f32(wp.static(C[i][1])), f32(wp.static(C[i][2])))
        drho = rho
        if wp.static(dev):
            rho = f32(1.0) + drho
        u = m / rho
        usq = f32(1.5) * wp.dot(u, u)
        for i in range(19):
            cu = f32(3.0) * (f32(wp.static(C[i][0])) * u[0] + f32(wp.static(C[i][1])) * u[1] + f32(wp.static(C[i][2])) * u[2])
            val = f32(0.0)
            if wp.static(dev):
                # f_i - w_i relaxes towards feq_i - w_i = w_i (drho + rho (cu + cu^2/2 - usq))
                dq = f32(wp.static(W[i])) * (drho + rho * (cu + f32(0.5) * cu * cu - usq))
                val = f[i] + omega * (dq - f[i])
            else:
                feq = f32(wp.static(W[i])) * rho * (f32(1.0) + cu + f32(0.5) * cu * cu - usq)
                val = f[i] + omega * (feq - f[i])
                if wp.static(shifted):
                    val = val - f32(wp.static(SH[i]))
            st(f_out, wp.static(i), idx, n, val)

    def single(f_in: farr, f_out: farr, code: wp.array(dtype=wp.uint32), wall_slot: wp.array(dtype=wp.int32),
               wall_term: wp.array2d(dtype=f32), omega_arr: wp.array(dtype=f32), nx: int, ny: int, nz: int, chunk: int):
        t = wp.tid()
        z = t % nz
        y = (t / nz) % ny
        x = t / (ny * nz)
        xm = wp.where(x == 0, nx - 1, x - 1)
        xp = wp.where(x == nx - 1, 0, x + 1)
        ym = wp.where(y == 0, ny - 1, y - 1)
        yp = wp.where(y == ny - 1, 0, y + 1)
        zm = wp.where(z == 0, nz - 1, z - 1)
        zp = wp.where(z == nz - 1, 0, z + 1)
        update(f_in, f_out, code, wall_slot, wall_term, omega_arr[0], x, y, z, xm, xp, ym, yp, zm, zp, ny, nz, nx * ny * nz)

    def walker(f_in: farr, f_out: farr, code: wp.array(dtype=wp.uint32), wall_slot: wp.array(dtype=wp.int32),
               wall_term: wp.array2d(dtype=f32), omega_arr: wp.array(dtype=f32), nx: int, ny: int, nz: int, chunk: int):
        t = wp.tid()
        z = t % nz
        y = (t / nz) % ny
        x0 = (t / (ny * nz)) * chunk
        x1 = wp.min(x0 + chunk, nx)
        ym = wp.where(y == 0, ny - 1, y - 1)
        yp = wp.where(y == ny - 1, 0, y + 1)
        zm = wp.where(z == 0, nz - 1, z - 1)
        zp = wp.where(z == nz - 1, 0, z + 1)
        omega = omega_arr[0]
        n = nx * ny * nz
        for x in range(x0, x1):
            xm = wp.where(x == 0, nx - 1, x - 1)
            xp = wp.where(x == nx - 1, 0, x + 1)
            update(f_in, f_out, code, wall_slot, wall_term, omega, x, y, z, xm, xp, ym, yp, zm, zp, ny, nz, n)

    fn = walker if walk else single
    fn.__name__ = fn.__qualname__ = f"lab2_{mode}_{'h' if shifted else 's'}{'_walk' if walk else ''}{'_flat' if flat else ''}{'_dev' if dev else ''}"
    return wp.kernel(fn, module="unique", module_options={"enable_backward": False, "max_unroll": 64})


def round2(size, what):
    cuda = wp.get_device(DEVICE).is_cuda
    n = size ** 3
    bw = bench.copy_bandwidth(DEVICE) if cuda and what == "time" else float("nan")
    emit(copy_gbs=round(bw / 1e9) if bw == bw else None, device=wp.get_device(DEVICE).name, warp=wp.__version__, size=size)
    rng = np.random.default_rng(0)
    only = os.environ.get("LAB_ONLY", "")
    for prec, stor in (("float32", wp.float32), ("float16", wp.float16)):
        p = cavity_problem("D3Q19", size, prec, DEVICE)
        s = Solver(p)
        prm = p.parameters()
        s.update_wall_term(prm)
        a, b = p.state(), p.state()
        w = np.array(W, dtype=np.float32)[:, None]
        f0 = w * (1.0 + 0.05 * rng.standard_normal((Q, n)).astype(np.float32))
        if stor == wp.float16:
            f0 = f0 - w
        a.f.assign(f0.astype(np.float16 if stor == wp.float16 else np.float32))
        out = wp.empty_like(b.f)
        nb = 156 if stor == wp.float32 else 80
        s.step(a, b, prm, update_walls=False)
        lib_out = b.f.numpy().copy()  # on the CPU numpy() is a view
        a0 = wp.clone(a.f)  # the timings advance a; every check starts from a0
        variants = [("lib", None, {})]
        r3 = os.environ.get("LAB_ROUND", "2") in ("3", "4")
        r4 = os.environ.get("LAB_ROUND", "2") == "4"
        r5 = os.environ.get("LAB_ROUND", "2") == "5"
        r3 = r3 or r5
        if r4:
            # the library's kernel at register caps and block sizes
            import dataclasses
            for cap in (None, 48, 40):
                kern = K.step_kernel(dataclasses.replace(p.config, max_registers=cap), backward=False)
                for blk in (128, 256):
                    def stp(fi, fo, kern=kern, blk=blk):
                        args = s.step_inputs(fi, prm, 0)
                        args[1] = fo.f
                        wp.launch(kern, dim=n, inputs=args, device=DEVICE, block_dim=blk)
                    stp(a, b)
                    if what == "time":
                        def run100(stp=stp):
                            for _ in range(50):
                                stp(a, b)
                                stp(b, a)
                        t = timed(graph_of(run100)) / 100
                        emit(variant="lib", cap=cap, block=blk, precision=prec, ms=round(t * 1e3, 4), mlups=round(n / t / 1e6),
                             fraction=round(n * nb / t / bw, 3) if bw == bw else None, bytes_per_cell=nb)
        names = ((("fix", dict(mode="fix")), ("fix_flat", dict(mode="fix", flat=True)),
                  ("fix_walk", dict(mode="fix", walk=True)), ("fix_walk_flat", dict(mode="fix", walk=True, flat=True)),
                  ("ref", dict(mode="ref")), ("ref_walk", dict(mode="ref", walk=True))) if not r3 else
                 (("lid_walk", dict(mode="lid", walk=True)),) if r4 else
                 (("split", dict(mode="split")), ("split_walk", dict(mode="split", walk=True)), ("ref", dict(mode="ref"))) if r5 else
                 (("lid", dict(mode="lid")), ("lid_flat", dict(mode="lid", flat=True)),
                  ("lid_walk_flat", dict(mode="lid", walk=True, flat=True)), ("ref_flat", dict(mode="ref", flat=True)),
                  ("ref_walk_flat", dict(mode="ref", walk=True, flat=True))))
        for name, kw in names:
            variants.append((name, kw, {}))
            if stor == wp.float16 and name not in ("fix_flat", "lid"):
                variants.append((name + "_dev", dict(kw, dev=True), {}))
        for name, kw, _ in variants:
            if only and name != "lib" and not any(name == o for o in only.split(",")):
                continue
            if kw is None:
                def step(fi, fo):
                    s._launch(s.forward_kernel, fi, fo, prm, 0)
                pairs = [(a, b, 1)]
            else:
                kern = make2(stor=stor, **kw)
                flat = kw.get("flat", False)
                chunks = ((2, 4) if r5 else (2, 4, 8) if r4 else (4, 8, 16) if r3 else (4, 8, 16, 32)) if kw.get("walk") else (1,)
                pairs = []
                for ch in chunks:
                    dim = (size // ch) * size * size

                    def step(fi, fo, kern=kern, dim=dim, ch=ch, flat=flat):
                        fi_, fo_ = (fi.flatten(), fo.flatten()) if flat else (fi, fo)
                        wp.launch(kern, dim=dim, inputs=[fi_, fo_, p.code, p.wall_slot, s.wall_term, prm.omega,
                                                         size, size, size, ch], device=DEVICE, block_dim=K.BLOCK_DIM)
                    pairs.append((step, ch))
                if kw.get("mode") in ("fix", "lid", "split"):
                    step0 = pairs[-1][0]
                    step0(a0, out)
                    o = out.numpy()
                    emit(check=name, precision=prec, bit_identical_to_library=bool(np.array_equal(o, lib_out)),
                         max_abs_diff=float(np.abs(o.astype(np.float64) - lib_out.astype(np.float64)).max()))
                pairs = [(a.f, out, ch, st_) for st_, ch in pairs]
            if kw is None:
                pairs = [(a, b, 1, step)]
            for x, y, ch, stp in pairs:
                if what == "check":
                    continue
                if what == "ncu":
                    stp(x, y)
                    stp(x, y)
                    wp.synchronize_device(DEVICE)
                    continue

                def run100(x=x, y=y, stp=stp):
                    for _ in range(50):
                        stp(x, y)
                        stp(y, x)
                t = timed(graph_of(run100)) / 100
                emit(variant=name, chunk=ch, precision=prec, ms=round(t * 1e3, 4), mlups=round(n / t / 1e6),
                     fraction=round(n * nb / t / bw, 3) if bw == bw else None, bytes_per_cell=nb)
        del a, b, out

def main():
    size = int(sys.argv[1]) if len(sys.argv) > 1 else 256
    what = sys.argv[2] if len(sys.argv) > 2 else "time"
    cuda = wp.get_device(DEVICE).is_cuda
    n = size ** 3
    bw = bench.copy_bandwidth(DEVICE) if cuda and what == "time" else float("nan")
    emit(copy_gbs=round(bw / 1e9) if bw == bw else None, device=wp.get_device(DEVICE).name, warp=wp.__version__, size=size)
    rng = np.random.default_rng(0)
    for prec, stor in (("float32", wp.float32), ("float16", wp.float16)):
        p = cavity_problem("D3Q19", size, prec, DEVICE)
        s = Solver(p)
        prm = p.parameters()
        s.update_wall_term(prm)
        a, b = p.state(), p.state()
        # a non-trivial state: equilibrium-like values with noise, in the storage form
        w = np.array(W, dtype=np.float32)[:, None]
        f0 = w * (1.0 + 0.05 * rng.standard_normal((Q, n)).astype(np.float32))
        if stor == wp.float16:
            f0 = f0 - w
        a.f.assign(f0.astype(np.float16 if stor == wp.float16 else np.float32))
        code = p.code_np
        special = (code != 0).reshape(-1, 32).astype(np.uint64)
        words = (special << np.arange(32, dtype=np.uint64)).sum(axis=1).astype(np.uint32)
        bits = wp.array(words, dtype=wp.uint32, device=DEVICE)
        out = wp.empty_like(b.f)
        nb = 152 if stor == wp.float32 else 76

        def args(fi, fo, half=0):
            return [fi, fo, p.code, bits, p.wall_slot, s.wall_term, prm.omega, size, size, size, half]

        # the library's step, the reference for the lid variants
        s.step(a, b, prm, update_walls=False)
        lib_out = b.f.numpy().copy()  # on the CPU numpy() is a view
        variants = [("lib", None, 4), ("lid", make("lid", stor), 4), ("bits", make("bits", stor), 0.125),
                    ("ref", make("ref", stor), 0), ("ref2", make("ref2", stor), 0), ("xwalk", make("xwalk", stor), 0)]
        for name, kern, extra in variants:
            if name in ("lid", "bits"):
                wp.launch(kern, dim=n, inputs=args(a.f, out), device=DEVICE, block_dim=K.BLOCK_DIM)
                o = out.numpy().astype(np.float64)
                emit(check=name, precision=prec, bit_identical_to_library=bool(np.array_equal(out.numpy(), lib_out)),
                     max_abs_diff=float(np.abs(o - lib_out.astype(np.float64)).max()))
        for name, kern, extra in variants:
            if kern is None:
                def step(fi, fo):
                    s._launch(s.forward_kernel, fi, fo, prm, 0)
                fi_, fo_ = a, b
            else:
                dim = {"ref2": n // 2, "xwalk": n // 4}.get(name, n)

                def step(fi, fo, kern=kern, dim=dim):
                    wp.launch(kern, dim=dim, inputs=args(fi, fo, n // 2), device=DEVICE, block_dim=K.BLOCK_DIM)
                fi_, fo_ = a.f, out
            if what == "check":
                continue
            if what == "ncu":
                step(fi_, fo_)
                step(fi_, fo_)
                wp.synchronize_device(DEVICE)
                continue
            x, y = (a, b) if kern is None else (a.f, out)

            def run100(x=x, y=y, step=step):
                for _ in range(50):
                    step(x, y)
                    step(y, x)
            t = timed(graph_of(run100)) / 100
            emit(variant=name, precision=prec, ms=round(t * 1e3, 4), mlups=round(n / t / 1e6),
                 fraction=round(n * (nb + extra) / t / bw, 3) if bw == bw else None, bytes_per_cell=nb + extra)
        del a, b, out


if __name__ == "__main__":
    if len(sys.argv) > 3 and sys.argv[3] == "2":
        round2(int(sys.argv[1]), sys.argv[2])
    else:
        main()
