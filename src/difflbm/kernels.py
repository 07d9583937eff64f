"""Per-cell lattice Boltzmann physics as ``@wp.func`` and the fused step kernels built from them.

Every kernel here is generated for one :class:`StepConfig` and cached under it, so a configuration
compiles once per process (and Warp's disk cache keeps it between processes).

Memory layout: populations are a 2D array of shape (Q, cell_count); cell ``idx = (x*ny + y)*nz + z``
runs fastest, so neighbouring threads touch neighbouring addresses for every direction (coalesced).
Warp computes byte offsets in 64-bit, so the only limit is cell_count * itemsize < 2^31 per direction.

Cell codes: one uint32 per cell. Bits 0..Q-1 mark *boundary links*: direction i of cell x is a
boundary link when the cell x - c_i it would pull from is solid or lies outside a non-periodic face.
Bits 27..29 hold the cell kind (``KIND_*``).
"""


from dataclasses import dataclass
from functools import lru_cache

import warp as wp

from .lattice import get_lattice

KIND_FLUID = 0
KIND_SOLID = 1
KIND_VELOCITY = 2
KIND_PRESSURE = 3
KIND_OUTFLOW = 4
KIND_SHIFT = 27
LINK_MASK = (1 << KIND_SHIFT) - 1

FORCE_NONE, FORCE_UNIFORM, FORCE_FIELD = 0, 1, 2
COLLISION_BGK, COLLISION_TRT, COLLISION_SMAGORINSKY = "bgk", "trt", "smagorinsky"

# Loops over Q must be unrolled, or Warp's adjoint does not replay them: every generated kernel
# gets its own module ("unique", so a new configuration does not recompile the others) with these.
MODULE_OPTIONS = {"max_unroll": 64, "enable_backward": True}

# CUDA threads per block of the step and fused-adjoint launches: 128 gave 19,818 MLUPS vs 19,326 for
# 256 (D3Q19 fp32 256^3 lid cavity, H200, benchmarks/phases.py sweep, same run)
BLOCK_DIM = 128


def forward_block_dim(cfg) -> int:
    """Threads per block of the forward-only step: 64 for D3Q27 (13,053 MLUPS vs 12,517 at 128 and
    11,957 at 256, fp32 256^3 lid cavity, H200, ``benchmarks/lattices.py``, same run, 64 measured
    first; bench CLI afterwards 13,222), BLOCK_DIM elsewhere (D2Q9 and D3Q19 within 1 % at 64 / 128).
    Register caps did not help any lattice's forward (docs/PERF_NOTES.md, seventh session)."""
    return 64 if cfg.lattice == "D3Q27" else BLOCK_DIM


@dataclass(frozen=True)
class StepConfig:
    """Everything that changes the generated code of a step kernel (the kernel cache key)."""

    lattice: str
    precision: str  # "float32" | "float64"
    collision: str  # bgk | trt | smagorinsky
    trt_magic: float = 0.25
    smagorinsky_constant: float = 0.1
    omega_field: bool = False
    force: int = FORCE_NONE
    porosity: bool = False
    moving_walls: bool = False
    curved: bool = False
    velocity_bc: bool = False
    pressure_bc: bool = False
    outflow_bc: bool = False
    periodic: tuple = (True, True, True)
    # CUDA register cap per thread. None: no cap on the step kernel (a cap made ptxas use up to it:
    # 128 registers where 56 suffice) and kernels.adjoint_register_cap for the fused adjoint.
    max_registers: int | None = None
    # float16 storage: "shifted" (the stored deviations s_i = f_i - w_i get w_i back before the
    # collision, which subtracts it again at the store) or "deviation" (the forward step collides
    # the deviations themselves, rho = 1 + sum s_i, u = m (1 / rho)); see deviation_collision.
    # Problem always sets it (its default is "deviation", DIFFLBM_FP16_COLLISION); this field's
    # default only serves configurations built by hand
    float16_collision: str = "shifted"


FLOAT16_COLLISIONS = ("shifted", "deviation")


def deviation_collision(cfg: StepConfig) -> bool:
    """Whether the forward step of ``cfg`` collides the stored float16 deviations directly:
    ``float16_collision="deviation"`` with BGK or TRT and no open boundary (whose rebuild works on the
    full populations). The same values as the shifted form up to rounding, about 40 fewer
    instructions per cell (one reciprocal instead of three divisions, no shift per value)."""
    return (cfg.precision == "float16" and cfg.float16_collision == "deviation"
            and cfg.collision in (COLLISION_BGK, COLLISION_TRT)
            and not (cfg.velocity_bc or cfg.pressure_bc or cfg.outflow_bc))


def wp_dtype(precision: str):
    """Arithmetic (and parameter) dtype of a precision; float16 storage computes in float32."""
    return {"float32": wp.float32, "float64": wp.float64, "float16": wp.float32}[precision]


def storage_shift(lattice_name: str, precision: str) -> list:
    """What is subtracted from f_i before storing: w_i for float16 (FluidX3D's shifted
    distributions, Lehmann 2022), 0 otherwise."""
    lat = get_lattice(lattice_name)
    return lat.weights.tolist() if precision == "float16" else [0.0] * lat.q


def storage_dtype(precision: str):
    """Dtype of stored populations: float16 for ``precision="float16"``, else the arithmetic dtype."""
    return wp.float16 if precision == "float16" else wp_dtype(precision)


@wp.func
def neighbour(x: int, y: int, z: int, cx: int, cy: int, cz: int, nx: int, ny: int, nz: int) -> int:
    """Flat index of cell (x, y, z) - c, wrapped periodically on every axis."""
    sx = x - cx
    sy = y - cy
    sz = z - cz
    if sx < 0:
        sx += nx
    if sx >= nx:
        sx -= nx
    if sy < 0:
        sy += ny
    if sy >= ny:
        sy -= ny
    if sz < 0:
        sz += nz
    if sz >= nz:
        sz -= nz
    return (sx * ny + sy) * nz + sz


@wp.func
def source_index(x: int, y: int, z: int, xm: int, xp: int, ym: int, yp: int, zm: int, zp: int,
                 cx: int, cy: int, cz: int, ny: int, nz: int) -> int:
    """Flat index of (x, y, z) - c from pre-wrapped neighbour coordinates (c components in -1..1)."""
    sx = x
    if cx == 1:
        sx = xm
    if cx == -1:
        sx = xp
    sy = y
    if cy == 1:
        sy = ym
    if cy == -1:
        sy = yp
    sz = z
    if cz == 1:
        sz = zm
    if cz == -1:
        sz = zp
    return (sx * ny + sy) * nz + sz


@wp.func
def link_wall_group(x: int, y: int, z: int, cx: int, cy: int, cz: int, nx: int, ny: int, nz: int,
                    solid_wall: wp.array(dtype=wp.int32), face_wall: wp.array(dtype=wp.int32)) -> int:
    """Wall group at the solid end of the link from (x, y, z) - c to (x, y, z).

    A link that leaves the domain through a closed face takes the face's group (``face_wall`` is -1
    on periodic faces, whose links wrap to the solid cell on the other side); through an edge or a
    corner it touches several faces and the smallest group wins (group 0, the default stationary
    wall, before a lid).
    """
    sx = x - cx
    sy = y - cy
    sz = z - cz
    big = int(1 << 30)
    wid = big
    if sx < 0 and face_wall[0] >= 0:
        wid = wp.min(wid, face_wall[0])
    if sx >= nx and face_wall[1] >= 0:
        wid = wp.min(wid, face_wall[1])
    if sy < 0 and face_wall[2] >= 0:
        wid = wp.min(wid, face_wall[2])
    if sy >= ny and face_wall[3] >= 0:
        wid = wp.min(wid, face_wall[3])
    if sz < 0 and face_wall[4] >= 0:
        wid = wp.min(wid, face_wall[4])
    if sz >= nz and face_wall[5] >= 0:
        wid = wp.min(wid, face_wall[5])
    if wid == big:
        wid = solid_wall[neighbour(x, y, z, cx, cy, cz, nx, ny, nz)]
    return wid


