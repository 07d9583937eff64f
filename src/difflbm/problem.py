"""The description of a flow problem: grid, lattice, collision, boundaries, and its parameters."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import warp as wp

from . import kernels as K
from .lattice import LATTICE_NAMES, get_lattice

__all__ = [
    "CollisionBGK", "CollisionTRT", "CollisionSmagorinsky", "Wall", "VelocityInlet", "PressureOutlet",
    "Outflow", "Problem", "Parameters", "State", "FACES", "resolve_device", "circle_link_fractions",
]

FACES = ("x-", "x+", "y-", "y+", "z-", "z+")
PRECISIONS = {"float32": "float32", "fp32": "float32", "float64": "float64", "fp64": "float64",
              "float16": "float16", "fp16": "float16"}


def resolve_device(device=None) -> wp.context.Device:
    """The Warp device for ``device``: CUDA when present and ``device`` is None, else the CPU."""
    wp.init()
    if device is None:
        return wp.get_device("cuda:0") if wp.is_cuda_available() else wp.get_device("cpu")
    names = [d.alias for d in wp.get_devices()] + ["cuda"] * wp.is_cuda_available()
    if str(device) not in names:
        raise ValueError(f"device={device!r} does not exist here; available: {', '.join(names)}")
    return wp.get_device(str(device))


def _precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r} is not supported; allowed: float32, float64, float16 "
                         "(float16 storage with float32 arithmetic), or fp32, fp64, fp16")
    return PRECISIONS[precision]


# ----------------------------------------------------------------------------------------- collisions
@dataclass(frozen=True)
class CollisionBGK:
    """Single relaxation time (Bhatnagar, Gross & Krook 1954; Qian et al. 1992)."""

    name = K.COLLISION_BGK


@dataclass(frozen=True)
class CollisionTRT:
    """Two relaxation times (Ginzburg 2008); ``magic`` is Lambda = (1/w+ - 1/2)(1/w- - 1/2)."""

    magic: float = 0.25
    name = K.COLLISION_TRT

    def __post_init__(self):
        if not (0.0 < self.magic < 10.0):
            raise ValueError(f"magic={self.magic} is outside (0, 10); 1/4 is the usual choice")


@dataclass(frozen=True)
class CollisionSmagorinsky:
    """BGK with a Smagorinsky eddy viscosity from the local non-equilibrium stress (Hou et al. 1996)."""

    constant: float = 0.1
    name = K.COLLISION_SMAGORINSKY

    def __post_init__(self):
        if not (0.0 <= self.constant <= 1.0):
            raise ValueError(f"constant={self.constant} is outside [0, 1]; 0.1 to 0.2 is usual")


COLLISIONS = {"bgk": CollisionBGK, "trt": CollisionTRT, "smagorinsky": CollisionSmagorinsky}


def _collision(collision):
    if isinstance(collision, str):
        if collision.lower() not in COLLISIONS:
            raise ValueError(f"collision={collision!r} is not known; allowed: {', '.join(COLLISIONS)}")
        return COLLISIONS[collision.lower()]()
    if not isinstance(collision, (CollisionBGK, CollisionTRT, CollisionSmagorinsky)):
        raise TypeError(f"collision={collision!r} must be a Collision* object or one of {', '.join(COLLISIONS)}")
    return collision


# ----------------------------------------------------------------------------------------- boundaries
@dataclass
class _Region:
    face: str | None = None
    mask: np.ndarray | None = None

    def _check_region(self, what: str):
        if (self.face is None) == (self.mask is None):
            raise ValueError(f"{what} needs exactly one of face= or mask=; got face={self.face!r}, "
                             f"mask={'given' if self.mask is not None else None}")
        if self.face is not None and self.face not in FACES:
            raise ValueError(f"face={self.face!r} is not a face; allowed: {', '.join(FACES)}")


@dataclass
class Wall(_Region):
    """No-slip wall by half-way bounce-back (moving with ``velocity``), on a face or on solid cells.

    ``link_fraction`` (optional, shape (Q, *grid shape)) turns the mask's links into interpolated
    bounce-back (Bouzidi, Firdaouss & Lallemand 2001): for the boundary link of direction i at fluid
    cell x, the wall sits at x - q c_i with q = link_fraction[i, x] in (0, 1].
    """

    velocity: Sequence[float] = (0.0, 0.0, 0.0)
    link_fraction: np.ndarray | None = None


@dataclass
class VelocityInlet(_Region):
    """Prescribed velocity by non-equilibrium bounce-back (Zou & He 1997) on face or mask cells.

    ``velocity`` is a vector (uniform) or an array of shape (*grid shape, D) read at the inlet cells.
    """

    velocity: Sequence[float] | np.ndarray = (0.0, 0.0, 0.0)


@dataclass
class PressureOutlet(_Region):
    """Prescribed density (pressure p = rho/3) with velocity normal to the boundary (Zou & He 1997)."""

    density: float = 1.0


@dataclass
class Outflow(_Region):
    """Zero-gradient outflow: unknown populations copied from the cell's own previous values."""