@lru_cache(maxsize=None)
def physics(lattice_name: str, precision: str):
    """Per-cell functions for one lattice and precision (a namespace of ``wp.func``)."""
    lat = get_lattice(lattice_name)
    Q = lat.q
    C = lat.velocities3().tolist()
    W = lat.weights.tolist()
    dtype = wp_dtype(precision)
    vec3 = wp.types.vector(3, dtype)
    vecQ = wp.types.vector(Q, dtype)

    @wp.func
    def equilibrium(rho: dtype, u: vec3) -> vecQ:
        """Second-order Maxwell-Boltzmann equilibrium, cs^2 = 1/3."""
        feq = vecQ()
        usq = dtype(1.5) * wp.dot(u, u)
        for i in range(wp.static(Q)):
            cu = dtype(3.0) * (dtype(wp.static(C[i][0])) * u[0] + dtype(wp.static(C[i][1])) * u[1]
                               + dtype(wp.static(C[i][2])) * u[2])
            feq[i] = dtype(wp.static(W[i])) * rho * (dtype(1.0) + cu + dtype(0.5) * cu * cu - usq)
        return feq

    @wp.func
    def density(f: vecQ) -> dtype:
        rho = dtype(0.0)
        for i in range(wp.static(Q)):
            rho += f[i]
        return rho

    @wp.func
    def momentum(f: vecQ) -> vec3:
        m = vec3()
        for i in range(wp.static(Q)):
            m += f[i] * vec3(dtype(wp.static(C[i][0])), dtype(wp.static(C[i][1])), dtype(wp.static(C[i][2])))
        return m


    @wp.func
    def noneq_stress_norm(f: vecQ, feq: vecQ) -> dtype:
        """Frobenius norm of the non-equilibrium momentum flux Pi_ab = sum_i c_ia c_ib (f_i - feq_i)."""
        pxx = dtype(0.0)
        pyy = dtype(0.0)
        pzz = dtype(0.0)
        pxy = dtype(0.0)
        pxz = dtype(0.0)
        pyz = dtype(0.0)
        for i in range(wp.static(Q)):
            d = f[i] - feq[i]
            pxx += dtype(wp.static(C[i][0] * C[i][0])) * d
            pyy += dtype(wp.static(C[i][1] * C[i][1])) * d
            pzz += dtype(wp.static(C[i][2] * C[i][2])) * d
            pxy += dtype(wp.static(C[i][0] * C[i][1])) * d
            pxz += dtype(wp.static(C[i][0] * C[i][2])) * d
            pyz += dtype(wp.static(C[i][1] * C[i][2])) * d
        # tiny offset keeps the derivative of sqrt finite in a fluid at rest
        s = pxx * pxx + pyy * pyy + pzz * pzz + dtype(2.0) * (pxy * pxy + pxz * pxz + pyz * pyz)
        return wp.sqrt(s + dtype(1.0e-30))

    return dict(equilibrium=equilibrium, density=density, momentum=momentum,
                noneq_stress_norm=noneq_stress_norm, vec3=vec3, vecQ=vecQ, dtype=dtype, Q=Q, C=C, W=W,
                OPP=lat.opposite.tolist())


@lru_cache(maxsize=None)
def gather_func(cfg: StepConfig, differentiable: bool = True, add_shift: bool = True):
    """Per-cell streaming for ``cfg``: the populations cell ``idx`` pulls, with half-way,
    interpolated (Bouzidi) or partial bounce-back on its boundary links and moving-wall terms.

    Shared by the step kernel and the fused adjoint so both see exactly the same gather.
    ``add_shift=False``: float16's stored deviations are returned as they are (the deviation
    collision, :func:`deviation_collision`).
    """
    ph = physics(cfg.lattice, cfg.precision)
    Q, C, W, OPP = ph["Q"], ph["C"], ph["W"], ph["OPP"]
    dtype, vecQ = ph["dtype"], ph["vecQ"]
    sdtype = storage_dtype(cfg.precision)
    shifted = cfg.precision == "float16" and add_shift

    @wp.func
    def wall_slot_of(cell: wp.uint32, idx: int, wall_slot: wp.array(dtype=wp.int32)) -> int:
        """Row of the cell in the moving-wall term table, -1 if none (read only for cells with links)."""
        ws = int(-1)
        if (cell & wp.uint32(LINK_MASK)) != wp.uint32(0):
            ws = wall_slot[idx]
        return ws

    @wp.func
    def wall_terms(cell: wp.uint32, idx: int, wall_slot: wp.array(dtype=wp.int32),
                   wall_term: wp.array2d(dtype=dtype)) -> vecQ:
        """Moving-wall momentum terms of the boundary links of a cell (zero away from moving walls)."""
        ws = wall_slot_of(cell, idx, wall_slot)
        if ws < 0:
            return vecQ()
        out = vecQ()
        for i in range(1, wp.static(Q)):
            is_link = ((cell >> wp.uint32(i)) & wp.uint32(1)) != wp.uint32(0)
            out[i] = wp.where(is_link, wall_term[ws, i], dtype(0.0))
        return out

    @wp.func
    def gather(f_in: wp.array2d(dtype=sdtype), cell: wp.uint32, idx: int, nx: int, ny: int, nz: int,
               wall_slot: wp.array(dtype=wp.int32), wall_term: wp.array2d(dtype=dtype),
               link_q: wp.array2d(dtype=dtype), solid_fraction: wp.array(dtype=dtype)) -> vecQ:
        z = idx % nz
        y = (idx / nz) % ny
        x = idx / (ny * nz)
        s_here = dtype(0.0)
        if wp.static(cfg.porosity):
            s_here = solid_fraction[idx]

        # wrapped neighbour coordinates, computed once per cell
        xm = wp.where(x == 0, nx - 1, x - 1)
        xp = wp.where(x == nx - 1, 0, x + 1)
        ym = wp.where(y == 0, ny - 1, y - 1)
        yp = wp.where(y == ny - 1, 0, y + 1)
        zm = wp.where(z == 0, nz - 1, z - 1)
        zp = wp.where(z == nz - 1, 0, z + 1)
        # --- streaming (pull) with half-way / interpolated bounce-back on boundary links.
        # Vector components are assigned only outside dynamic branches: Warp's adjoint of a
        # component store inside a data-dependent branch is not reliable.
        # One load per direction and no branch between the loads, so all Q are in flight
        # together (with a branch between two loads the compiler issued them one at a time: ncu,
        # 16 % occupancy). Half-way bounce-back is an address choice: a boundary link reads the
        # cell's own opposite population instead of the pull, so the link costs no second load
        # and no registers (docs/PERF_NOTES.md, v6). Curved links and moving walls then correct
        # the bounced value in a second pass; wp.where sends no adjoint to the discarded value.
        f = vecQ()
        f[0] = dtype(f_in[0, idx])
        for i in range(1, wp.static(Q)):
            src = source_index(x, y, z, xm, xp, ym, yp, zm, zp,
                               wp.static(C[i][0]), wp.static(C[i][1]), wp.static(C[i][2]), ny, nz)
            is_link = ((cell >> wp.uint32(i)) & wp.uint32(1)) != wp.uint32(0)
            if wp.static(cfg.porosity):
                # link-wise partial bounce-back: transmission (1 - s_x)(1 - s_src)
                own = dtype(f_in[wp.static(OPP[i]), idx])
                t = (dtype(1.0) - s_here) * (dtype(1.0) - solid_fraction[src])
                f[i] = wp.where(is_link, own, t * dtype(f_in[i, src]) + (dtype(1.0) - t) * own)
            else:
                f[i] = dtype(f_in[wp.where(is_link, wp.static(OPP[i]), i), wp.where(is_link, idx, src)])
        if wp.static(cfg.curved):
            g = vecQ()
            for i in range(1, wp.static(Q)):
                bounced = f[i]
                is_link = ((cell >> wp.uint32(i)) & wp.uint32(1)) != wp.uint32(0)
                if is_link:
                    # Bouzidi, Firdaouss & Lallemand (2001), linear interpolation
                    q = link_q[i, idx]
                    if q < dtype(0.5):
                        nb = neighbour(x, y, z, -wp.static(C[i][0]), -wp.static(C[i][1]), -wp.static(C[i][2]), nx, ny, nz)
                        bounced = dtype(2.0) * q * bounced + (dtype(1.0) - dtype(2.0) * q) * dtype(f_in[wp.static(OPP[i]), nb])
                    else:
                        inv = dtype(0.5) / q
                        bounced = inv * bounced + (dtype(1.0) - inv) * dtype(f_in[i, idx])
                g[i] = bounced
            g[0] = f[0]
            f = g
        if wp.static(cfg.moving_walls and differentiable):
            # one branch per cell, not per link: a per-link branch here made the compiler keep
            # twice the registers (docs/PERF_NOTES.md, v6)
            f = f + wall_terms(cell, idx, wall_slot, wall_term)
        if wp.static(cfg.moving_walls and not differentiable):
            # kernels that Warp does not differentiate (the forward-only step, the fused adjoint):
            # the terms are added in place, so no second Q-vector is live
            ws = wall_slot_of(cell, idx, wall_slot)
            if ws >= 0:
                for i in range(1, wp.static(Q)):
                    if ((cell >> wp.uint32(i)) & wp.uint32(1)) != wp.uint32(0):
                        f[i] = f[i] + wall_term[ws, i]
        if wp.static(shifted):
            # float16 stores f_i - w_i (the deviation from rest), which keeps its precision; every
            # gathered value above is a weights-sum-to-one mix of stored values of equal weight w_i
            for i in range(wp.static(Q)):
                f[i] = f[i] + dtype(wp.static(W[i]))
        return f

    return gather


@lru_cache(maxsize=None)
def open_boundary_balance(lattice: str, precision: str):
    """``(known_mass, link_normal, face_normal)``: the mass carried by the known populations of an
    open-boundary cell (the unknown link i counts through f_opp(i)), the sum over its unknown links of
    w_i c_i, and the unit normal of a face cell (zero elsewhere).
    Shared by :func:`open_boundary_func` and the fused adjoint's transpose of it."""
    ph = physics(lattice, precision)
    Q, C, W, OPP = ph["Q"], ph["C"], ph["W"], ph["OPP"]
    dtype, vec3, vecQ = ph["dtype"], ph["vec3"], ph["vecQ"]

    @wp.func
    def known_mass(f: vecQ, cell: wp.uint32) -> dtype:
        known = dtype(0.0)
        for i in range(wp.static(Q)):
            bit = dtype(float((cell >> wp.uint32(i)) & wp.uint32(1)))
            known += bit * f[wp.static(OPP[i])] + (dtype(1.0) - bit) * f[i]
        return known

    @wp.func
    def link_normal(cell: wp.uint32) -> vec3:
        wcn = vec3()
        for i in range(wp.static(Q)):
            bit = dtype(float((cell >> wp.uint32(i)) & wp.uint32(1)))
            wcn += bit * dtype(wp.static(W[i])) * vec3(dtype(wp.static(C[i][0])), dtype(wp.static(C[i][1])),
                                                       dtype(wp.static(C[i][2])))
        return wcn

    @wp.func
    def axis_sign(v: dtype) -> dtype:
        return wp.where(v > dtype(1.0e-12), dtype(1.0), wp.where(v < dtype(-1.0e-12), dtype(-1.0), dtype(0.0)))

    @wp.func
    def face_normal(cell: wp.uint32, wcn: vec3) -> vec3:
        """The unit normal n (into the fluid) of a face cell, whose unknown links are exactly those
        with c_i.n = 1; the zero vector for any other cell (edges, corners, irregular sets).
        Written without branches or component stores (see open_boundary)."""
        n = vec3(axis_sign(wcn[0]), axis_sign(wcn[1]), axis_sign(wcn[2]))
        count = wp.abs(n[0]) + wp.abs(n[1]) + wp.abs(n[2])
        bad = dtype(0.0)
        for i in range(1, wp.static(Q)):
            bit = dtype(float((cell >> wp.uint32(i)) & wp.uint32(1)))
            cn = (dtype(wp.static(C[i][0])) * n[0] + dtype(wp.static(C[i][1])) * n[1]
                  + dtype(wp.static(C[i][2])) * n[2])
            bad += wp.abs(bit - wp.where(cn == dtype(1.0), dtype(1.0), dtype(0.0)))
        return wp.where(count == dtype(1.0) and bad == dtype(0.0), dtype(1.0), dtype(0.0)) * n

    return known_mass, link_normal, face_normal


@lru_cache(maxsize=None)
def open_boundary_func(lattice: str, precision: str):
    """Per-cell rebuild of the open-boundary links (shared by the step kernel and the fused adjoint)."""
    ph = physics(lattice, precision)
    Q, C, W, OPP = ph["Q"], ph["C"], ph["W"], ph["OPP"]
    dtype, vec3, vecQ = ph["dtype"], ph["vec3"], ph["vecQ"]
    known_mass, link_normal, face_normal = open_boundary_balance(lattice, precision)
    tangential_correction = tangential_terms(lattice, precision)[0]

    @wp.func
    def open_boundary(f: vecQ, own: vecQ, cell: wp.uint32, kind: int, ub_in: vec3, rho_in: dtype) -> vecQ:
        """Rebuild the populations of the boundary links of an open-boundary cell.

        Outflow: zero gradient, the population from outside equals this cell's own previous value.
        Velocity / pressure: non-equilibrium bounce-back (Zou & He 1997) generalised to any set U of
        unknown links: f_i = f_opp(i) + 6 w_i rho c_i.u for i in U, rho (or u along the boundary
        normal sum_U w_i c_i, for a prescribed density) from the mass balance.
        Velocity cells on a face (U = {c_i.n = 1}) also get Zou and He's tangential correction, so
        that the rebuilt populations carry the whole prescribed velocity, not only its normal part
        (Hecht & Harting 2010 for D3Q19; the same form on every lattice here):
        f_i += c_i,t (2/3 rho u_t - sum_{c_j.n = 0} c_j,t f_j) / sum_U c_k,t^2 for each tangential t.
        Pressure cells keep the plain rebuild (their tangential velocity stays free).
        """
        known = known_mass(f, cell)
        wcn = link_normal(cell)
        ub = ub_in
        rho_b = rho_in
        if kind == KIND_VELOCITY:
            rho_b = known / (dtype(1.0) - dtype(6.0) * wp.dot(wcn, ub))
        if kind == KIND_PRESSURE:
            ub = (dtype(1.0) - known / rho_b) / (dtype(6.0) * wp.dot(wcn, wcn)) * wcn
        # tangential correction of velocity faces, branch-free (a weight of 0 elsewhere) and folded
        # into the single store per component: Warp's generated adjoint of a vector component
        # stored twice came out wrong (tests/test_gradients.py caught it)
        n = face_normal(cell, wcn)
        face = wp.where(kind == KIND_VELOCITY and wp.dot(n, n) > dtype(0.5), dtype(1.0), dtype(0.0))
        corr = face * tangential_correction(f, cell, n, ub, rho_b)
        out = vecQ()
        out[0] = f[0]
        for i in range(1, wp.static(Q)):
            bit = dtype(float((cell >> wp.uint32(i)) & wp.uint32(1)))
            ci = vec3(dtype(wp.static(C[i][0])), dtype(wp.static(C[i][1])), dtype(wp.static(C[i][2])))
            rebuilt = f[wp.static(OPP[i])] + dtype(wp.static(6.0 * W[i])) * rho_b * wp.dot(ci, ub) + wp.dot(ci, corr)
            if kind == KIND_OUTFLOW:
                rebuilt = own[i]
            out[i] = bit * rebuilt + (dtype(1.0) - bit) * f[i]
        return out

    return open_boundary


@lru_cache(maxsize=None)
def tangential_terms(lattice: str, precision: str):
    """``(tangential_correction, tangential_scale)`` of the Zou-He velocity face (see
    :func:`open_boundary_func`): the per-axis amounts N_t added as c_i,t N_t to the unknown links,
    and the per-axis 1 / sum_U c_k,t^2 (0 on the normal axis and on axes the lattice lacks)."""
    ph = physics(lattice, precision)
    Q, C = ph["Q"], ph["C"]
    dtype, vec3, vecQ = ph["dtype"], ph["vec3"], ph["vecQ"]

    @wp.func
    def inverse_or_zero(s2: dtype, normal: dtype) -> dtype:
        return wp.where(normal == dtype(0.0) and s2 > dtype(0.0), dtype(1.0) / wp.max(s2, dtype(1.0)), dtype(0.0))

    @wp.func
    def tangential_scale(cell: wp.uint32, n: vec3) -> vec3:
        s2 = vec3()
        for i in range(1, wp.static(Q)):
            bit = dtype(float((cell >> wp.uint32(i)) & wp.uint32(1)))
            s2 += bit * vec3(dtype(wp.static(C[i][0] * C[i][0])), dtype(wp.static(C[i][1] * C[i][1])),
                             dtype(wp.static(C[i][2] * C[i][2])))
        return vec3(inverse_or_zero(s2[0], n[0]), inverse_or_zero(s2[1], n[1]), inverse_or_zero(s2[2], n[2]))

    @wp.func
    def tangential_correction(f: vecQ, cell: wp.uint32, n: vec3, ub: vec3, rho_b: dtype) -> vec3:
        inv = tangential_scale(cell, n)
        p = vec3()  # tangential momentum of the populations in the boundary plane (c.n = 0)
        for j in range(1, wp.static(Q)):
            cn = (dtype(wp.static(C[j][0])) * n[0] + dtype(wp.static(C[j][1])) * n[1]
                  + dtype(wp.static(C[j][2])) * n[2])
            inplane = wp.where(cn == dtype(0.0), dtype(1.0), dtype(0.0))
            p += (inplane * f[j]) * vec3(dtype(wp.static(C[j][0])), dtype(wp.static(C[j][1])),
                                         dtype(wp.static(C[j][2])))
        return wp.cw_mul(inv, dtype(wp.static(2.0 / 3.0)) * rho_b * ub - p)

    return tangential_correction, tangential_scale


def moment_rows(cfg: StepConfig) -> int:
    """Rows of the per-step moments array of the moments replay: rho and u, plus the known mass of
    open-boundary cells where the problem has velocity or pressure boundaries."""
    return 5 if (cfg.velocity_bc or cfg.pressure_bc) else 4