# ----------------------------------------------------------------------------------------- geometry
def circle_link_fractions(lattice, shape, center, radius):
    """Solid mask of a disc (2D) or sphere (3D) and the exact link fractions q of its cut links.

    Returns ``(mask, q)`` with mask of shape ``shape`` and q of shape (Q, *shape), for ``Wall``.
    """
    lat = get_lattice(lattice) if isinstance(lattice, str) else lattice
    shape = tuple(int(s) for s in shape)
    grids = np.meshgrid(*[np.arange(s, dtype=np.float64) for s in shape], indexing="ij")
    center = np.asarray(center, dtype=np.float64)
    r2 = sum((g - c) ** 2 for g, c in zip(grids, center))
    mask = r2 <= radius * radius
    q = np.full((lat.q,) + shape, 0.5)
    for i, ci in enumerate(lat.velocities):
        if not ci.any():
            continue
        # fluid cell x, wall between x and x - c_i: solve |x - t c_i - center| = radius for t in (0, 1]
        src_inside = np.roll(mask, shift=tuple(int(v) for v in ci), axis=tuple(range(len(shape))))
        cut = src_inside & ~mask
        d = [g - c for g, c in zip(grids, center)]
        a = float((ci * ci).sum())
        b = -2.0 * sum(di * float(cc) for di, cc in zip(d, ci))
        cc_ = sum(di * di for di in d) - radius * radius
        disc = np.sqrt(np.maximum(b * b - 4 * a * cc_, 0.0))
        t = (-b - disc) / (2 * a)
        q[i][cut] = np.clip(t[cut], 1e-3, 1.0)
    return mask, q


# ----------------------------------------------------------------------------------------- problem
def _float16_collision() -> str:
    """``DIFFLBM_FP16_COLLISION`` (read when a float16 Problem is built): ``deviation`` (default since
    the thirteenth session; kernels.deviation_collision: the forward step collides the stored
    deviations, one reciprocal instead of three divisions; BGK and TRT without open boundaries,
    elsewhere the shifted arithmetic) or ``shifted``. H200, D3Q19 fp16 256^3 lid cavity, bench
    command: 44,765-44,770 vs 42,693-42,743 MLUPS (BENCHMARKS.md, thirteenth session); accuracy on
    the validation cases in docs/VALIDATION.md."""
    value = os.environ.get("DIFFLBM_FP16_COLLISION", "deviation")
    if value not in K.FLOAT16_COLLISIONS:
        raise ValueError(f"DIFFLBM_FP16_COLLISION={value!r}: allowed values are "
                         + ", ".join(map(repr, K.FLOAT16_COLLISIONS)))
    return value