@lru_cache(maxsize=None)
def step_kernel(cfg: StepConfig, backward: bool = True, moments: bool = False, ranged: bool = False):
    """The fused pull-stream + boundary + collide kernel for ``cfg``.

    Reads ``f_in`` (post-collision populations of the previous step) and writes ``f_out``; it never
    writes an array it reads, so Warp's adjoint of it is exact. ``backward=False`` builds the same
    kernel without its adjoint (half the compile time; used by plain forward runs).
    ``moments=True`` (forward only) also stores each fluid cell's (rho, u) as the collision saw them
    into ``mom`` (shape (moment_rows(cfg), cells): rho, u_x, u_y, u_z, and with velocity or pressure
    boundaries a fifth row, written at those cells only: the mass of the links the cell knows before
    the Zou-He rebuild): the replay of a gradient keeps those instead of whole states (see
    :func:`step_adjoint_kernel`); otherwise ``mom`` is never touched and may be None.
    ``ranged=True`` (forward only, with or without moments) builds the variant that updates cells
    ``base .. base + dim - 1`` of a launch of ``dim`` threads (:meth:`Solver.step_cells`); every
    kernel takes ``base`` as its last argument, the others ignore it (so their code is the measured
    one: adding it to every kernel changed ptxas's register choice, 56 -> 52 for the D3Q19 step, and
    the 52-register form was not faster on the H200, docs/PERF_NOTES.md, eighth session).
    """
    if ranged and backward:
        raise ValueError("step_kernel(ranged=True) is a forward-only kernel; pass backward=False")
    if moments and backward:
        raise ValueError("step_kernel(moments=True) is a forward-only kernel; pass backward=False")
    ph = physics(cfg.lattice, cfg.precision)
    Q, C, W, OPP = ph["Q"], ph["C"], ph["W"], ph["OPP"]
    dtype, vec3, vecQ = ph["dtype"], ph["vec3"], ph["vecQ"]
    sdtype = storage_dtype(cfg.precision)
    SHIFT = storage_shift(cfg.lattice, cfg.precision)
    equilibrium, density, momentum = ph["equilibrium"], ph["density"], ph["momentum"]
    noneq_stress_norm = ph["noneq_stress_norm"]
    collision = cfg.collision
    trt_magic = float(cfg.trt_magic)
    smag_c2 = float(cfg.smagorinsky_constant) ** 2
    any_bc = cfg.velocity_bc or cfg.pressure_bc or cfg.outflow_bc
    # the deviation collision in the forward-only kernels (Warp's adjoint of the step is the shifted form)
    dev = deviation_collision(cfg) and not backward
    STORE_SHIFT = [0.0] * Q if dev else SHIFT  # what the store subtracts
    gather = gather_func(cfg, differentiable=backward, add_shift=not dev)

    @wp.func
    def load_cell(f_in: wp.array2d(dtype=sdtype), idx: int) -> vecQ:
        out = vecQ()
        for i in range(wp.static(Q)):
            out[i] = dtype(f_in[i, idx]) + dtype(wp.static(SHIFT[i]))
        return out

    open_boundary = open_boundary_func(cfg.lattice, cfg.precision)
    known_mass = open_boundary_balance(cfg.lattice, cfg.precision)[0]
    store_known = moments and (cfg.velocity_bc or cfg.pressure_bc)

    @wp.kernel(module="unique", module_options={**MODULE_OPTIONS, "enable_backward": backward},
               cuda_max_registers=cfg.max_registers or None)
    def lbm_step(
        f_in: wp.array2d(dtype=sdtype),
        f_out: wp.array2d(dtype=sdtype),
        code: wp.array(dtype=wp.uint32),
        slot: wp.array(dtype=wp.int32),
        solid_wall: wp.array(dtype=wp.int32),
        face_wall: wp.array(dtype=wp.int32),
        wall_slot: wp.array(dtype=wp.int32),
        wall_term: wp.array2d(dtype=dtype),
        inlet_velocity: wp.array(dtype=vec3),
        outlet_density: wp.array(dtype=dtype),
        link_q: wp.array2d(dtype=dtype),
        omega_arr: wp.array(dtype=dtype),
        force_arr: wp.array(dtype=vec3),
        solid_fraction: wp.array(dtype=dtype),
        nx: int,
        ny: int,
        nz: int,
        mom: wp.array2d(dtype=dtype),
        base: int,
    ):
        idx = wp.tid()
        if wp.static(ranged):
            idx = idx + base  # the launch covers cells base .. base + dim - 1 only (Solver.step_cells)
        cell = code[idx]
        kind = int(cell >> wp.uint32(KIND_SHIFT))
        if kind == KIND_SOLID:
            for i in range(wp.static(Q)):
                f_out[i, idx] = f_in[i, idx]
            return
        f = gather(f_in, cell, idx, nx, ny, nz, wall_slot, wall_term, link_q, solid_fraction)

        # --- open boundaries: rebuild the populations of boundary links
        if wp.static(any_bc):
            if kind >= KIND_VELOCITY:
                own = vecQ()
                ub = vec3()
                rho_b = dtype(1.0)
                if kind == KIND_OUTFLOW:
                    own = load_cell(f_in, idx)
                if kind == KIND_VELOCITY:
                    ub = inlet_velocity[slot[idx]]
                if kind == KIND_PRESSURE:
                    rho_b = outlet_density[slot[idx]]
                if wp.static(store_known):
                    if kind != KIND_OUTFLOW:
                        # all the adjoint of the rebuild needs of the gathered populations
                        mom[4, idx] = known_mass(f, cell)
                f = open_boundary(f, own, cell, kind, ub, rho_b)

        # --- collision
        omega = dtype(0.0)
        if wp.static(cfg.omega_field):
            omega = omega_arr[idx]
        else:
            omega = omega_arr[0]
        rho = density(f)
        drho = dtype(0.0)
        if wp.static(dev):
            drho = rho
            rho = dtype(1.0) + drho
        m = momentum(f)
        force = vec3()
        if wp.static(cfg.force == FORCE_UNIFORM):
            force = force_arr[0]
        if wp.static(cfg.force == FORCE_FIELD):
            force = force_arr[idx]
        if wp.static(cfg.force != FORCE_NONE):
            m = m + dtype(0.5) * force
        u = vec3()
        if wp.static(dev):
            inv_rho = dtype(1.0) / rho
            u = m * inv_rho
        else:
            u = m / rho
        if wp.static(collision == COLLISION_SMAGORINSKY):
            # Hou et al. (1996): tau solves tau^2 - tau0 tau - 9/sqrt(2) C^2 |Pi|/rho = 0
            tau0 = dtype(1.0) / omega
            pin = noneq_stress_norm(f, equilibrium(rho, u))
            tau = dtype(0.5) * (tau0 + wp.sqrt(tau0 * tau0 + dtype(wp.static(18.0 * 2.0**0.5 * smag_c2)) * pin / rho))
            omega = dtype(1.0) / tau
        omega_m = omega
        if wp.static(collision == COLLISION_TRT):
            # Ginzburg (2008) two-relaxation-time, magic parameter Lambda fixed per configuration
            omega_m = dtype(1.0) / (dtype(wp.static(trt_magic)) / (dtype(1.0) / omega - dtype(0.5)) + dtype(0.5))
        if wp.static(moments):
            mom[0, idx] = rho
            mom[1, idx] = u[0]
            mom[2, idx] = u[1]
            mom[3, idx] = u[2]
        usq = dtype(1.5) * wp.dot(u, u)
        # Guo forcing: the odd part of the source relaxes with omega_m, the even part with omega,
        # so that the first moment is (1 - omega_m/2) F (for BGK both are omega)
        guo_even = dtype(1.0) - dtype(0.5) * omega
        guo_odd = dtype(1.0) - dtype(0.5) * omega_m
        # one direction at a time, equilibrium inline: no Q-vectors of feq or output stay live,
        # which keeps the kernel in registers (see docs/PERF_NOTES.md)
        for i in range(wp.static(Q)):
            cu = dtype(3.0) * (dtype(wp.static(C[i][0])) * u[0] + dtype(wp.static(C[i][1])) * u[1]
                               + dtype(wp.static(C[i][2])) * u[2])
            wr = dtype(wp.static(W[i])) * rho
            feq_i = dtype(0.0)
            if wp.static(dev):
                # the deviation of the equilibrium from rest: feq_i - w_i = w_i (drho + rho (...))
                feq_i = dtype(wp.static(W[i])) * (drho + rho * (cu + dtype(0.5) * cu * cu - usq))
            else:
                feq_i = wr * (dtype(1.0) + cu + dtype(0.5) * cu * cu - usq)
            val = dtype(0.0)
            if wp.static(collision == COLLISION_TRT):
                feq_o = dtype(0.0)
                if wp.static(dev):
                    feq_o = dtype(wp.static(W[i])) * (drho + rho * (dtype(0.5) * cu * cu - usq - cu))
                else:
                    feq_o = wr * (dtype(1.0) - cu + dtype(0.5) * cu * cu - usq)
                fo = f[wp.static(OPP[i])]
                val = (f[i] - omega * dtype(0.5) * ((f[i] + fo) - (feq_i + feq_o))
                       - omega_m * dtype(0.5) * ((f[i] - fo) - (feq_i - feq_o)))
            else:
                val = f[i] + omega * (feq_i - f[i])
            if wp.static(cfg.force != FORCE_NONE):
                # Guo, Zheng & Shi (2002): w_i [3 (c_i - u) + 9 (c_i.u) c_i] . F, odd / even parts
                ci = vec3(dtype(wp.static(C[i][0])), dtype(wp.static(C[i][1])), dtype(wp.static(C[i][2])))
                cf = wp.dot(ci, force)
                val = val + dtype(wp.static(W[i])) * (guo_odd * dtype(3.0) * cf
                                                      + guo_even * (cu * dtype(3.0) * cf - dtype(3.0) * wp.dot(u, force)))
            f_out[i, idx] = sdtype(val - dtype(wp.static(STORE_SHIFT[i])))

    return lbm_step