class Problem:
    """A lattice Boltzmann problem, built once: grid, lattice, collision, boundaries, precision, device.

    Axes whose two faces carry no boundary are periodic; faces without a boundary on a non-periodic
    axis are stationary walls. ``omega`` is the relaxation rate (scalar, or a field of the grid's
    shape); ``force`` is a body force (vector, or a field of shape (*shape, D)); ``solid_fraction``
    enables the partially-solid cell field (0 fluid, 1 solid; see :class:`Parameters`).

    The cell tables built here (``code``, ``wall_slot``, ``wall_link_group`` and their ``*_np`` host
    copies) are read by the kernels' caches (the native step's coded box, ``any_solid`` and wall
    rows, keyed by the arrays' identity): replace them (as ensembles and slab decompositions do),
    never edit them in place. ``DIFFLBM_FP16_COLLISION`` is read here for float16 storage.
    """

    def __init__(self, shape, lattice="D2Q9", collision="bgk", *, omega=1.0, boundaries=(), force=None,
                 solid_fraction=None, precision="float32", device=None, inlet_windows: int = 1):
        if not isinstance(lattice, str) or lattice.upper() not in LATTICE_NAMES:
            raise ValueError(f"lattice={lattice!r} is not known; allowed: {', '.join(LATTICE_NAMES)}")
        self.lattice = get_lattice(lattice.upper())
        D = self.lattice.dim
        try:
            shape = tuple(int(s) for s in shape)
        except TypeError:
            raise TypeError(f"shape={shape!r} must be a tuple of {D} positive integers") from None
        if len(shape) != D or any(s < 1 for s in shape):
            raise ValueError(f"shape={shape} does not fit lattice {self.lattice.name}: it needs {D} positive sizes")
        self.shape = shape
        self.grid3 = shape + (1,) * (3 - D)
        self.cell_count = int(np.prod(shape))
        if self.cell_count * 8 >= 2**31:
            raise ValueError(f"shape={shape} has {self.cell_count} cells; one direction must stay under 2^31 bytes")
        self.collision = _collision(collision)
        self.precision = _precision(precision)
        self.device = resolve_device(device)
        if int(inlet_windows) < 1:
            raise ValueError(f"inlet_windows={inlet_windows} must be >= 1")
        self.inlet_windows = int(inlet_windows)
        self.boundaries = list(boundaries)
        self._omega = self._check_omega(omega)
        self._force = self._check_force(force)
        self._solid_fraction = self._check_fraction(solid_fraction)
        self._build_cells()
        self.config = K.StepConfig(
            lattice=self.lattice.name, precision=self.precision, collision=self.collision.name,
            trt_magic=getattr(self.collision, "magic", 0.25),
            smagorinsky_constant=getattr(self.collision, "constant", 0.1),
            omega_field=np.ndim(self._omega) > 0, force=self.force_mode, porosity=self._solid_fraction is not None,
            moving_walls=self.moving_walls, curved=self.curved, velocity_bc=self.inlet_slots > 0,
            pressure_bc=self.outlet_slots > 0, outflow_bc=self.has_outflow, periodic=self.periodic3,
            float16_collision=_float16_collision() if self.precision == "float16" else "shifted")

    # -- validation of user values
    def _check_omega(self, omega):
        arr = np.asarray(omega, dtype=np.float64)
        if arr.ndim > 0 and arr.shape != self.shape:
            raise ValueError(f"omega has shape {arr.shape}; it must be a scalar or match shape={self.shape}")
        bad = ~((arr > 0.0) & (arr < 2.0))
        if np.any(bad):
            v = arr if arr.ndim == 0 else arr[bad].flat[0]
            raise ValueError(f"omega={float(v)} is outside (0, 2); lower the Reynolds number or refine the grid")
        return arr

    def _check_force(self, force):
        if force is None:
            self.force_mode = K.FORCE_NONE
            return None
        arr = np.asarray(force, dtype=np.float64)
        D = self.lattice.dim
        if arr.shape == (D,):
            self.force_mode = K.FORCE_UNIFORM
        elif arr.shape == self.shape + (D,):
            self.force_mode = K.FORCE_FIELD
        else:
            raise ValueError(f"force has shape {arr.shape}; allowed: ({D},) or {self.shape + (D,)}")
        if not np.all(np.isfinite(arr)):
            raise ValueError("force contains NaN or infinite values")
        return arr

    def _check_fraction(self, s):
        if s is None:
            return None
        arr = np.broadcast_to(np.asarray(s, dtype=np.float64), self.shape) if np.ndim(s) == 0 else np.asarray(s, np.float64)
        if arr.shape != self.shape:
            raise ValueError(f"solid_fraction has shape {arr.shape}; it must match shape={self.shape}")
        if np.any(~np.isfinite(arr)) or arr.min() < 0 or arr.max() > 1:
            raise ValueError(f"solid_fraction must lie in [0, 1]; got min {arr.min()}, max {arr.max()}")
        return arr

    def _mask(self, b, what):
        if b.face is not None:
            D = self.lattice.dim
            axis = FACES.index(b.face) // 2
            if axis >= D:
                raise ValueError(f"face={b.face!r} does not exist on a {D}D grid")
            m = np.zeros(self.shape, dtype=bool)
            sl = [slice(None)] * D
            sl[axis] = 0 if b.face.endswith("-") else self.shape[axis] - 1
            m[tuple(sl)] = True
            return m
        m = np.asarray(b.mask)
        if m.dtype != np.bool_:
            raise TypeError(f"mask of {what} has dtype {m.dtype}; it must be bool")
        if m.shape != self.shape:
            raise ValueError(f"mask of {what} has shape {m.shape}; it must match shape={self.shape}")
        return m

    # -- cell codes
    def _build_cells(self):
        D, lat = self.lattice.dim, self.lattice
        face_wall = np.zeros(6, dtype=np.int32)
        nonperiodic = [False] * 3
        solid = np.zeros(self.shape, dtype=bool)
        solid_wall = np.zeros(self.shape, dtype=np.int32)
        walls = [np.zeros(3)]  # group 0: stationary default
        kind = np.zeros(self.shape, dtype=np.int64)
        slot = np.full(self.shape, -1, dtype=np.int32)
        link_q = None
        inlet_values, outlet_values = [], []
        self.inlet_groups, self.outlet_groups = [], []
        self.has_outflow = False
        self.wall_groups = {}
        for n, b in enumerate(self.boundaries):
            what = f"boundaries[{n}] ({type(b).__name__})"
            if not isinstance(b, (Wall, VelocityInlet, PressureOutlet, Outflow)):
                raise TypeError(f"{what}={b!r} is not a boundary; allowed: Wall, VelocityInlet, PressureOutlet, Outflow")
            b._check_region(what)
            m = self._mask(b, what)
            if b.face is not None:
                nonperiodic[FACES.index(b.face) // 2] = True
            if isinstance(b, Wall):
                v = np.zeros(3)
                vel = np.asarray(b.velocity, dtype=np.float64)
                if vel.shape not in ((D,), (3,)):
                    raise ValueError(f"velocity of {what} has shape {vel.shape}; it must have {D} components")
                v[: vel.shape[0]] = vel
                group = len(walls)
                walls.append(v)
                self.wall_groups[n] = group
                if b.face is not None:
                    face_wall[FACES.index(b.face)] = group
                    if b.link_fraction is not None:
                        raise ValueError(f"link_fraction of {what} is only allowed on a mask wall")
                else:
                    solid |= m
                    solid_wall[m] = group
                    if b.link_fraction is not None:
                        q = np.asarray(b.link_fraction, dtype=np.float64)
                        if q.shape != (lat.q,) + self.shape:
                            raise ValueError(f"link_fraction of {what} has shape {q.shape}; allowed {(lat.q,) + self.shape}")
                        if link_q is None:
                            link_q = np.full((lat.q,) + self.shape, 0.5)
                        near = ~m
                        link_q[:, near] = q[:, near]
                        if np.any((q[:, near] <= 0) | (q[:, near] > 1)):
                            raise ValueError(f"link_fraction of {what} must lie in (0, 1]")
                        if np.any(v != 0):
                            raise ValueError(f"{what}: a moving wall with link_fraction is not supported")
                continue
            k = {VelocityInlet: K.KIND_VELOCITY, PressureOutlet: K.KIND_PRESSURE, Outflow: K.KIND_OUTFLOW}[type(b)]
            clash = m & (kind != K.KIND_FLUID)
            if np.any(clash):
                cell = tuple(int(i) for i in np.argwhere(clash)[0])
                raise ValueError(f"{what} overlaps another open boundary at cell {cell}")
            kind[m] = k
            cells = np.flatnonzero(m.ravel())
            if isinstance(b, VelocityInlet):
                vel = np.asarray(b.velocity, dtype=np.float64)
                if vel.shape in ((D,), (3,)):
                    vals = np.zeros((len(cells), 3))
                    vals[:, : vel.shape[0]] = vel
                elif vel.shape == self.shape + (D,):
                    vals = np.zeros((len(cells), 3))
                    vals[:, :D] = vel.reshape(-1, D)[cells]
                else:
                    raise ValueError(f"velocity of {what} has shape {vel.shape}; allowed ({D},) or {self.shape + (D,)}")
                start = sum(len(v) for v in inlet_values)
                slot.ravel()[cells] = np.arange(start, start + len(cells))
                self.inlet_groups.append((n, start, start + len(cells), cells))
                inlet_values.append(vals)
            elif isinstance(b, PressureOutlet):
                if not (np.isfinite(b.density) and b.density > 0):
                    raise ValueError(f"density={b.density} of {what} must be positive and finite")
                start = sum(len(v) for v in outlet_values)
                slot.ravel()[cells] = np.arange(start, start + len(cells))
                self.outlet_groups.append((n, start, start + len(cells), cells))
                outlet_values.append(np.full(len(cells), float(b.density)))
            else:
                self.has_outflow = True
        self.periodic3 = tuple(not nonperiodic[a] if a < D else True for a in range(3))
        for a in range(3):
            if self.periodic3[a]:
                face_wall[2 * a: 2 * a + 2] = -1  # periodic faces are not walls: links wrap
        kind[solid] = K.KIND_SOLID
        # boundary-link bits
        code = np.zeros(self.shape, dtype=np.uint32)
        axes = tuple(range(D))
        for i, ci in enumerate(lat.velocities):
            if not ci.any():
                continue
            src_solid = np.roll(solid, shift=tuple(int(v) for v in ci), axis=axes)
            outside = np.zeros(self.shape, dtype=bool)
            for a in range(D):
                if self.periodic3[a] or ci[a] == 0:
                    continue
                sl = [slice(None)] * D
                sl[a] = 0 if ci[a] > 0 else self.shape[a] - 1
                outside[tuple(sl)] = True
            code |= ((src_solid | outside).astype(np.uint32) << np.uint32(i))
        code |= kind.astype(np.uint32) << np.uint32(K.KIND_SHIFT)
        open_cells = (kind >= K.KIND_VELOCITY)
        links = code & np.uint32(K.LINK_MASK)
        if np.any(open_cells & (links == 0)):
            cell = tuple(int(i) for i in np.argwhere(open_cells & (links == 0))[0])
            raise ValueError(f"open boundary cell {cell} has no link to a wall or face; put inlets and outlets "
                             "on a non-periodic face or next to solid cells")
        self.moving_walls = any(np.any(w != 0) for w in walls[1:])
        self._build_wall_links(code, solid_wall, face_wall, D) if self.moving_walls else None
        self.curved = link_q is not None
        self.inlet_slots = sum(len(v) for v in inlet_values)
        self.outlet_slots = sum(len(v) for v in outlet_values)
        self.solid = solid
        self.code_np = code.ravel()
        self._arrays = dict(slot=slot.ravel(), solid_wall=solid_wall.ravel(), face_wall=face_wall)
        self._walls = np.array(walls)
        self._inlet = np.concatenate(inlet_values) if inlet_values else np.zeros((1, 3))
        self._outlet = np.concatenate(outlet_values) if outlet_values else np.ones(1)
        self._link_q = link_q
        dev = self.device
        if not self.moving_walls:
            self.wall_slot_np, self.wall_link_group_np = np.full(1, -1, np.int32), np.zeros((1, lat.q), np.int32)
        self.wall_slot = wp.array(self.wall_slot_np, dtype=wp.int32, device=dev)
        self.wall_link_group = wp.array(self.wall_link_group_np, dtype=wp.int32, device=dev)
        self.code = wp.array(self.code_np, dtype=wp.uint32, device=dev)
        self.slot = wp.array(self._arrays["slot"], dtype=wp.int32, device=dev)
        self.solid_wall = wp.array(self._arrays["solid_wall"], dtype=wp.int32, device=dev)
        self.face_wall = wp.array(face_wall, dtype=wp.int32, device=dev)
        dtype = K.wp_dtype(self.precision)
        self.link_q = wp.array((link_q.reshape(lat.q, -1) if link_q is not None else np.full((lat.q, 1), 0.5)),
                               dtype=dtype, device=dev)

    def _build_wall_links(self, code, solid_wall, face_wall, D):
        """Wall group of every boundary link of cells next to user walls, as a compact table.

        The step kernel then adds the moving-wall term as one table read per boundary link
        instead of working out, per link, which face or solid cell it crosses (that search cost
        ~100 registers on CUDA). Links through an edge or corner take the smallest group of the
        faces they cross (the default stationary wall before a lid); see docs/DESIGN.md.
        """
        lat = self.lattice
        # only cells with a boundary link can need a slot: work on that list, not on Q full grids
        # (the full-grid version took 6 s at 128^3 and Q x 8 bytes per cell of memory)
        links = (code & np.uint32(K.LINK_MASK)).ravel()
        cand = np.flatnonzero(links)
        coords = np.unravel_index(cand, self.shape)
        links = links[cand]
        groups = np.zeros((len(cand), lat.q), dtype=np.int64)
        big = 1 << 30
        for i, ci in enumerate(lat.velocities):
            if not ci.any():
                continue
            bit = ((links >> np.uint32(i)) & np.uint32(1)).astype(bool)
            g = np.full(len(cand), big, dtype=np.int64)
            src = [coords[a] - ci[a] for a in range(D)]
            out_any = np.zeros(len(cand), dtype=bool)
            for a in range(D):
                if self.periodic3[a]:
                    continue  # the link wraps to the cell on the other side
                lo, hi = src[a] < 0, src[a] >= self.shape[a]
                g = np.where(lo, np.minimum(g, face_wall[2 * a]), g)
                g = np.where(hi, np.minimum(g, face_wall[2 * a + 1]), g)
                out_any |= lo | hi
            wrapped = tuple(np.mod(src[a], self.shape[a]) for a in range(D))
            g = np.where(out_any, g, solid_wall[wrapped])
            groups[:, i] = np.where(bit, g, 0)
        has = (groups > 0).any(axis=1)
        cells = cand[has]
        self.wall_slot_np = np.full(self.cell_count, -1, dtype=np.int32)
        self.wall_slot_np[cells] = np.arange(len(cells), dtype=np.int32)
        self.wall_link_group_np = np.ascontiguousarray(groups[has].astype(np.int32))
        if len(cells) == 0:
            self.wall_link_group_np = np.zeros((1, lat.q), np.int32)

    # -- parameters and states
    def parameters(self, requires_grad: bool = False) -> "Parameters":
        """Fresh :class:`Parameters` holding this problem's values (the controls one differentiates)."""
        return Parameters(self, requires_grad=requires_grad)

    def state(self, rho=1.0, velocity=None) -> "State":
        """A :class:`State` at equilibrium with density ``rho`` and ``velocity`` (scalars or fields)."""
        st = State.empty(self)
        st.set_equilibrium(rho, velocity)
        return st

    def describe(self) -> dict:
        return dict(shape=list(self.shape), lattice=self.lattice.name, collision=self.collision.name,
                    precision=self.precision, device=str(self.device), periodic=list(self.periodic3[: self.lattice.dim]))


class Parameters:
    """The differentiable controls of a :class:`Problem`; gradients come back in the same layout.

    Fields (Warp arrays on the problem's device, lattice units):
      omega: relaxation rate, shape (1,) or (cell_count,).
      force: body force, vec3, shape (1,) or (cell_count,).
      wall_velocity: per wall group, vec3, shape (groups,); group 0 is the default stationary wall.
      inlet_velocity: per inlet cell and window, vec3, shape (inlet_windows, inlet cells).
      outlet_density: per outlet cell, shape (outlet cells,).
      solid_fraction: 0 fluid .. 1 solid per cell, shape (cell_count,).
    """

    NAMES = ("omega", "force", "wall_velocity", "inlet_velocity", "outlet_density", "solid_fraction")

    def __init__(self, problem: Problem, requires_grad: bool = False, _empty: bool = False):
        self.problem = problem
        dev, dtype = problem.device, K.wp_dtype(problem.precision)
        vec3 = wp.types.vector(3, dtype)
        np_dt = np.float64 if problem.precision == "float64" else np.float32
        N = problem.cell_count
        om = problem._omega.ravel() if np.ndim(problem._omega) else np.array([float(problem._omega)])
        force = np.zeros((1, 3))
        if problem.force_mode == K.FORCE_UNIFORM:
            force[0, : problem.lattice.dim] = problem._force
        elif problem.force_mode == K.FORCE_FIELD:
            force = np.zeros((N, 3))
            force[:, : problem.lattice.dim] = problem._force.reshape(N, -1)
        inlet = np.broadcast_to(problem._inlet, (problem.inlet_windows,) + problem._inlet.shape)
        sf = problem._solid_fraction.ravel() if problem._solid_fraction is not None else np.zeros(1)
        values = dict(omega=om, force=force, wall_velocity=problem._walls, inlet_velocity=inlet,
                      outlet_density=problem._outlet, solid_fraction=sf)
        for name in self.NAMES:
            v = values[name]
            if _empty:
                v = np.zeros_like(v)
            if v.ndim >= 1 and v.shape[-1] == 3 and name in ("force", "wall_velocity", "inlet_velocity"):
                arr = wp.array(np.ascontiguousarray(v, dtype=np_dt), dtype=vec3, device=dev, requires_grad=requires_grad)
            else:
                arr = wp.array(np.ascontiguousarray(v, dtype=np_dt), dtype=dtype, device=dev, requires_grad=requires_grad)
            setattr(self, name, arr)

    def zeros_like(self) -> "Parameters":
        return Parameters(self.problem, _empty=True)

    def numpy(self) -> dict:
        return {n: getattr(self, n).numpy() for n in self.NAMES}

    def inlet_window(self, window: int):
        return self.inlet_velocity[window]

    def __repr__(self):
        return "Parameters(" + ", ".join(f"{n}={tuple(getattr(self, n).shape)}" for n in self.NAMES) + ")"


@dataclass
class State:
    """Populations of one time level: ``f``, shape (Q, cell_count), lattice units, on the device."""

    problem: Problem
    f: wp.array = field(repr=False)

    @classmethod
    def empty(cls, problem: Problem, requires_grad: bool = False, arithmetic: bool = False) -> "State":
        """Zero populations in the storage dtype (``arithmetic=True``: the arithmetic dtype, as
        adjoint states use so that float16 storage keeps float32 gradients)."""
        dtype = K.wp_dtype(problem.precision) if arithmetic else K.storage_dtype(problem.precision)
        f = wp.zeros((problem.lattice.q, problem.cell_count), dtype=dtype, device=problem.device,
                     requires_grad=requires_grad)
        return cls(problem, f)

    def set_equilibrium(self, rho=1.0, velocity=None):
        """Set populations to equilibrium at density ``rho`` and ``velocity`` (scalars or fields)."""
        p = self.problem
        D, N = p.lattice.dim, p.cell_count
        rho = np.broadcast_to(np.asarray(rho, dtype=np.float64), p.shape) if np.ndim(rho) == 0 else np.asarray(rho, np.float64)
        if rho.shape != p.shape:
            raise ValueError(f"rho has shape {rho.shape}; it must be a scalar or match shape={p.shape}")
        if not np.all(np.isfinite(rho)) or np.any(rho <= 0):
            bad = tuple(int(i) for i in np.argwhere(~(np.isfinite(rho) & (rho > 0)))[0])
            raise ValueError(f"rho must be positive and finite; rho{list(bad)}={rho[bad]}")
        u = np.zeros((N, 3))
        if velocity is not None:
            v = np.asarray(velocity, dtype=np.float64)
            if v.shape == (D,):
                u[:, :D] = v
            elif v.shape == p.shape + (D,):
                u[:, :D] = v.reshape(N, D)
            else:
                raise ValueError(f"velocity has shape {v.shape}; allowed ({D},) or {p.shape + (D,)}")
            if not np.all(np.isfinite(u)):
                raise ValueError("velocity contains NaN or infinite values")
        dtype = K.wp_dtype(p.precision)
        vec3 = wp.types.vector(3, dtype)
        np_dt = np.float64 if p.precision == "float64" else np.float32
        rho_w = wp.array(rho.ravel().astype(np_dt), dtype=dtype, device=p.device)
        u_w = wp.array(u.astype(np_dt), dtype=vec3, device=p.device)
        wp.launch(K.equilibrium_kernel(p.lattice.name, p.precision), dim=N, inputs=[rho_w, u_w],
                  outputs=[self.f], device=p.device)
        return self

    def set_populations(self, f):
        """Copy populations of shape (Q, *shape) or (Q, cell_count) into this state (checked)."""
        p = self.problem
        arr = np.asarray(f)
        if arr.shape not in ((p.lattice.q,) + p.shape, (p.lattice.q, p.cell_count)):
            raise ValueError(f"populations have shape {arr.shape}; allowed {(p.lattice.q,) + p.shape}")
        arr = arr.reshape(p.lattice.q, p.cell_count)
        if not np.all(np.isfinite(arr)):
            raise ValueError("populations contain NaN or infinite values")
        if np.any(arr.sum(axis=0) <= 0):
            cell = int(np.flatnonzero(arr.sum(axis=0) <= 0)[0])
            raise ValueError(f"populations give a non-positive density at cell {np.unravel_index(cell, p.shape)}")
        shift = np.asarray(K.storage_shift(p.lattice.name, p.precision))[:, None]
        self.f.assign((arr - shift).astype(self.f.numpy().dtype))
        return self

    def copy(self) -> "State":
        st = State.empty(self.problem)
        wp.copy(st.f, self.f)
        return st

    def populations(self) -> np.ndarray:
        """Host copy of the populations, shape (Q, *shape) (float16 storage: returned in float32,
        with the storage shift added back)."""
        p = self.problem
        f = self.f.numpy()
        if p.precision == "float16":
            f = f.astype(np.float32) + np.asarray(K.storage_shift(p.lattice.name, p.precision), np.float32)[:, None]
        return f.reshape((p.lattice.q,) + p.shape)