@lru_cache(maxsize=None)
def wall_term_kernel(lattice_name: str, precision: str):
    """Moving-wall bounce-back term 6 w_i c_i . u_w per boundary link of the wall table (Ladd 1994,
    wall density 1): ``term[slot, i]`` from ``group[slot, i]`` (0: stationary, no term)."""
    ph = physics(lattice_name, precision)
    dtype, vec3, Q, C, W = ph["dtype"], ph["vec3"], ph["Q"], ph["C"], ph["W"]

    @wp.kernel(module="unique", module_options=MODULE_OPTIONS)
    def lbm_wall_term(group: wp.array2d(dtype=wp.int32), wall_velocity: wp.array(dtype=vec3),
                      term: wp.array2d(dtype=dtype)):
        s = wp.tid()
        for i in range(wp.static(Q)):
            g = group[s, i]
            val = dtype(0.0)
            if g > 0:
                uw = wall_velocity[g]
                val = dtype(wp.static(6.0 * W[i])) * (dtype(wp.static(C[i][0])) * uw[0] + dtype(wp.static(C[i][1])) * uw[1]
                                                       + dtype(wp.static(C[i][2])) * uw[2])
            term[s, i] = val

    return lbm_wall_term


@lru_cache(maxsize=None)
def equilibrium_kernel(lattice_name: str, precision: str):
    """Populations at equilibrium from density and velocity fields (differentiable)."""
    ph = physics(lattice_name, precision)
    dtype, vec3, Q, equilibrium = ph["dtype"], ph["vec3"], ph["Q"], ph["equilibrium"]
    sdtype = storage_dtype(precision)
    SHIFT = storage_shift(lattice_name, precision)

    @wp.kernel(module="unique", module_options=MODULE_OPTIONS)
    def lbm_equilibrium(rho: wp.array(dtype=dtype), u: wp.array(dtype=vec3), f: wp.array2d(dtype=sdtype)):
        idx = wp.tid()
        feq = equilibrium(rho[idx], u[idx])
        for i in range(wp.static(Q)):
            f[i, idx] = sdtype(feq[i] - dtype(wp.static(SHIFT[i])))

    return lbm_equilibrium


@lru_cache(maxsize=None)
def macroscopic_kernel(lattice_name: str, precision: str, force_mode: int):
    """Density and velocity per cell of a (post-collision) state, with Guo's half-force shift."""
    ph = physics(lattice_name, precision)
    dtype, vec3, vecQ, Q = ph["dtype"], ph["vec3"], ph["vecQ"], ph["Q"]
    density, momentum = ph["density"], ph["momentum"]
    sdtype = storage_dtype(precision)
    SHIFT = storage_shift(lattice_name, precision)

    @wp.kernel(module="unique", module_options=MODULE_OPTIONS)
    def lbm_macroscopic(f: wp.array2d(dtype=sdtype), force_arr: wp.array(dtype=vec3),
                        rho_out: wp.array(dtype=dtype), u_out: wp.array(dtype=vec3)):
        idx = wp.tid()
        fl = vecQ()
        for i in range(wp.static(Q)):
            fl[i] = dtype(f[i, idx]) + dtype(wp.static(SHIFT[i]))
        rho = density(fl)
        m = momentum(fl)
        # states hold post-collision populations, whose momentum already has the step's full force:
        # the velocity at their time level is (sum_i c_i f_i - F/2) / rho (Guo et al. 2002)
        if wp.static(force_mode == FORCE_UNIFORM):
            m = m - dtype(0.5) * force_arr[0]
        if wp.static(force_mode == FORCE_FIELD):
            m = m - dtype(0.5) * force_arr[idx]
        rho_out[idx] = rho
        u_out[idx] = m / rho

    return lbm_macroscopic


@lru_cache(maxsize=None)
def finite_check_kernel(precision_or_dtype):
    """Record in ``first[slot]`` the smallest flat index (direction * cell_count + cell) holding a
    non-finite value; one thread per cell reads its Q values (coalesced across threads).

    Takes a precision name (its storage dtype) or a Warp dtype (adjoint states are float32 when the
    populations are stored in float16)."""
    dtype = storage_dtype(precision_or_dtype) if isinstance(precision_or_dtype, str) else precision_or_dtype

    @wp.kernel(enable_backward=False, module="unique", module_options=MODULE_OPTIONS)
    def lbm_first_nonfinite(f: wp.array2d(dtype=dtype), first: wp.array(dtype=wp.int64), slot: int):
        idx = wp.tid()
        for i in range(f.shape[0]):
            if not wp.isfinite(f[i, idx]):
                wp.atomic_min(first, slot, wp.int64(i) * wp.int64(f.shape[1]) + wp.int64(idx))
                return

    return lbm_first_nonfinite


@lru_cache(maxsize=None)
def convert_kernel(src_dtype, dst_dtype):
    """Stored populations -> arithmetic dtype, adding back the storage shift ``shift[i]``."""

    @wp.kernel(enable_backward=False, module="unique", module_options=MODULE_OPTIONS)
    def lbm_convert(a: wp.array2d(dtype=src_dtype), shift: wp.array(dtype=dst_dtype), b: wp.array2d(dtype=dst_dtype)):
        i, j = wp.tid()
        b[i, j] = dst_dtype(a[i, j]) + shift[i]

    return lbm_convert


@lru_cache(maxsize=None)
def any_nonzero_kernel(dtype):
    """Set flag[0] = 1 when any entry of a 2D array is non-zero (one thread per column)."""

    @wp.kernel(enable_backward=False, module="unique", module_options=MODULE_OPTIONS)
    def lbm_any_nonzero(a: wp.array2d(dtype=dtype), flag: wp.array(dtype=wp.int32)):
        j = wp.tid()
        for i in range(a.shape[0]):
            if a[i, j] != dtype(0.0):
                flag[0] = 1
                return

    return lbm_any_nonzero


@lru_cache(maxsize=None)
def wall_term_adjoint_kernel(lattice_name: str, precision: str):
    """Adjoint of :func:`wall_term_kernel`: d loss / d wall velocity of each group, summed from the
    per-link adjoint ``adj_term`` into ``lanes[slot % lanes, group]`` (few contended atomics; Warp's
    generated adjoint added every link into one address, 7 ms at 256^3) and then summed on the host."""
    ph = physics(lattice_name, precision)
    dtype, vec3, Q, C, W = ph["dtype"], ph["vec3"], ph["Q"], ph["C"], ph["W"]

    @wp.kernel(enable_backward=False, module="unique", module_options=MODULE_OPTIONS)
    def lbm_wall_term_adjoint(group: wp.array2d(dtype=wp.int32), adj_term: wp.array2d(dtype=dtype),
                              lanes: wp.array2d(dtype=vec3)):
        s = wp.tid()
        lane = s % lanes.shape[0]
        for i in range(1, wp.static(Q)):
            g = group[s, i]
            if g > 0:
                a = adj_term[s, i] * dtype(wp.static(6.0 * W[i]))
                wp.atomic_add(lanes, lane, g, a * vec3(dtype(wp.static(C[i][0])), dtype(wp.static(C[i][1])),
                                                       dtype(wp.static(C[i][2]))))

    return lbm_wall_term_adjoint


@lru_cache(maxsize=None)
def momentum_exchange_func(lattice_name: str, precision: str, curved: bool):
    """Per-cell force on one wall group by momentum exchange (Ladd 1994; curved links after Mei et al. 2002).

    For each boundary link i of fluid cell x whose solid end is in ``group``, the wall receives
    -c_i (f*_opp(i)(x, t) + f_i(x, t+1)), where f_i(x, t+1) is the value the next step bounces back,
    rebuilt here from the post-collision state ``f`` (without the wall-velocity term).
    """
    ph = physics(lattice_name, precision)
    dtype, vec3, Q, C, OPP = ph["dtype"], ph["vec3"], ph["Q"], ph["C"], ph["OPP"]

    @wp.func
    def cell_momentum_exchange(f: wp.array2d(dtype=dtype), code: wp.array(dtype=wp.uint32),
                               solid_wall: wp.array(dtype=wp.int32), face_wall: wp.array(dtype=wp.int32),
                               link_q: wp.array2d(dtype=dtype), group: int, nx: int, ny: int, nz: int,
                               idx: int) -> vec3:
        cell = code[idx]
        total = vec3()
        if int(cell >> wp.uint32(KIND_SHIFT)) == KIND_SOLID:
            return total
        z = idx % nz
        y = (idx / nz) % ny
        x = idx / (ny * nz)
        for i in range(1, wp.static(Q)):
            cx = wp.static(C[i][0])
            cy = wp.static(C[i][1])
            cz = wp.static(C[i][2])
            if (cell >> wp.uint32(i)) & wp.uint32(1):
                if link_wall_group(x, y, z, cx, cy, cz, nx, ny, nz, solid_wall, face_wall) == group:
                    fo = f[wp.static(OPP[i]), idx]
                    back = fo
                    if wp.static(curved):
                        q = link_q[i, idx]
                        if q < dtype(0.5):
                            nb = neighbour(x, y, z, -cx, -cy, -cz, nx, ny, nz)
                            back = dtype(2.0) * q * fo + (dtype(1.0) - dtype(2.0) * q) * f[wp.static(OPP[i]), nb]
                        else:
                            inv = dtype(0.5) / q
                            back = inv * fo + (dtype(1.0) - inv) * f[i, idx]
                    total -= (fo + back) * vec3(dtype(wp.static(C[i][0])), dtype(wp.static(C[i][1])), dtype(wp.static(C[i][2])))
        return total

    return cell_momentum_exchange


@lru_cache(maxsize=None)
def momentum_exchange_kernel(lattice_name: str, precision: str, curved: bool):
    """Total force (vec3) on one wall group, summed into ``force[0]``."""
    ph = physics(lattice_name, precision)
    dtype, vec3 = ph["dtype"], ph["vec3"]
    exchange = momentum_exchange_func(lattice_name, precision, curved)

    @wp.kernel(module="unique", module_options=MODULE_OPTIONS)
    def lbm_momentum_exchange(f: wp.array2d(dtype=dtype), code: wp.array(dtype=wp.uint32),
                              solid_wall: wp.array(dtype=wp.int32), face_wall: wp.array(dtype=wp.int32),
                              link_q: wp.array2d(dtype=dtype), group: int, nx: int, ny: int, nz: int,
                              force: wp.array(dtype=vec3)):
        idx = wp.tid()
        wp.atomic_add(force, 0, exchange(f, code, solid_wall, face_wall, link_q, group, nx, ny, nz, idx))

    return lbm_momentum_exchange


def fused_adjoint_supported(cfg: StepConfig) -> bool:
    """Whether :func:`step_adjoint_kernel` covers ``cfg``; other configurations use Warp's adjoint.

    The fused adjoint needs every population of the input state to be read by exactly one cell
    (streaming plus half-way bounce-back is a permutation), so that the adjoint can scatter with
    plain stores. Interpolated walls, partially-solid cells and open boundaries read some
    populations twice (so does a zero-gradient outflow, which reads the cell's own previous
    populations); Smagorinsky's omega depends on the stress, a derivative not written here. Velocity
    inlets and pressure outlets (Zou-He) rebuild a cell's links from its own gathered values, so the
    gather stays a permutation and their adjoint is a per-cell map (written in the kernel).
    """
    return (cfg.collision in (COLLISION_BGK, COLLISION_TRT) and not cfg.porosity and not cfg.curved
            and not cfg.outflow_bc)


# launch shape of the moments adjoints that write the gathered form: H200, 256^3 D3Q19 fp32, per
# step (gathered -> gathered): cap 96 1.265 ms, 80 1.093, 72 1.089, 64 1.056, 56 1.035, 48 1.130,
# 40 1.372 (128 threads per block); at cap 56 blocks of 64 / 128 / 256: 1.027 / 1.035 / 1.093 ms
# (benchmarks/session6.py, docs/PERF_NOTES.md)
GATHERED_MAX_REGISTERS = 56
GATHERED_BLOCK_DIM = 64


def gathered_register_cap(cfg: StepConfig):
    """Register cap of the gathered-form moments adjoints: GATHERED_MAX_REGISTERS for 4- and 2-byte
    storage (measured: D3Q19 fp32 above; D3Q27 fp32 and D3Q19 fp16 gradients ran faster than the
    fifth session's with it, BENCHMARKS.md); the compiler's choice for float64, where ptxas reports
    ~110 registers uncapped and 230 B of spills at 56 (not measured on a GPU)."""
    return GATHERED_MAX_REGISTERS if cfg.precision in ("float32", "float16") else None


def adjoint_register_cap(cfg: StepConfig):
    """Default register cap of the fused adjoint: 96 for 4- and 2-byte storage with up to 19
    directions and no open boundaries (lid cavity D3Q19 fp32 on an H200: 1.75 ms per step at 96 with
    8 B of spills vs 1.88-1.94 ms at 88, 104, 112, 128 and uncapped (108 registers),
    ``benchmarks/phases.py 256 caps``); the compiler's choice elsewhere (not measured)."""
    small = cfg.precision in ("float32", "float16") and get_lattice(cfg.lattice).q <= 19
    return 96 if small and not (cfg.velocity_bc or cfg.pressure_bc) else None


@lru_cache(maxsize=None)
def step_adjoint_kernel(cfg: StepConfig, omega_grad: bool = True, force_grad: bool = True, moments: bool = False,
                        pull_in: bool = False, push_out: bool = True, max_registers: int | None = None,
                        ranged: bool = False):
    """Hand-written vector-Jacobian product of :func:`step_kernel` for BGK or TRT, Guo forcing and
    (moving) walls.

    Per cell it gathers f exactly as the forward does, recomputes rho, u and feq, and applies the
    transposed Jacobian of out = (1 - omega) f + omega feq(rho(f), u(f)) to adj_out. The result
    for direction i belongs to the population the forward pulled, so it is *stored* there: every
    entry of ``adj_in`` is written once, no atomics and no zeroing. Warp's generated adjoint does
    the same with an atomic add per read and about twice the registers.
    ``adj_omega`` accumulates d loss / d omega per cell (summed by the caller for a scalar omega);
    ``adj_wall_term`` accumulates per (wall slot, link); :func:`wall_term_kernel`'s adjoint maps it to
    the wall velocities once per rollout.
    ``omega_grad`` / ``force_grad`` = False compile the kernel without the omega / force gradient
    (the launch flags ``want_omega`` / ``want_force`` then must be 0): without them f is dead right
    after its moments, which saves registers (ncu: spills were the adjoint's main extra cost).

    ``moments=True``: the Jacobian of a BGK / TRT collision with walls and force depends on f only
    through (rho, u), so this variant reads the (rho, u) the forward stored
    (``step_kernel(moments=True)``) from ``mom`` instead of gathering f (``f_in`` is not read):
    16 bytes per cell instead of 4 Q (plus, at velocity / pressure boundary cells, the known-link mass
    from the fifth row). It cannot give the omega gradient (d out / d omega needs f)
    nor rebuild open-boundary links (they need the gathered populations).

    ``pull_in`` / ``push_out`` (moments kernels only) choose the form of the adjoint state on each
    side. The plain form is d loss / d (a state's populations). The gathered form stores, at each
    cell, d loss / d (the populations the cell gathered), i.e. before the transposed streaming:
    ``push_out=False`` writes it there (a coalesced store of the cell's own Q values instead of a
    scatter to its neighbours), and ``pull_in=True`` reads it, taking the streaming's transpose as a
    pull: the plain value of population i at y is the gathered-form value of direction i at
    y + c_i, or of direction opp(i) at y itself where y's link opp(i) is a wall (the forward's
    gather, mirrored). A leaf of the moments replay runs plain -> gathered, gathered -> gathered,
    ..., gathered -> plain, so everything outside it sees the plain form; the pull and the own-cell
    stores have the forward step's memory pattern. Solid cells keep their values in both forms.

    ``ranged=True`` builds the variant whose launch of ``dim`` threads covers cells ``base .. base +
    dim - 1`` (the distributed reverse pass adjoins a slab's boundary planes first, then the rest
    while their halo adjoints travel); the other variants ignore ``base``, as :func:`step_kernel`'s.
    Each cell's results are the same whatever the ranges: entries are stored, and the parameter
    gradients are accumulated per cell or per boundary slot (one cell per slot; on a slab a halo
    cell may share its owner's slot, adding its zero adjoint).
    """
    if (pull_in or not push_out) and not moments:
        raise ValueError(f"pull_in={pull_in}, push_out={push_out}: the gathered form is for moments kernels only")
    if not fused_adjoint_supported(cfg):
        raise ValueError(f"the fused adjoint does not cover {cfg}")
    open_bc = cfg.velocity_bc or cfg.pressure_bc
    if moments and omega_grad:
        raise ValueError("step_adjoint_kernel(moments=True) needs omega_grad=False (d out / d omega needs the "
                         f"populations, not only rho and u); got omega_grad={omega_grad}")
    ph = physics(cfg.lattice, cfg.precision)
    Q, C, W, OPP = ph["Q"], ph["C"], ph["W"], ph["OPP"]
    dtype, vec3, vecQ = ph["dtype"], ph["vec3"], ph["vecQ"]
    sdtype = storage_dtype(cfg.precision)
    density, momentum = ph["density"], ph["momentum"]
    gather = gather_func(cfg, differentiable=False)
    open_boundary = open_boundary_func(cfg.lattice, cfg.precision)
    known_mass, link_normal, face_normal = open_boundary_balance(cfg.lattice, cfg.precision)
    tangential_scale = tangential_terms(cfg.lattice, cfg.precision)[1]

    @wp.func
    def open_boundary_adjoint(g: vecQ, known: dtype, cell: wp.uint32, kind: int, ub_in: vec3, rho_in: dtype,
                              s: int, adj_inlet: wp.array(dtype=vec3), adj_outlet: wp.array(dtype=dtype),
                              want_inlet: int, want_outlet: int) -> vecQ:
        """Transposed Jacobian of :func:`open_boundary` (velocity / pressure kinds): ``g`` is d loss /
        d (rebuilt populations), the result d loss / d (gathered populations), which enter the rebuild
        only through ``known`` (their known mass); the prescribed velocity or density gets its share
        added at its slot (an atomic add: on one rank a halo cell can share an owned cell's slot; there
        are few boundary cells)."""
        wcn = link_normal(cell)
        ub = ub_in
        rho_b = rho_in
        denom = dtype(1.0) - dtype(6.0) * wp.dot(wcn, ub_in)
        wcn2 = dtype(6.0) * wp.dot(wcn, wcn)
        if kind == KIND_VELOCITY:
            rho_b = known / denom
        if kind == KIND_PRESSURE:
            ub = (dtype(1.0) - known / rho_b) / wcn2 * wcn
        out = vecQ()
        s_rho = dtype(0.0)  # d loss / d rho_b through the rebuilt links
        s_u = vec3()  # d loss / d u_b through the rebuilt links
        for i in range(wp.static(Q)):
            bit = dtype(float((cell >> wp.uint32(i)) & wp.uint32(1)))
            ci = vec3(dtype(wp.static(C[i][0])), dtype(wp.static(C[i][1])), dtype(wp.static(C[i][2])))
            out[wp.static(OPP[i])] = out[wp.static(OPP[i])] + bit * g[i]
            out[i] = out[i] + (dtype(1.0) - bit) * g[i]
            s_rho += bit * g[i] * dtype(wp.static(6.0 * W[i])) * wp.dot(ci, ub)
            s_u += (bit * g[i] * dtype(wp.static(6.0 * W[i])) * rho_b) * ci
        if kind == KIND_VELOCITY:
            n = face_normal(cell, wcn)
            if wp.dot(n, n) > dtype(0.5):
                # the tangential correction N = inv * (2/3 rho_b u_b - p), p from the in-plane f_j
                g_n = vec3()
                for i in range(1, wp.static(Q)):
                    bit = dtype(float((cell >> wp.uint32(i)) & wp.uint32(1)))
                    g_n += (bit * g[i]) * vec3(dtype(wp.static(C[i][0])), dtype(wp.static(C[i][1])),
                                               dtype(wp.static(C[i][2])))
                g_n = wp.cw_mul(g_n, tangential_scale(cell, n))
                s_rho += dtype(wp.static(2.0 / 3.0)) * wp.dot(g_n, ub)
                s_u += (dtype(wp.static(2.0 / 3.0)) * rho_b) * g_n
                for j in range(1, wp.static(Q)):
                    cj = vec3(dtype(wp.static(C[j][0])), dtype(wp.static(C[j][1])), dtype(wp.static(C[j][2])))
                    if wp.dot(cj, n) == dtype(0.0):
                        out[j] = out[j] - wp.dot(g_n, cj)
        adj_known = dtype(0.0)
        if kind == KIND_VELOCITY:
            adj_known = s_rho / denom
            if want_inlet != 0:
                wp.atomic_add(adj_inlet, s, s_u + (s_rho * known * dtype(6.0) / (denom * denom)) * wcn)
        if kind == KIND_PRESSURE:
            adj_alpha = wp.dot(s_u, wcn)
            adj_known = -adj_alpha / (rho_in * wcn2)
            if want_outlet != 0:
                wp.atomic_add(adj_outlet, s, s_rho + adj_alpha * known / (rho_in * rho_in * wcn2))
        for i in range(wp.static(Q)):
            bit = dtype(float((cell >> wp.uint32(i)) & wp.uint32(1)))
            out[wp.static(OPP[i])] = out[wp.static(OPP[i])] + bit * adj_known
            out[i] = out[i] + (dtype(1.0) - bit) * adj_known
        return out

    @wp.kernel(enable_backward=False, module="unique", module_options=MODULE_OPTIONS,
               cuda_max_registers=max_registers or cfg.max_registers or adjoint_register_cap(cfg))
    def lbm_step_adjoint(
        f_in: wp.array2d(dtype=sdtype),
        adj_out: wp.array2d(dtype=dtype),
        adj_in: wp.array2d(dtype=dtype),
        code: wp.array(dtype=wp.uint32),
        solid_wall: wp.array(dtype=wp.int32),
        face_wall: wp.array(dtype=wp.int32),
        wall_slot: wp.array(dtype=wp.int32),
        wall_term: wp.array2d(dtype=dtype),
        omega_arr: wp.array(dtype=dtype),
        adj_wall_term: wp.array2d(dtype=dtype),
        adj_omega: wp.array(dtype=dtype),
        force_arr: wp.array(dtype=vec3),
        adj_force: wp.array(dtype=vec3),
        link_q: wp.array2d(dtype=dtype),
        solid_fraction: wp.array(dtype=dtype),
        slot: wp.array(dtype=wp.int32),
        inlet_velocity: wp.array(dtype=vec3),
        outlet_density: wp.array(dtype=dtype),
        adj_inlet: wp.array(dtype=vec3),
        adj_outlet: wp.array(dtype=dtype),
        want_wall: int,
        want_omega: int,
        want_force: int,
        want_inlet: int,
        want_outlet: int,
        nx: int,
        ny: int,
        nz: int,
        mom: wp.array2d(dtype=dtype),
        base: int,
    ):
        idx = wp.tid()
        if wp.static(ranged):
            idx = idx + base
        cell = code[idx]
        kind = int(cell >> wp.uint32(KIND_SHIFT))
        if kind == KIND_SOLID:
            for i in range(wp.static(Q)):
                adj_in[i, idx] = adj_out[i, idx]
            return
        # wrapped neighbour coordinates: the scatter needs the same ones as the gather
        z = idx % nz
        y = (idx / nz) % ny
        x = idx / (ny * nz)
        xm = wp.where(x == 0, nx - 1, x - 1)
        xp = wp.where(x == nx - 1, 0, x + 1)
        ym = wp.where(y == 0, ny - 1, y - 1)
        yp = wp.where(y == ny - 1, 0, y + 1)
        zm = wp.where(z == 0, nz - 1, z - 1)
        zp = wp.where(z == nz - 1, 0, z + 1)
        omega = dtype(0.0)
        if wp.static(cfg.omega_field):
            omega = omega_arr[idx]
        else:
            omega = omega_arr[0]
        # out_i = (1 - A) f_i - B f_opp + A feq_i + B feq_opp (+ Guo source); BGK: A = omega, B = 0
        omega_m = omega
        if wp.static(cfg.collision == COLLISION_TRT):
            omega_m = dtype(1.0) / (dtype(wp.static(cfg.trt_magic)) / (dtype(1.0) / omega - dtype(0.5)) + dtype(0.5))
        coef_a = dtype(0.5) * (omega + omega_m)
        coef_b = dtype(0.5) * (omega - omega_m)
        keep = dtype(1.0) - coef_a
        # All Q adjoint loads are issued at the top, with the gather's Q loads: the kernel is bound
        # by loads in flight, and loading the adjoints after the moments (or again in the second
        # loop) left one round trip exposed per phase (H200: 1.75 ms per step vs 2.42 / 3.35 ms;
        # docs/PERF_NOTES.md, v8)
        rho_m = dtype(1.0)
        u_m = vec3()
        if wp.static(moments):
            rho_m = mom[0, idx]
            u_m = vec3(mom[1, idx], mom[2, idx], mom[3, idx])
        av = vecQ()
        for i in range(wp.static(Q)):
            if wp.static(pull_in and i > 0):
                # population i at this cell, from the gathered form: direction opp(i) here where
                # that link is a wall, else direction i at the neighbour x + c_i
                wall = ((cell >> wp.uint32(wp.static(OPP[i]))) & wp.uint32(1)) != wp.uint32(0)
                there = source_index(x, y, z, xm, xp, ym, yp, zm, zp, wp.static(-C[i][0]), wp.static(-C[i][1]),
                                     wp.static(-C[i][2]), ny, nz)
                av[i] = adj_out[wp.where(wall, wp.static(OPP[i]), i), wp.where(wall, idx, there)]
            else:
                av[i] = adj_out[i, idx]
        if wp.static(moments):
            # rho depends (by 0 x their sum) on every adjoint load, so that nothing below starts
            # before all Q + 4 loads are in flight: without it the compiler spread the adjoint loads
            # over pass 1 and the kernel waited on memory once per load group (H200, 256^3 D3Q19
            # fp32: 2.47 ms per step vs 1.24 ms with it; benchmarks/moments.py). A non-finite
            # adjoint makes rho non-finite, as it makes the outputs non-finite anyway.
            sav = dtype(0.0)
            for i in range(wp.static(Q)):
                sav += av[i]
            rho_m = rho_m + sav * dtype(0.0)
        force = vec3()
        if wp.static(cfg.force == FORCE_UNIFORM):
            force = force_arr[0]
        if wp.static(cfg.force == FORCE_FIELD):
            force = force_arr[idx]
        rho = dtype(1.0)
        u = vec3()
        f = vecQ()
        ub = vec3()
        rho_b = dtype(1.0)
        known = dtype(0.0)
        if wp.static(moments):
            rho = rho_m
            u = u_m
            if wp.static(open_bc):
                if kind == KIND_VELOCITY:
                    ub = inlet_velocity[slot[idx]]
                    known = mom[4, idx]
                if kind == KIND_PRESSURE:
                    rho_b = outlet_density[slot[idx]]
                    known = mom[4, idx]
        else:
            f = gather(f_in, cell, idx, nx, ny, nz, wall_slot, wall_term, link_q, solid_fraction)
            # open boundaries: the collision acts on the rebuilt populations (as in the step kernel)
            f_gathered = f
            if wp.static(open_bc):
                if kind == KIND_VELOCITY:
                    ub = inlet_velocity[slot[idx]]
                if kind == KIND_PRESSURE:
                    rho_b = outlet_density[slot[idx]]
                if kind >= KIND_VELOCITY:
                    known = known_mass(f_gathered, cell)
                    f = open_boundary(f_gathered, f_gathered, cell, kind, ub, rho_b)
            rho = density(f)
            m = momentum(f)
            if wp.static(cfg.force != FORCE_NONE):
                m = m + dtype(0.5) * force
            u = m / rho
        usq = dtype(1.5) * wp.dot(u, u)
        pref = dtype(1.0) - dtype(0.5) * omega
        pref_odd = dtype(1.0) - dtype(0.5) * omega_m
        adj_rho = dtype(0.0)
        adj_u = vec3()
        adj_force_direct = vec3()
        d_omega = dtype(0.0)
        d_omega_m = dtype(0.0)
        # pass 1: the adjoint of this cell's outputs through the moments (rho, u)
        for i in range(wp.static(Q)):
            ci = vec3(dtype(wp.static(C[i][0])), dtype(wp.static(C[i][1])), dtype(wp.static(C[i][2])))
            a_i = av[i]
            cu = wp.dot(ci, u)
            wr = dtype(wp.static(W[i])) * rho
            feq_i = wr * (dtype(1.0) + dtype(3.0) * cu + dtype(4.5) * cu * cu - usq)
            ae = coef_a * a_i
            if wp.static(cfg.collision == COLLISION_TRT):
                a_o = av[wp.static(OPP[i])]
                ae = ae + coef_b * a_o
                if wp.static(omega_grad):
                    # d out / d omega_(+/-) = feq_(+/-) - f_(+/-), halves of the even / odd parts
                    feq_o = wr * (dtype(1.0) - dtype(3.0) * cu + dtype(4.5) * cu * cu - usq)
                    d_omega += a_i * dtype(0.5) * (feq_i + feq_o) - dtype(0.5) * (a_i + a_o) * f[i]
                    d_omega_m += a_i * dtype(0.5) * (feq_i - feq_o) - dtype(0.5) * (a_i - a_o) * f[i]
            else:
                if wp.static(omega_grad):
                    d_omega += a_i * (feq_i - f[i])
            adj_rho += ae * feq_i / rho
            adj_u += (ae * wr) * (dtype(3.0) * ci + dtype(9.0) * cu * ci - dtype(3.0) * u)
            if wp.static(cfg.force != FORCE_NONE):
                # Guo source S_i = w_i [(1 - omega_m/2) 3 c_i.F + (1 - omega/2)(9 (c_i.u)(c_i.F) - 3 u.F)]
                cf = wp.dot(ci, force)
                aw = a_i * dtype(wp.static(W[i]))
                adj_u += (aw * pref) * (dtype(9.0) * cf * ci - dtype(3.0) * force)
                if wp.static(force_grad):
                    adj_force_direct += aw * (pref_odd * dtype(3.0) * ci + pref * (dtype(9.0) * cu * ci - dtype(3.0) * u))
                if wp.static(omega_grad):
                    d_omega -= dtype(0.5) * aw * (dtype(9.0) * cu * cf - dtype(3.0) * wp.dot(u, force))
                    d_omega_m -= dtype(0.5) * aw * dtype(3.0) * cf
        if wp.static(cfg.collision == COLLISION_TRT):
            # omega_m = 1 / (Lambda / (1/omega - 1/2) + 1/2)
            xm1 = dtype(1.0) / omega - dtype(0.5)
            d_omega -= d_omega_m * (dtype(wp.static(cfg.trt_magic)) * omega_m * omega_m / (xm1 * xm1 * omega * omega))
        else:
            d_omega += d_omega_m  # BGK: omega_m is omega
        adj_m = adj_u / rho
        adj_rho = adj_rho - wp.dot(adj_u, u) / rho
        if wp.static(cfg.force != FORCE_NONE and force_grad):
            if want_force != 0:
                adj_force[idx] = adj_force[idx] + adj_force_direct + dtype(0.5) * adj_m
        if wp.static(omega_grad):
            if want_omega != 0:
                adj_omega[idx] = adj_omega[idx] + d_omega
        # the moving-wall table row, read once per cell (cells without links have none)
        ws = int(-1)
        if wp.static(cfg.moving_walls):
            if want_wall != 0:
                if (cell & wp.uint32(LINK_MASK)) != wp.uint32(0):
                    ws = wall_slot[idx]
        # pass 2: d loss / d (populations the collision saw), stored where the forward pulled them.
        # At an open-boundary cell they are first mapped back through the Zou-He rebuild onto the
        # gathered populations (the transposed Jacobian of open_boundary), which needs all Q.
        gt = vecQ()
        if wp.static(open_bc):
            for i in range(wp.static(Q)):
                gt[i] = keep * av[i] + adj_rho + (
                    dtype(wp.static(C[i][0])) * adj_m[0] + dtype(wp.static(C[i][1])) * adj_m[1]
                    + dtype(wp.static(C[i][2])) * adj_m[2])
                if wp.static(cfg.collision == COLLISION_TRT):
                    gt[i] = gt[i] - coef_b * av[wp.static(OPP[i])]
            if kind == KIND_VELOCITY or kind == KIND_PRESSURE:
                gt = open_boundary_adjoint(gt, known, cell, kind, ub, rho_b, slot[idx], adj_inlet, adj_outlet,
                                           want_inlet, want_outlet)
        for i in range(wp.static(Q)):
            cx = wp.static(C[i][0])
            cy = wp.static(C[i][1])
            cz = wp.static(C[i][2])
            g = dtype(0.0)
            if wp.static(open_bc):
                g = gt[i]
            else:
                g = keep * av[i] + adj_rho + (
                    dtype(wp.static(C[i][0])) * adj_m[0] + dtype(wp.static(C[i][1])) * adj_m[1]
                    + dtype(wp.static(C[i][2])) * adj_m[2])
                if wp.static(cfg.collision == COLLISION_TRT):
                    g = g - coef_b * av[wp.static(OPP[i])]
            if wp.static(i == 0):
                adj_in[0, idx] = g  # the rest population is its own opposite and never a link
            elif wp.static(not push_out):
                adj_in[i, idx] = g  # gathered form: where the cell is
                if wp.static(cfg.moving_walls):
                    if ws >= 0:
                        if (cell >> wp.uint32(i)) & wp.uint32(1):
                            adj_wall_term[ws, i] = adj_wall_term[ws, i] + g
            else:
                if (cell >> wp.uint32(i)) & wp.uint32(1):
                    adj_in[wp.static(OPP[i]), idx] = g
                    if wp.static(cfg.moving_walls):
                        if ws >= 0:
                            # each (slot, link) belongs to this cell alone: accumulate without atomics
                            adj_wall_term[ws, i] = adj_wall_term[ws, i] + g
                else:
                    adj_in[i, source_index(x, y, z, xm, xp, ym, yp, zm, zp, cx, cy, cz, ny, nz)] = g

    lbm_step_adjoint.difflbm_ranged = ranged  # checked by adjoint._fused_step_adjoint
    return lbm_step_adjoint
