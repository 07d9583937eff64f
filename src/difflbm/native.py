"""Per-cell bodies written as native C++/CUDA (``wp.func_native``) inside Warp kernels: the forward
step and (opt-in) the gradient's moments adjoint.

Each body does the operations of the Warp-generated kernel it stands in for, in the same order
(:func:`difflbm.kernels.step_kernel` with ``backward=False``; :func:`difflbm.kernels.step_adjoint_kernel`
with ``moments=True, push_out=False``), so its output is bit-identical for finite states: tested on
the CPU for every lattice and precision (and on CUDA by the same tests where a GPU is present),
compared value for value on an H200 for the lid cavity (ninth session). With a non-finite population
the two may differ in which non-finite value they write (the native sums leave out 0 * f terms, so
an inf stays inf where 0 * inf gives nan); the cells holding non-finite values, and so divergence
checks, agree.

What differs is how it compiles. Warp's generated code computes a 64-bit byte offset from the array
strides for every access, decodes the cell coordinates with integer divisions and keeps the
multiplications by zero velocity components; here every population is a 32-bit element offset from
the array's base, the coordinates come from two multiply-shifts with magic numbers computed on the
host (Granlund & Montgomery 1994), the zero terms are not written, and only cells that can have a
cell code read it (:func:`coded_box`). Nsight Compute: 320 M instead of 542 M instructions per
256^3 D3Q19 step; float16, which was bound by instructions, gains most (docs/PERF_NOTES.md).

The forward step covers BGK or TRT, a scalar or per-cell omega, Guo forcing (uniform or per cell),
half-way bounce-back walls, moving walls, solid cells, any periodicity, float32 and float16 storage,
with moments-storing and ranged variants, and velocity inlets, pressure outlets and outflow.
Everything else (float64, Smagorinsky, porosity, curved walls, every kernel Warp differentiates)
stays on the Warp-generated kernels. float64 is left out because the native body was slower there
(H200, D3Q19 256^3: 11,594 vs 12,848 MLUPS, BENCHMARKS.md, ninth session). The moments adjoint
that writes the gathered form (the gradient's hot kernel) has a native body too, for BGK without a
body force. ``DIFFLBM_NATIVE_STEP=0`` turns the native step off, ``DIFFLBM_NATIVE_OPEN=0`` its open
boundaries, ``DIFFLBM_NATIVE_ADJOINT=0`` the native adjoint (all three on by default since the tenth
session timed them: BENCHMARKS.md, "H200, tenth session").
"""

import os
from functools import lru_cache

import numpy as np
import warp as wp

from . import kernels as K

__all__ = ["native_step_unsupported", "native_step_kernel", "division_magic", "native_step_enabled", "coded_box",
           "extra_inputs", "dense", "NATIVE_BLOCK_DIM", "native_adjoint_enabled", "native_adjoint_unsupported",
           "native_moments_adjoint_kernel", "native_open_enabled", "native_adjoint_used", "FORMS", "pairs_unsupported",
           "native_form", "one_cell_form", "DEFAULT_FORMS", "DEFAULT_FORMS_WITH_CONSTANTS", "DEFAULT_FORMS_CPU", "CONSTANTS_MEASURED", "grid_constants",
           "native_constants_enabled", "native_wall_rows_enabled", "native_solid_flag_enabled",
           "native_face_codes_enabled", "face_coded", "CONSTANT_NAMES"]

# CUDA threads per block of the native step: 64 was faster than 128 and 256 for every lattice
# (H200, ninth session: D3Q19 fp32 256^3 0.718 / 0.723 / 0.746 ms, fp16 0.549 / 0.562 / 0.607 ms,
# D3Q27 fp32 1.090 / 1.127 / 1.298 ms, D2Q9 4096^2 within 0.5 % of 128; benchmarks/native_bench.py blocks)
NATIVE_BLOCK_DIM = 64

# the native step's forms (native_step_kernel): one cell per thread, the link-free load path, two
# cells per thread with paired stores (and joint loads), the patched loads and the lean path (a shell
# order of the threads for the lean path was bit-identical but half as fast everywhere: H200, twelfth
# session, D3Q19 fp32 256^3 12,947 vs 24,462 MLUPS; removed, BENCHMARKS.md)
FORMS = ("one", "split", "pairs", "pairs_split", "pairs_joint", "pairs_joint_split", "patch", "pairs_patch",
         "pairs_joint_patch", "lean", "pairs_lean", "pairs_joint_lean")
# the default form per (lattice, precision), from the H200 timings of every form (tenth session,
# benchmarks/native_bench.py forms, MLUPS one / split / pairs / pairs_split, lid cavity unless named):
#   D3Q19 fp32 256^3 23,770 / 23,715 / 23,760 / 23,080; 512^3 24,620 / 24,406 / 25,187 / 24,734;
#              256^3 channel 24,330 / 24,073 / 25,223 / 25,097
#   D3Q19 fp16 256^3 33,316 / 33,168 / 29,367 / 28,870 (the pairs need 96 registers); 512^3 33,756 /
#              34,255 / 32,498 / 32,476; 256^3 with a ball 32,810 / 32,661 / 28,938 / 28,396
#   D3Q27 fp32 256^3 15,764 / 16,050 / 16,675 / 16,736; fp16 19,932 / 22,790 / 22,252 / 23,147
#   D2Q9 fp32 4096^2 53,936 / 54,060 / 54,440 / 55,356; fp16 57,803 / 57,681 / 63,559 / 68,007
# other combinations (float64 has no native step) use "one"
DEFAULT_FORMS = {("D3Q19", "float32"): "pairs", ("D3Q19", "float16"): "one",
                 ("D3Q27", "float32"): "pairs_split", ("D3Q27", "float16"): "pairs_split",
                 ("D2Q9", "float32"): "pairs_split", ("D2Q9", "float16"): "pairs_split"}
# where the grid and coded box are compile-time constants (native_constants_enabled; CUDA by default),
# the forms measured again with them ("+c"; same run, tenth session, MLUPS one / pairs / pairs_split /
# one+c / pairs+c / pairs_split+c):
#   D3Q19 fp16 256^3 33,208 / 29,389 / 28,803 / 33,091 / 35,118 / 32,850 (pairs fit 72 registers)
#   D3Q19 fp32 256^3 23,651 / 23,894 / 23,093 / 23,729 / 24,487 / 24,455; 512^3 24,614 / 25,182 /
#              24,743 / 24,606 / 25,334 / 24,492
#   D3Q27 fp32 256^3 15,841 / 16,694 / 16,705 / 16,368 / 16,688 / 16,978
# and with the joint loads and the patched loads (eleventh session, benchmarks/gpu_session11.sh part
# patch, 3cbf86a, MLUPS one+c / pairs+c / pairs_split+c / pairs_joint+c / patch+c / pairs_patch+c /
# pairs_joint_patch+c, the better of two rounds):
#   D3Q19 fp32 256^3 23,750 / 24,530 / 24,464 / 24,966 / 24,105 / 24,627 / 24,689; 512^3 24,613 /
#              25,342 / 24,495 / 25,428 / 24,842 / 25,537 / 25,697; channel 24,423 / 25,568 /
#              25,547 / 25,869 / 24,645 / 25,497 / 25,494
#   D3Q19 fp16 256^3 33,099 / 35,212 / 32,875 / 33,259 / 33,716 / 34,078 / 34,187; 512^3 33,921 /
#              37,370 / 36,674 / 35,448 / 34,281 / 37,348 / 37,544; ball 32,377 / 34,579 / 32,146 /
#              32,668 / 33,395 / 33,140 / 33,118
#   D3Q27 fp32 256^3 16,416 / 16,808 / 17,101 / 17,221 / 16,671 / 16,945 / 16,901
#   D3Q27 fp16 256^3 24,147 / 22,915 / 24,388 / 20,120 / 23,796 / 22,475 / 23,006
# and with the moving-wall terms from the table of distinct rows (native_wall_rows_enabled, "+r";
# twelfth session, benchmarks/gpu_session11.sh parts rows and rows2 on 4ea5334, the better of two
# rounds, MLUPS pairs+c+r / pairs_patch+c+r / pairs_joint+c+r / pairs_joint_patch+c+r /
# pairs_joint_lean+c+r / pairs_lean+c+r / pairs_split+c+r):
#   D3Q19 fp32 256^3 25,089 / 25,392 / 25,452 / 25,551 / 25,505 / 25,200 / 24,881; 512^3 25,692 /
#              25,886 / 25,736 / - / - / - / -
#   D3Q19 fp16 256^3 35,852 / 39,122 / 33,820 / 36,710 / 33,845 / 35,733 / 34,770
#   D3Q27 fp32 256^3 - / 17,640 / 17,817 / 17,792 / 17,524 / 17,374 / 17,500
#   D3Q27 fp16 256^3 - / 24,337 / 21,505 / 24,484 / 20,044 / 22,295 / 26,169
# (the rows gave every form 2-7 %; the patched loads gain most with them, the lid's cells no longer
# waiting on a per-cell wall-term load); then with any_solid compiled in (grid_constants; twelfth
# session, gpu_session12.sh part solid on 22ea86a, MLUPS pairs_patch / pairs_joint_patch /
# pairs_split, each +c+r): D3Q19 fp16 256^3 43,086-43,145 / 41,080-42,127 / 39,339-39,523; fp32
# 25,342-25,345 / 25,667 / 25,533-25,534; D3Q27 fp16 27,712-28,656 / 25,287-25,437 / 27,386-27,773;
# D3Q27 fp32 17,392-17,393 / 17,666-17,669 / 17,316-17,321 (pairs_joint: 17,814-17,817 in rows2);
# then with the codes from the faces (face_coded, native_face_codes_enabled) and the float16
# deviation collision (thirteenth session, gpu_session13.sh part faces, two rounds, MLUPS
# pairs_patch / pairs_joint_patch with face codes, then both without, each +c+r): D3Q19 fp16 256^3
# 45,194-45,547 / 46,140-46,278, without 43,820-44,365 / 42,983-45,465; fp32 25,395-25,455 /
# 25,795-25,824, without 25,380-25,431 / 25,735-25,753; D3Q27 fp16 30,038-30,099 / 28,884-30,412,
# without 29,058-29,927 / 29,817-30,003
DEFAULT_FORMS_WITH_CONSTANTS = {("D3Q19", "float16"): "pairs_joint_patch", ("D3Q19", "float32"): "pairs_joint_patch",
                                ("D3Q27", "float32"): "pairs_joint", ("D3Q27", "float16"): "pairs_patch"}
# on the CPU (Warp runs a CPU kernel on one thread), from `difflbm bench --device cpu --steps 40
# --repeats 3` with DIFFLBM_NATIVE_FORM set, two alternating runs each (2-core x86 machine, tenth
# session; MLUPS one / pairs / split / pairs_split): D3Q19 fp32 48^3 7.51, 7.60 / 7.55, 7.33 /
# 8.56, 8.96 / 9.42, 9.13; fp16 7.23, 7.09 / 7.58, 7.36 / 8.14, 8.09 / 7.84, 9.07; D3Q27 fp32 40^3
# 5.88, 6.68 / 5.73, 5.25 / 7.14, 6.89 / 7.03, 6.34; D2Q9 fp32 384^2 17.0, 17.8 / 17.3, 22.1 /
# 19.5, 19.9 / 21.1, 24.7. Combinations not measured there use DEFAULT_FORMS.
DEFAULT_FORMS_CPU = {("D3Q19", "float32"): "pairs_split", ("D3Q19", "float16"): "split",
                     ("D3Q27", "float32"): "split", ("D2Q9", "float32"): "pairs_split"}
# constants are the CUDA default where they were measured (above); elsewhere opt-in
CONSTANTS_MEASURED = {("D3Q19", "float32"), ("D3Q19", "float16"), ("D3Q27", "float32"), ("D3Q27", "float16")}


def native_adjoint_enabled() -> bool:
    """False when the environment variable ``DIFFLBM_NATIVE_ADJOINT`` is ``0``; otherwise the moments
    adjoint that writes the gathered form has a native body where :func:`native_adjoint_unsupported`
    allows (H200, tenth session: gradient 7,082-7,089 vs 6,667 MLUPS-equivalent, D3Q19 fp32 256^3)."""
    value = os.environ.get("DIFFLBM_NATIVE_ADJOINT", "1")
    if value not in ("0", "1"):
        raise ValueError(f"DIFFLBM_NATIVE_ADJOINT={value!r}: allowed values are '0' (Warp-generated adjoint) and '1'")
    return value == "1"


def native_open_enabled() -> bool:
    """False when the environment variable ``DIFFLBM_NATIVE_OPEN`` is ``0``; otherwise the native step
    also covers velocity inlets, pressure outlets and outflow (H200, tenth session: D3Q19 fp32 256^3
    channel 24,436-24,446 vs 19,112-19,121 MLUPS, bit-identical)."""
    value = os.environ.get("DIFFLBM_NATIVE_OPEN", "1")
    if value not in ("0", "1"):
        raise ValueError(f"DIFFLBM_NATIVE_OPEN={value!r}: allowed values are '0' (Warp-generated step for open "
                         "boundaries) and '1'")
    return value == "1"


def native_wall_rows_enabled() -> bool:
    """False when the environment variable ``DIFFLBM_NATIVE_WALL_ROWS`` is ``0``; otherwise the native
    step reads each moving-wall cell's bounce-back terms from a table of the distinct rows (a few per
    wall: cached) instead of one row per cell (:meth:`Solver._wall_rows`); the values are the same,
    so are the bits (H200, twelfth session: D3Q19 fp16 256^3 lid cavity, pairs_patch with constants,
    39,112-39,122 vs 36,670-36,760 MLUPS; fp32 pairs_joint 25,354-25,380 vs 24,866-24,888)."""
    value = os.environ.get("DIFFLBM_NATIVE_WALL_ROWS", "1")
    if value not in ("0", "1"):
        raise ValueError(f"DIFFLBM_NATIVE_WALL_ROWS={value!r}: allowed values are '0' (a row per cell) and '1'")
    return value == "1"


def native_solid_flag_enabled() -> bool:
    """False when the environment variable ``DIFFLBM_NATIVE_SOLID_FLAG`` is ``0``; otherwise, where the
    grid is compiled in (:func:`native_constants_enabled`), whether the problem has a solid cell is
    compiled in too (:func:`grid_constants`' ``any_solid``): without one, no cell tests for the solid
    kind (the patched forms' select at every store). The same bits either way."""
    value = os.environ.get("DIFFLBM_NATIVE_SOLID_FLAG", "1")
    if value not in ("0", "1"):
        raise ValueError(f"DIFFLBM_NATIVE_SOLID_FLAG={value!r}: allowed values are '0' (the solid test in every "
                         "cell) and '1'")
    return value == "1"


def native_face_codes_enabled() -> bool:
    """False when the environment variable ``DIFFLBM_NATIVE_FACE_CODES`` is ``0``; otherwise, where the
    grid is compiled in (:func:`native_constants_enabled`), a problem whose cell codes come from its
    faces alone (:func:`face_coded`: walls on faces, no solid cell, no open boundary) is compiled with
    ``face_coded = 1``: its cells work their links out from their coordinates, so a face cell's
    bounce-back loads wait for no code load. The same bits either way. H200, thirteenth session,
    D3Q19 fp16 256^3 lid cavity, pairs_joint_patch with constants and wall rows: 46,140-46,278 vs
    42,983-45,465 MLUPS; fp32 25,795-25,824 vs 25,735-25,753. (Loading the bounce-back populations
    face by face instead of by link bit took 8 more registers and was slower for D3Q19 fp16:
    44,809-44,880 MLUPS.)"""
    value = os.environ.get("DIFFLBM_NATIVE_FACE_CODES", "1")
    if value not in ("0", "1"):
        raise ValueError(f"DIFFLBM_NATIVE_FACE_CODES={value!r}: allowed values are '0' (the codes read from "
                         "memory) and '1'")
    return value == "1"


def native_step_enabled() -> bool:
    """False when the environment variable ``DIFFLBM_NATIVE_STEP`` is ``0`` (read at Solver construction)."""
    value = os.environ.get("DIFFLBM_NATIVE_STEP", "1")
    if value not in ("0", "1"):
        raise ValueError(f"DIFFLBM_NATIVE_STEP={value!r}: allowed values are '0' (Warp-generated step) and '1'")
    return value == "1"


def _form_parts(form: str) -> tuple[bool, bool, str]:
    """``(pairs, joint, kind)`` of a name in :data:`FORMS`: two cells per thread, joint loads, and the
    load path ``"one"`` (the per-link choice), ``"split"``, ``"patch"`` or ``"lean"``."""
    if form not in FORMS:
        raise ValueError(f"form={form!r}: allowed values are {', '.join(map(repr, FORMS))}")
    words = form.split("_")
    kind = words[-1] if words[-1] in ("one", "split", "patch", "lean") else "one"
    return words[0] == "pairs", "joint" in words, kind


def one_cell_form(form: str) -> str:
    """The one-cell-per-thread counterpart of ``form``: ``"split"`` for the link-free forms,
    ``"patch"`` for the patched loads, ``"lean"`` for the lean path, else ``"one"``."""
    return _form_parts(form)[2]


def native_form(cfg: K.StepConfig, cell_count: int, ranged: bool = False, moments: bool = False,
                constants: bool = False, cuda: bool = True) -> str:
    """The native step's form for ``cfg`` (:data:`FORMS`): ``DIFFLBM_NATIVE_FORM`` if set, else the
    fastest measured for its lattice and precision (:data:`DEFAULT_FORMS`, or
    :data:`DEFAULT_FORMS_WITH_CONSTANTS` where ``constants``, or :data:`DEFAULT_FORMS_CPU` where not
    ``cuda``), with one cell per thread for the
    moments-storing step (the gradient's replay: 7,047 MLUPS-equivalent with it vs 6,922 with
    pairs, H200, D3Q19 fp32 256^3, tenth session); a pairs form falls back to its one-cell
    counterpart where :func:`pairs_unsupported` gives a reason."""
    key = (cfg.lattice, cfg.precision)
    # each device kind's own measurements first (the constants' table was measured on CUDA only)
    measured = (DEFAULT_FORMS_WITH_CONSTANTS.get(key) if constants else None) if cuda else DEFAULT_FORMS_CPU.get(key)
    default = measured or DEFAULT_FORMS.get(key, "one")
    if moments:
        default = one_cell_form(default)
    value = os.environ.get("DIFFLBM_NATIVE_FORM", default)
    if value not in FORMS:
        raise ValueError(f"DIFFLBM_NATIVE_FORM={value!r}: allowed values are {', '.join(map(repr, FORMS))}")
    if _form_parts(value)[0] and pairs_unsupported(cfg, cell_count, ranged) is not None:
        value = one_cell_form(value)
    return value


def native_step_unsupported(cfg: K.StepConfig, cell_count: int) -> str | None:
    """Why the native step cannot run ``cfg`` on ``cell_count`` cells, or None when it can."""
    lat_q = K.physics(cfg.lattice, cfg.precision)["Q"]
    if cfg.precision == "float64":
        return "precision='float64' (the native body measured slower than the generated step)"
    if cfg.collision not in (K.COLLISION_BGK, K.COLLISION_TRT):
        return f"collision={cfg.collision!r} (the native step is BGK or TRT)"
    for name in ("porosity", "curved"):
        if getattr(cfg, name):
            return f"{name}=True"
    open_enabled = native_open_enabled()  # read (and checked) for every configuration
    if (cfg.velocity_bc or cfg.pressure_bc or cfg.outflow_bc) and not open_enabled:
        return "open boundaries with DIFFLBM_NATIVE_OPEN=0"
    if cfg.max_registers is not None:
        return "a register cap"
    if lat_q * cell_count >= 2 ** 32:
        return f"{lat_q} x {cell_count} populations need 64-bit offsets"
    return None


# the names of native_step_kernel's constants, in order (grid_constants)
CONSTANT_NAMES = ("nx", "ny", "nz", "magic_z", "shift_z", "magic_y", "shift_y",
                  "box_x0", "box_nx", "box_y0", "box_ny", "box_z0", "box_nz", "any_solid", "face_coded")


def grid_constants(problem, solid_flag: bool = True, face_codes: bool = True) -> tuple:
    """``(nx, ny, nz)``, :func:`extra_inputs`, ``any_solid`` and ``face_coded`` of ``problem`` as plain
    integers (:data:`CONSTANT_NAMES`): the ``constants`` of :func:`native_step_kernel` for its grid,
    current coded box and cell kinds. ``any_solid`` is 1 where a cell has the solid kind (or
    ``solid_flag`` is False), else 0; ``face_coded`` is 1 where ``face_codes`` and every cell's code
    is the one its faces give (:func:`face_coded`), else 0."""
    any_solid = 1
    if solid_flag:
        any_solid = _per_code_array(problem, "_native_any_solid", lambda: int(bool(np.any(
            (np.asarray(problem.code_np) >> np.uint32(K.KIND_SHIFT)) == K.KIND_SOLID))))
    faces = int(face_codes and _per_code_array(problem, "_native_face_coded", lambda: face_coded(problem)))
    return (tuple(int(v) for v in problem.grid3) + tuple(int(v) for v in extra_inputs(problem))
            + (any_solid, faces))


def _face_masks(cfg: K.StepConfig) -> list:
    """``[(axis, side, mask)]``: for each face of a non-periodic axis (side 0 the low face, 1 the
    high one), the link bits a cell on it has: the directions whose source cell lies beyond it
    (c_axis = +1 on the low face, -1 on the high one), as :meth:`Problem._build_cells` sets them."""
    C = K.physics(cfg.lattice, cfg.precision)["C"]
    out = []
    for axis in range(3):
        if cfg.periodic[axis]:
            continue
        for side, sign in ((0, 1), (1, -1)):
            out.append((axis, side, sum(1 << i for i in range(len(C)) if C[i][axis] == sign)))
    return out


def face_coded(problem) -> bool:
    """Whether every cell code of ``problem`` is the one its faces alone give: the link bits of
    :func:`_face_masks` for each face of a non-periodic axis the cell is on, and kind 0 (so no solid
    cell, no open boundary, no coded cell inside). Then the native step works the codes out from
    the coordinates (:func:`native_face_codes_enabled`)."""
    grid3 = tuple(int(v) for v in problem.grid3)
    code = np.asarray(problem.code_np).reshape(grid3)
    expected = np.zeros(grid3, dtype=np.uint32)
    for axis, side, mask in _face_masks(problem.config):
        index = [slice(None)] * 3
        index[axis] = 0 if side == 0 else grid3[axis] - 1
        expected[tuple(index)] |= np.uint32(mask)
    return bool(np.array_equal(code, expected))


def _face_code(cfg: K.StepConfig, x: str, y: str, z: str) -> str:
    """C++ of the code :func:`face_coded` gives the cell at (x, y, z): the OR of its faces' masks."""
    coords, sizes = dict(zip("xyz", (x, y, z))), dict(zip("xyz", ("nx", "ny", "nz")))
    terms = [f"(({coords['xyz'[a]]} == {'0' if side == 0 else sizes['xyz'[a]] + ' - 1'}) ? {mask}u : 0u)"
             for a, side, mask in _face_masks(cfg)]
    return " | ".join(terms) if terms else "0u"


def native_constants_enabled(device, cfg: K.StepConfig | None = None) -> bool:
    """Whether the native step of ``cfg`` on ``device`` is compiled for each grid and coded box, with
    them as constants (:func:`grid_constants`): ``DIFFLBM_NATIVE_CONSTANTS`` (``0`` or ``1``) if set,
    else on CUDA devices for the lattices and precisions where it was measured faster
    (:data:`CONSTANTS_MEASURED`; H200, tenth session: D3Q19 fp32 256^3 24,487 vs 23,894 MLUPS with two
    cells per thread). A CUDA compile per grid takes about a second, a CPU compile much longer, and
    the CPU gain was not measured."""
    value = os.environ.get("DIFFLBM_NATIVE_CONSTANTS")
    if value is None:
        return wp.get_device(device).is_cuda and cfg is not None and (cfg.lattice, cfg.precision) in CONSTANTS_MEASURED
    if value not in ("0", "1"):
        raise ValueError(f"DIFFLBM_NATIVE_CONSTANTS={value!r}: allowed values are '0' and '1' (a kernel per grid)")
    return value == "1"


def pairs_unsupported(cfg: K.StepConfig, cell_count: int, ranged: bool = False) -> str | None:
    """Why two cells per thread cannot run ``cfg`` on ``cell_count`` cells, or None when they can:
    an odd cell count, a ranged step (its first cell may be odd), or per-cell omega or force (the
    kernel reads one omega and one force per thread)."""
    if cell_count % 2:
        return f"an odd cell count ({cell_count})"
    if ranged:
        return "a ranged step"
    if cfg.omega_field:
        return "a per-cell omega"
    if cfg.force == K.FORCE_FIELD:
        return "a per-cell force"
    return None


def division_magic(d: int) -> tuple[int, int]:
    """``(m, s)`` with ``a // d == (a * m) >> s`` for every integer ``0 <= a < 2**31``.

    Granlund & Montgomery (1994), Theorem 4.2 for 31-bit dividends: ``l = ceil(log2 d)``,
    ``m = floor(2**(31 + l) / d) + 1`` (< 2**32) and ``s = 31 + l``; then ``m d - 2**(31+l)`` lies in
    (0, d], which is at most ``2**l``.
    """
    if isinstance(d, bool) or not isinstance(d, int) or not 1 <= d < 2 ** 31:
        raise ValueError(f"d={d!r}: the divisor must be an integer in 1 .. 2**31 - 1")
    lg = (d - 1).bit_length()
    return (1 << (31 + lg)) // d + 1, 31 + lg


def coded_box(code, grid3, periodic) -> list:
    """``[x0, nx, y0, ny, z0, nz]``: origin and size of the smallest box holding every cell with a
    non-zero code (links, a kind) that is not on a face of a non-periodic axis; sizes 0 when there is
    none. ``code``: the cell codes, flat, ``grid3`` their (nx, ny, nz)."""
    coded = np.asarray(code).reshape(grid3) != 0
    for axis, is_periodic in enumerate(periodic):
        if not is_periodic and grid3[axis] > 0:
            index = [slice(None)] * 3
            index[axis] = [0, grid3[axis] - 1]
            coded[tuple(index)] = False
    box = []
    for axis in range(3):
        hit = np.flatnonzero(coded.any(axis=tuple(a for a in range(3) if a != axis)))
        box += [int(hit[0]), int(hit[-1] - hit[0] + 1)] if hit.size else [0, 0]
    if 0 in box[1::2]:
        box = [0, 0, 0, 0, 0, 0]
    return box


def extra_inputs(problem) -> list:
    """The native step's inputs after those of the generated step, for ``problem`` as it is now.

    Cached on the problem for its current code array: codes are built once (ensembles and slab
    decompositions replace the array, which computes the box again); the box is taken from the
    host copy ``problem.code_np``, so the two must not be changed in place."""
    def build():
        nx, ny, nz = (int(v) for v in problem.grid3)
        mz, sz = division_magic(nz)
        my, sy = division_magic(ny)
        return [wp.uint32(mz), sz, wp.uint32(my), sy] + coded_box(problem.code_np, (nx, ny, nz),
                                                                  problem.config.periodic)

    return _per_code_array(problem, "_native_inputs", build)


def _per_code_array(problem, name: str, build):
    """``build()``, cached on ``problem`` as attribute ``name`` for its current code array (codes are
    replaced, never edited in place: Problem's docstring)."""
    cached = getattr(problem, name, None)
    if cached is None or cached[0] is not problem.code:
        cached = (problem.code, build())
        setattr(problem, name, cached)
    return cached[1]


def dense(array, rows: int, cell_count: int) -> bool:
    """True when ``array`` is None or a contiguous (rows, cell_count) array: the layout the native
    body addresses without strides."""
    return array is None or (tuple(array.shape) == (rows, cell_count) and array.is_contiguous)


def _literal(v: float, arith: str) -> str:
    """A C constant equal to ``arith(v)``: the rounding Warp's ``dtype(constant)`` does."""
    return f"(({arith}){float(v)!r})"


def _signed_sum(terms: list, zero: str) -> str:
    """``'a - b + c'`` from ``[(1, 'a'), (-1, 'b'), (0, 'x'), (1, 'c')]``, zero coefficients left out."""
    out = ""
    for sign, term in terms:
        if sign == 0:
            continue
        if not out:
            out = term if sign > 0 else f"-{term}"
        else:
            out += f" + {term}" if sign > 0 else f" - {term}"
    return out or zero


def _coded_test(cfg: K.StepConfig, x: str, y: str, z: str) -> str:
    """C++ test of whether the cell at (x, y, z) can have a non-zero code: on a face of a non-periodic
    axis or inside the box of the other coded cells (:func:`coded_box`)."""
    coords = dict(zip("xyz", (x, y, z)))
    inside = " & ".join(f"((unsigned int)({coords[c]} - box_{c}0) < (unsigned int)box_n{c})" for c in "xyz")
    tests = [f"({inside})"]
    for c, n, periodic in zip("xyz", ("nx", "ny", "nz"), cfg.periodic):
        if not periodic:
            tests.append(f"({coords[c]} == 0) | ({coords[c]} == {n} - 1)")
    return " | ".join(tests)


def _prologue(cfg: K.StepConfig, a, src: str, dst: str, ctype: str, solid_outputs: list | None = None,
              solid_check: bool = True, slot_with_code: bool = False, lean: bool = False,
              solid_flag: bool = False, face_codes: bool = False) -> None:
    """C++ shared by the native cell bodies: the cell's coordinates, its code (read only where one
    can be non-zero), the copy of a solid cell from ``src`` to ``dst`` (arrays of ``ctype``, dense
    (Q, cells); :func:`_solid_check`, left to the caller where not ``solid_check``), and the wrapped
    element offsets along each axis (``sxm`` is the offset of x - 1). ``slot_with_code``: a coded
    cell's moving-wall slot ``ws`` is read next to its code (-1 elsewhere), not after it. ``lean``:
    the caller knows the cell has no code (:func:`lean_wrap`), which the compiler folds.
    ``solid_flag``: the solid test also asks ``any_solid``; ``face_codes``: where ``face_coded`` (both
    declared by :func:`native_step_kernel`), the code is worked out from the coordinates."""
    _coordinates(a, "idx")
    a(f"const {ctype}* __restrict__ fi = {src}.data;")
    a(f"{ctype}* __restrict__ fo = {dst}.data;")
    # Only cells on a face of a non-periodic axis or inside the box of the other coded cells can have
    # a non-zero code (coded_box); the rest skip the load, so their pulls wait for no load (H200:
    # float32 +1.4 %, float16 +10 %, docs/PERF_NOTES.md, ninth session).
    a("const bool coded = " + ("false" if lean else _coded_test(cfg, "x", "y", "z")) + ";")
    a("unsigned int cell = 0u;")
    # face_coded (a constant of the forward step, grid_constants): the code from the coordinates,
    # none read
    read = ("{ if (face_coded) cell = " + _face_code(cfg, "x", "y", "z") + "; else cell = code.data[idx]; }"
            if face_codes else "cell = code.data[idx];")
    if slot_with_code:
        a("int ws = -1;")
        a(f"if (coded) {{ {read} ws = wall_slot.data[idx]; }}")
    else:
        a(f"if (coded) {read}")
    if solid_check:
        _solid_check(cfg, a, solid_outputs, solid_flag)
    _neighbour_offsets(a)


def _solid_test(solid_flag: bool) -> str:
    """C++ test of whether the cell of code ``cell`` is solid; ``solid_flag``: and ``any_solid``."""
    test = f"((cell >> {K.KIND_SHIFT}u) == {K.KIND_SOLID}u)"
    return f"(any_solid != 0) && {test}" if solid_flag else test


def _solid_check(cfg: K.StepConfig, a, solid_outputs: list | None = None, solid_flag: bool = False) -> None:
    """C++ of a solid cell's update: a copy of its own populations, stored (one cell per thread, then
    ``return``) or left in ``solid_outputs`` (a cell of a pair; the caller closes the ``else``)."""
    Q = K.physics(cfg.lattice, cfg.precision)["Q"]
    a(f"if ({_solid_test(solid_flag)}) {{")
    if solid_outputs is None:
        a(f"    for (unsigned int q = 0; q < {Q}u; ++q) fo[q * un + ui] = fi[q * un + ui];")
        a("    return;")
        a("}")
    else:
        for q, out in enumerate(solid_outputs):
            a(f"    {out} = fi[{q}u * un + ui];")
        a("} else {")


def _coordinates(a, idx: str, pad: str = "") -> None:
    """C++ of ``nyz``, ``un`` (cells), ``ui`` and the coordinates x, y, z of the cell ``idx``."""
    a(f"{pad}const int nyz = ny * nz;")
    a(f"{pad}const unsigned int un = (unsigned int)(nx * nyz);")
    a(f"{pad}const unsigned int ui = (unsigned int){idx};")
    # idx = (x ny + y) nz + z; the two quotients by multiply-shift (exact for idx < 2^31)
    a(f"{pad}const int q1 = (int)(((unsigned long long)ui * (unsigned long long)magic_z) >> shift_z);")
    a(f"{pad}const int x = (int)(((unsigned long long)(unsigned int)q1 * (unsigned long long)magic_y) >> shift_y);")
    a(f"{pad}const int z = {idx} - q1 * nz;")
    a(f"{pad}const int y = q1 - x * ny;")


def _neighbour_offsets(a, axes: str = "xyz", pad: str = "") -> None:
    """C++ of the element offsets of the neighbours along ``axes``, wrapped periodically (``sxm``:
    the offset of x - 1)."""
    lines = {"x": ("const int sxm = (x == 0) ? (nx - 1) * nyz : -nyz;",
                   "const int sxp = (x == nx - 1) ? -(nx - 1) * nyz : nyz;"),
             "y": ("const int sym = (y == 0) ? (ny - 1) * nz : -nz;",
                   "const int syp = (y == ny - 1) ? -(ny - 1) * nz : nz;"),
             "z": ("const int szm = (z == 0) ? nz - 1 : -1;",
                   "const int szp = (z == nz - 1) ? -(nz - 1) : 1;")}
    for c in axes:
        for line in lines[c]:
            a(pad + line)


# the offset name of the neighbour x - c along axis k for c = (k, c_k): what the forward pull reads
_SOURCE = {(0, 1): "sxm", (0, -1): "sxp", (1, 1): "sym", (1, -1): "syp", (2, 1): "szm", (2, -1): "szp"}


def _open_boundary(cfg: K.StepConfig, a, moments: bool) -> None:
    """C++ that rebuilds the gathered f0.. of an open-boundary cell in place: the operations of
    :func:`difflbm.kernels.open_boundary_func` (Zou & He 1997 generalised, with the tangential
    correction of velocity faces; zero-gradient outflow) in their order, multiplications by the link
    bits included (they are how the Warp code avoids branches, and they fix the rounding). With
    ``moments`` and velocity / pressure boundaries, row 4 of ``mom`` gets the known-link mass."""
    ph = K.physics(cfg.lattice, cfg.precision)
    Q, C, W, OPP = ph["Q"], ph["C"], ph["W"], ph["OPP"]
    shift = K.storage_shift(cfg.lattice, cfg.precision)
    lit = lambda v: _literal(v, "float")  # noqa: E731
    zero, one = lit(0.0), lit(1.0)
    store_known = moments and (cfg.velocity_bc or cfg.pressure_bc)
    a(f"const unsigned int kind = cell >> {K.KIND_SHIFT}u;")
    a(f"if (kind >= {K.KIND_VELOCITY}u) {{")
    for i in range(Q):
        a(f"    const float b{i} = (float)((cell >> {i}u) & 1u);")
    a("    float ubx = 0.0f, uby = 0.0f, ubz = 0.0f;")
    a(f"    float rho_b = {one};")
    if cfg.velocity_bc:
        a(f"    if (kind == {K.KIND_VELOCITY}u) {{")
        a("        const wp::vec_t<3, float> v = inlet_velocity.data[slot.data[idx]];")
        a("        ubx = v.c[0]; uby = v.c[1]; ubz = v.c[2];")
        a("    }")
    if cfg.pressure_bc:
        a(f"    if (kind == {K.KIND_PRESSURE}u) rho_b = outlet_density.data[slot.data[idx]];")
    # known_mass: sum of bit f_opp + (1 - bit) f over every direction, in order
    a(f"    float known = {zero};")
    for i in range(Q):
        a(f"    known = known + (b{i} * f{OPP[i]} + ({one} - b{i}) * f{i});")
    if store_known:
        a(f"    if (kind != {K.KIND_OUTFLOW}u) mom.data[4 * ((size_t)mom.strides[0] / sizeof(float)) + ui] = known;")
    # link_normal: sum over links of w_i c_i
    for k, comp in enumerate(("wcx", "wcy", "wcz")):
        terms = [(C[i][k], f"(b{i} * {lit(W[i])})") for i in range(Q)]
        a(f"    float {comp} = {zero};")
        for sign, t in terms:
            if sign:
                a(f"    {comp} = {comp} {'+' if sign > 0 else '-'} {t};")
    if cfg.velocity_bc:
        a(f"    if (kind == {K.KIND_VELOCITY}u) rho_b = known / ({one} - {lit(6.0)} * (wcx * ubx + wcy * uby + wcz * ubz));")
    if cfg.pressure_bc:
        a(f"    if (kind == {K.KIND_PRESSURE}u) {{")
        a(f"        const float sc = ({one} - known / rho_b) / ({lit(6.0)} * (wcx * wcx + wcy * wcy + wcz * wcz));")
        a("        ubx = sc * wcx; uby = sc * wcy; ubz = sc * wcz;")
        a("    }")
    # face_normal
    tiny = lit(1.0e-12)
    for comp, w in (("nx_", "wcx"), ("ny_", "wcy"), ("nz_", "wcz")):
        a(f"    float {comp} = ({w} > {tiny}) ? {one} : (({w} < -{tiny}) ? {lit(-1.0)} : {zero});")
    a("    const float count = wp::abs(nx_) + wp::abs(ny_) + wp::abs(nz_);")
    a(f"    float bad = {zero};")
    for i in range(1, Q):
        cn = _signed_sum([(C[i][0], "nx_"), (C[i][1], "ny_"), (C[i][2], "nz_")], zero)
        a(f"    bad = bad + wp::abs(b{i} - ((({cn}) == {one}) ? {one} : {zero}));")
    a(f"    const float isface = (count == {one} && bad == {zero}) ? {one} : {zero};")
    a("    nx_ = isface * nx_; ny_ = isface * ny_; nz_ = isface * nz_;")
    velocity_kind = f"kind == {K.KIND_VELOCITY}u" if cfg.velocity_bc else "false"
    a(f"    const float face = ({velocity_kind} && (nx_ * nx_ + ny_ * ny_ + nz_ * nz_) > {lit(0.5)}) ? {one} : {zero};")
    # tangential_scale: per axis 1 / sum over links of c_k^2, where the normal's component is 0
    for k, (comp, n_) in enumerate((("ivx", "nx_"), ("ivy", "ny_"), ("ivz", "nz_"))):
        a(f"    float s2{k} = {zero};")
        for i in range(1, Q):
            if C[i][k] != 0:
                a(f"    s2{k} = s2{k} + b{i};")
        a(f"    const float {comp} = ({n_} == {zero} && s2{k} > {zero}) ? {one} / wp::max(s2{k}, {one}) : {zero};")
    # tangential momentum of the in-plane populations (c.n = 0)
    a(f"    float px = {zero}, py = {zero}, pz = {zero};")
    for j in range(1, Q):
        cn = _signed_sum([(C[j][0], "nx_"), (C[j][1], "ny_"), (C[j][2], "nz_")], zero)
        a("    {")
        a(f"        const float pf = ((({cn}) == {zero}) ? {one} : {zero}) * f{j};")
        for k, comp in enumerate(("px", "py", "pz")):
            if C[j][k]:
                a(f"        {comp} = {comp} {'+' if C[j][k] > 0 else '-'} pf;")
        a("    }")
    tt = lit(2.0 / 3.0)
    a(f"    const float cx_ = face * (ivx * ({tt} * rho_b * ubx - px));")
    a(f"    const float cy_ = face * (ivy * ({tt} * rho_b * uby - py));")
    a(f"    const float cz_ = face * (ivz * ({tt} * rho_b * ubz - pz));")
    if cfg.outflow_bc:
        a(f"    const bool outflow = kind == {K.KIND_OUTFLOW}u;")
    # rebuild: every new value computed from the gathered ones before any is replaced
    for i in range(1, Q):
        cub = _signed_sum([(C[i][0], "ubx"), (C[i][1], "uby"), (C[i][2], "ubz")], zero)
        ccr = _signed_sum([(C[i][0], "cx_"), (C[i][1], "cy_"), (C[i][2], "cz_")], zero)
        rebuilt = f"f{OPP[i]} + {lit(6.0 * W[i])} * rho_b * ({cub}) + ({ccr})"
        if cfg.outflow_bc:
            own = f"(static_cast<float>(fi[{i}u * un + ui]) + {lit(shift[i])})"
            rebuilt = f"(outflow ? {own} : ({rebuilt}))"
        a(f"    const float r{i} = b{i} * ({rebuilt}) + ({one} - b{i}) * f{i};")
    for i in range(1, Q):
        a(f"    f{i} = r{i};")
    a("}")


def cell_body(cfg: K.StepConfig, moments: bool = False, pair: int | None = None, split: bool = False,
              preloaded: frozenset = frozenset(), patch: bool = False, lean: bool = False) -> str:
    """C++ of one cell's forward update for ``cfg``: pull streaming with half-way bounce-back on
    boundary links (the link reads the cell's own opposite population) and moving-wall terms, the
    float16 shift, BGK collision, store. Arguments as in :func:`native_step_kernel`'s function.

    ``pair=h``: the body of cell h (0 or 1) of a pair (:func:`pair_body`), which leaves population
    i in the variable ``o{i}_{h}`` instead of storing it. ``split``: a cell without boundary links
    loads its populations without the per-link choice of offset (same values, fewer instructions).
    ``preloaded``: directions whose population the pair loaded already (``pre{i}_{h}``, valid where
    ``pair_row``: :func:`pair_body` with joint loads). ``patch``: every population is loaded from its
    (wrapped) neighbour without waiting for the cell's code, then the solid test, then a cell with
    boundary links loads its own opposite population for each link (the same values: the select
    form's loads wait for the code where a warp holds a coded cell, as on the z faces of a box); a
    moving wall's slot is read next to the code. (Loading a coded cell's own opposite populations
    before its code too, a link taking its value by a select, measured slower on an H200 in every
    case: float16 256^3 cavity 30,000-31,742 vs 35,066-35,069 MLUPS, eleventh session.) ``lean``:
    the body of a cell known to have code 0 (:func:`lean_wrap`)."""
    if patch and split:
        raise ValueError("patch=True and split=True: the two load paths exclude each other")
    ph = K.physics(cfg.lattice, cfg.precision)
    Q, C, W, OPP = ph["Q"], ph["C"], ph["W"], ph["OPP"]
    arith = "float"  # float32 arithmetic for float32 and float16 storage
    stor = {"float16": "wp::float16", "float32": "wp::float32"}[cfg.precision]
    # the deviation collision (K.deviation_collision): the float16 deviations collide as they are,
    # no shift added at the loads nor subtracted at the stores
    dev = K.deviation_collision(cfg)
    shift = [0.0] * Q if dev else K.storage_shift(cfg.lattice, cfg.precision)
    lit = lambda v: _literal(v, arith)  # noqa: E731
    axis = _SOURCE
    lines = []
    a = lines.append
    solid_outputs = None if pair is None else [f"o{q}_{pair}" for q in range(Q)]
    _prologue(cfg, a, "f_in", "f_out", stor, solid_outputs=solid_outputs, solid_check=not patch,
              slot_with_code=patch and cfg.moving_walls, lean=lean, solid_flag=True, face_codes=True)
    a(f"{arith} f0 = static_cast<{arith}>(fi[ui]);")
    offsets = {i: " + ".join(axis[(k, C[i][k])] for k in range(3) if C[i][k] != 0) for i in range(1, Q)}
    def given(i, load):  # a preloaded population where the pair loaded it, else the load
        return f"(pair_row ? static_cast<{arith}>(pre{i}_{pair}) : {load})" if i in preloaded else load

    pulled = {i: given(i, f"static_cast<{arith}>(fi[{i}u * un + ui + (unsigned int)({offsets[i]})])")
              for i in range(1, Q)}
    if patch:
        for i in range(1, Q):
            a(f"{arith} f{i} = {pulled[i]};")
        # a solid cell stores its own populations (a select at each store below, not a branch here:
        # a branch over the loads kept 22 more registers live, ptxas sm_90)
        a(f"const bool solid = {_solid_test(True)};")
        a(f"if (cell & {K.LINK_MASK}u) {{")
        for i in range(1, Q):
            a(f"    if ((cell >> {i}u) & 1u) f{i} = static_cast<{arith}>(fi[{OPP[i]}u * un + ui]);")
        a("}")
    else:
        if split:
            a(f"{arith} " + ", ".join(f"f{i}" for i in range(1, Q)) + ";")
            a(f"if ((cell & {K.LINK_MASK}u) == 0u) {{")
            for i in range(1, Q):
                a(f"    f{i} = {pulled[i]};")
            a("} else {")
        for i in range(1, Q):
            # one load per direction, no branch between the loads: a boundary link's choice is an offset
            load = given(i, f"static_cast<{arith}>(fi[((cell >> {i}u) & 1u) ? ({OPP[i]}u * un + ui)"
                            f" : ({i}u * un + ui + (unsigned int)({offsets[i]}))])")
            a(f"    f{i} = {load};" if split else f"{arith} f{i} = {load};")
        if split:
            a("}")
    if cfg.moving_walls:
        a(f"if (cell & {K.LINK_MASK}u) {{")
        if not patch:  # the patched loads read it next to the code (_prologue)
            a("    const int ws = wall_slot.data[idx];")
        a("    if (ws >= 0) {")
        a(f"        const {arith}* wt = (const {arith}*)((const char*)wall_term.data"
          " + (size_t)ws * (size_t)wall_term.strides[0]);")
        for i in range(1, Q):
            a(f"        if ((cell >> {i}u) & 1u) f{i} = f{i} + wt[{i}];")
        a("    }")
        a("}")
    if any(shift):
        for i in range(Q):
            a(f"f{i} = f{i} + {lit(W[i])};")
    if cfg.velocity_bc or cfg.pressure_bc or cfg.outflow_bc:
        _open_boundary(cfg, a, moments)
    zero = lit(0.0)
    if dev:
        a(f"const {arith} drho = " + " + ".join(f"f{i}" for i in range(Q)) + ";")
        a(f"const {arith} rho = {lit(1.0)} + drho;")
        a(f"const {arith} inv_rho = {lit(1.0)} / rho;")
    else:
        a(f"const {arith} rho = " + " + ".join(f"f{i}" for i in range(Q)) + ";")
    for k, m in enumerate(("mx", "my", "mz")):
        a(f"const {arith} {m} = " + _signed_sum([(C[i][k], f"f{i}") for i in range(Q)], zero) + ";")
    forced = cfg.force != K.FORCE_NONE
    if forced:
        # Guo, Zheng & Shi (2002): the velocity carries half the force
        a(f"const {arith} Fx = force.c[0];")
        a(f"const {arith} Fy = force.c[1];")
        a(f"const {arith} Fz = force.c[2];")
    by = " * inv_rho" if dev else " / rho"
    for u, m, F in (("ux", "mx", "Fx"), ("uy", "my", "Fy"), ("uz", "mz", "Fz")):
        a(f"const {arith} {u} = ({m} + {lit(0.5)} * {F}){by};" if forced else f"const {arith} {u} = {m}{by};")
    trt = cfg.collision == K.COLLISION_TRT
    if trt:
        # Ginzburg (2008): the odd part relaxes with omega_m fixed by the magic parameter
        a(f"const {arith} omega_m = {lit(1.0)} / ({lit(cfg.trt_magic)} / ({lit(1.0)} / omega - {lit(0.5)}) + {lit(0.5)});")
    else:
        a(f"const {arith} omega_m = omega;")
    if moments:
        # rho and u as the collision sees them, rows 0-3 of mom (step_kernel(moments=True)); not
        # for a solid cell (the patched loads reach here for every cell)
        a(f"{arith}* mrow = mom.data;")
        a(f"const size_t mstride = (size_t)mom.strides[0] / sizeof({arith});")
        pad = ""
        if patch:
            a("if (!solid) {")
            pad = "    "
        a(f"{pad}mrow[ui] = rho;")
        a(f"{pad}mrow[mstride + ui] = ux;")
        a(f"{pad}mrow[2 * mstride + ui] = uy;")
        a(f"{pad}mrow[3 * mstride + ui] = uz;")
        if patch:
            a("}")
    a(f"const {arith} usq = {lit(1.5)} * (ux * ux + uy * uy + uz * uz);")
    if forced:
        a(f"const {arith} guo_even = {lit(1.0)} - {lit(0.5)} * omega;")
        a(f"const {arith} guo_odd = {lit(1.0)} - {lit(0.5)} * omega_m;")
        a(f"const {arith} uF = ux * Fx + uy * Fy + uz * Fz;")
    for i in range(Q):
        cu = _signed_sum([(C[i][0], "ux"), (C[i][1], "uy"), (C[i][2], "uz")], zero)
        store = f"val - {lit(shift[i])}" if shift[i] else "val"
        a("{")
        a(f"    const {arith} cu = {lit(3.0)} * ({cu});")
        if dev:  # feq_i - w_i, as the Warp step writes it
            a(f"    const {arith} feq = {lit(W[i])} * (drho + rho * (cu + {lit(0.5)} * cu * cu - usq));")
        else:
            a(f"    const {arith} wr = {lit(W[i])} * rho;")
            a(f"    const {arith} feq = wr * ({lit(1.0)} + cu + {lit(0.5)} * cu * cu - usq);")
        if trt:
            o = OPP[i]
            if dev:
                a(f"    const {arith} feq_o = {lit(W[i])} * (drho + rho * ({lit(0.5)} * cu * cu - usq - cu));")
            else:
                a(f"    const {arith} feq_o = wr * ({lit(1.0)} - cu + {lit(0.5)} * cu * cu - usq);")
            a(f"    {arith} val = f{i} - omega * {lit(0.5)} * ((f{i} + f{o}) - (feq + feq_o))"
              f" - omega_m * {lit(0.5)} * ((f{i} - f{o}) - (feq - feq_o));")
        else:
            a(f"    {arith} val = f{i} + omega * (feq - f{i});")
        if forced:
            cf = _signed_sum([(C[i][0], "Fx"), (C[i][1], "Fy"), (C[i][2], "Fz")], zero)
            a(f"    const {arith} cf = {cf};")
            a(f"    val = val + {lit(W[i])} * (guo_odd * {lit(3.0)} * cf"
              f" + guo_even * (cu * {lit(3.0)} * cf - {lit(3.0)} * uF));")
        value = f"{stor}({store})"
        if patch:
            value = f"(solid ? fi[{i}u * un + ui] : {value})"
        if pair is None:
            a(f"    fo[{i}u * un + ui] = {value};")
        else:
            a(f"    o{i}_{pair} = {value};")
        a("}")
    if pair is not None and not patch:
        a("}")  # the else of the solid-cell test
    return "\n".join(lines)


def lean_wrap(cfg: K.StepConfig, body, cells: int) -> str:
    """C++ that runs ``body(True)`` (compiled for cells with code 0: no code read, no link choice, no
    solid or moving-wall test) where no cell of the thread can have a code (:func:`_coded_test`) and
    ``body(False)`` elsewhere. On CUDA the choice is one per warp (a vote over the active lanes), so a
    warp runs one of the two bodies, never both; ``cells``: the thread's cells, from ``idx``."""
    lines = ["bool lean_cells = true;"]
    a = lines.append
    for h in range(cells):
        a("{")
        _coordinates(a, f"(idx + {h})", pad="    ")
        a(f"    lean_cells = lean_cells && !({_coded_test(cfg, 'x', 'y', 'z')});")
        a("}")
    a("#if defined(__CUDA_ARCH__)")
    a("const bool lean_warp = __all_sync(__activemask(), lean_cells);")
    a("#else")
    a("const bool lean_warp = lean_cells;")
    a("#endif")
    a("if (lean_warp) {")
    lines += body(True).splitlines()
    a("} else {")
    lines += body(False).splitlines()
    a("}")
    return "\n".join(lines)


def pair_body(cfg: K.StepConfig, moments: bool = False, split: bool = False, joint: bool = False,
              patch: bool = False, lean: bool = False) -> str:
    """C++ of the forward update of cells idx and idx + 1 (idx even): each cell's body as
    :func:`cell_body`, then every population of the two stored as one 4-byte (float16) or 8-byte
    (float32) word (one store instruction per population and pair instead of two).

    ``joint``: where nz is even (the two cells then share x and y), the populations with c_z = 0 of
    both cells are loaded first, as one word where neither cell has that link (the same values as
    the cells' own loads); with an odd nz each cell loads its own. ``patch``: each cell's loads as
    :func:`cell_body`'s ``patch`` (the joint words are then loaded whatever the cells' links).
    ``lean``: two cells known to have code 0 (:func:`lean_wrap`)."""
    ph = K.physics(cfg.lattice, cfg.precision)
    Q, C, OPP = ph["Q"], ph["C"], ph["OPP"]
    stor = {"float16": "wp::float16", "float32": "wp::float32"}[cfg.precision]
    size = {"float16": 2, "float32": 4}[cfg.precision]
    lines = [f"struct alignas({2 * size}) stor_pair {{ {stor} lo, hi; }};",
             f"{stor} " + ", ".join(f"o{i}_0, o{i}_1" for i in range(Q)) + ";",
             "const int idx_pair = idx;"]
    preloaded = frozenset(i for i in range(1, Q) if C[i][2] == 0) if joint else frozenset()
    if joint:
        a = lines.append
        a(f"{stor} " + ", ".join(f"pre{i}_0, pre{i}_1" for i in sorted(preloaded)) + ";")
        a("const bool pair_row = (nz & 1) == 0;")
        a("if (pair_row) {")
        _coordinates(a, "idx_pair", pad="    ")
        a(f"    const {stor}* __restrict__ fi = f_in.data;")
        if not patch:
            a("    unsigned int cell0 = 0u, cell1 = 0u;")
            if not lean:
                for h, z in ((0, "z"), (1, "(z + 1)")):
                    a(f"    if ({_coded_test(cfg, 'x', 'y', z)}) cell{h} = face_coded ? ({_face_code(cfg, 'x', 'y', z)})"
                      f" : code.data[idx_pair + {h}];")
        _neighbour_offsets(a, "xy", pad="    ")
        for i in sorted(preloaded):
            d = " + ".join(_SOURCE[(k, C[i][k])] for k in range(2) if C[i][k] != 0)
            # the element offset summed in 32 bits first (the wrapped neighbour offsets are negative)
            word = (f"const stor_pair w = *(const stor_pair*)(fi + ({i}u * un + ui + (unsigned int)({d})));",
                    f"pre{i}_0 = w.lo; pre{i}_1 = w.hi;")
            if patch:  # the cells patch their links themselves
                a(f"    {{ {word[0]}")
                a(f"      {word[1]} }}")
                continue
            a(f"    if ((((cell0 | cell1) >> {i}u) & 1u) == 0u) {{")
            a(f"        {word[0]}")
            a(f"        {word[1]}")
            a("    } else {")
            for h in (0, 1):
                a(f"        pre{i}_{h} = fi[((cell{h} >> {i}u) & 1u) ? ({OPP[i]}u * un + ui + {h}u)"
                  f" : ({i}u * un + ui + {h}u + (unsigned int)({d}))];")
            a("    }")
        a("}")
    for h in (0, 1):
        lines += ["{", f"const int idx = idx_pair + {h};"]
        lines += cell_body(cfg, moments, pair=h, split=split, preloaded=preloaded, patch=patch,
                           lean=lean).splitlines()
        lines.append("}")
    lines += [f"{stor}* __restrict__ fo_pair = f_out.data;",
              "const unsigned int un_pair = (unsigned int)(nx * ny * nz);"]
    for i in range(Q):
        lines.append(f"*(stor_pair*)(fo_pair + {i}u * un_pair + (unsigned int)idx_pair) = stor_pair{{o{i}_0, o{i}_1}};")
    return "\n".join(lines)


@lru_cache(maxsize=None)
def native_step_kernel(cfg: K.StepConfig, moments: bool = False, ranged: bool = False,
                       max_registers: int | None = None, form: str = "one", constants: tuple | None = None):
    """The forward step kernel for ``cfg`` with a native per-cell body; ``moments=True`` also stores
    each fluid cell's (rho, u_x, u_y, u_z) into rows 0-3 of ``mom`` (as ``step_kernel(cfg,
    backward=False, moments=True)``: the gradient's moments replay); ``ranged=True`` updates cells
    ``base .. base + dim - 1`` of a launch of ``dim`` threads (as ``step_kernel(ranged=True)``:
    :meth:`Solver.step_cells`, the slabs' overlapped steps).

    Its inputs are those of ``step_kernel(cfg, backward=False)`` followed by :func:`extra_inputs`
    (the magic numbers of nz and ny, the coded box); without ``ranged`` the launch covers every
    cell. ``max_registers`` caps CUDA registers per thread (benchmarks only; the library launches the
    uncapped kernel). ``form``: ``"one"`` cell per thread, ``"split"`` (cells without links load
    without the per-link offset choice), ``"pairs"`` / ``"pairs_split"`` (two cells per thread,
    :func:`pair_body`: launch ``cells / 2`` threads; see :func:`pairs_unsupported`), and
    ``"pairs_joint"`` / ``"pairs_joint_split"`` (pairs that load the c_z = 0 populations of both cells
    as one word; the input must then be aligned to a pair's word too, as for every ``pairs_joint_*``
    form), and ``"patch"`` /
    ``"pairs_patch"`` / ``"pairs_joint_patch"`` (every population loaded from its neighbour before
    the cell code is known, the links patched after: :func:`cell_body`'s ``patch``), ``"lean"`` /
    ``"pairs_lean"`` / ``"pairs_joint_lean"`` (a warp none of whose cells can have a code runs the
    body compiled for code 0: :func:`lean_wrap`); every form stores the same bits. ``constants``:
    ``(nx, ny, nz)`` followed by :func:`extra_inputs`' values;
    the body then uses them as compile-time constants instead of the launch's (a kernel per grid
    and coded box: :func:`grid_constants`). Raises ValueError when :func:`native_step_unsupported`
    gives a reason.
    """
    reason = native_step_unsupported(cfg, 0)
    if reason is not None:
        raise ValueError(f"the native step does not support this configuration: {reason}")
    pairs, joint, kind = _form_parts(form)
    if pairs:
        reason = pairs_unsupported(cfg, 2, ranged)
        if reason is not None:
            raise ValueError(f"form={form!r} does not support this configuration: {reason}")
    if kind == "lean":
        body = lean_wrap(cfg, lambda lean: (pair_body(cfg, moments, joint=joint, lean=lean) if pairs
                                            else cell_body(cfg, moments, lean=lean)), 2 if pairs else 1)
    else:
        split, patch = kind == "split", kind == "patch"
        body = (pair_body(cfg, moments, split=split, joint=joint, patch=patch) if pairs
                else cell_body(cfg, moments, split=split, patch=patch))
    if constants is not None:
        # the same names as the arguments, declared in a block around the body (which shadows them)
        # (any_solid and face_coded are no arguments: without constants they are 1 and 0)
        names = CONSTANT_NAMES
        if len(constants) != len(names) or not all(isinstance(v, int) and v >= 0 for v in constants):
            raise ValueError(f"constants={constants!r}: {len(names)} non-negative integers ({', '.join(names)})")
        for n, v in zip(names[-2:], constants[-2:]):
            if v not in (0, 1):
                raise ValueError(f"constants={constants!r}: {n} must be 0 or 1, not {v}")
        decl = [f"const unsigned int {n} = {v}u;" if n.startswith("magic") else f"const int {n} = {v};"
                for n, v in zip(names, constants)]
        body = "{\n" + "\n".join(decl) + "\n" + body + "\n}"
    else:
        body = "{\nconst int any_solid = 1;\nconst int face_coded = 0;\n" + body + "\n}"
    dtype = K.wp_dtype(cfg.precision)
    sdtype = K.storage_dtype(cfg.precision)
    vec3 = K.physics(cfg.lattice, cfg.precision)["vec3"]

    @wp.func_native(body)
    def lbm_cell_update(f_in: wp.array2d(dtype=sdtype), f_out: wp.array2d(dtype=sdtype),
                        code: wp.array(dtype=wp.uint32), wall_slot: wp.array(dtype=wp.int32),
                        wall_term: wp.array2d(dtype=dtype), omega: dtype, force: vec3, mom: wp.array2d(dtype=dtype),
                        slot: wp.array(dtype=wp.int32), inlet_velocity: wp.array(dtype=vec3),
                        outlet_density: wp.array(dtype=dtype),
                        idx: int, nx: int, ny: int, nz: int, magic_z: wp.uint32, shift_z: int, magic_y: wp.uint32, shift_y: int,
                        box_x0: int, box_nx: int, box_y0: int, box_ny: int, box_z0: int, box_nz: int):
        ...

    @wp.kernel(enable_backward=False, module="unique", module_options=K.MODULE_OPTIONS,
               cuda_max_registers=max_registers)
    def lbm_step_native(
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
        magic_z: wp.uint32,
        shift_z: int,
        magic_y: wp.uint32,
        shift_y: int,
        box_x0: int,
        box_nx: int,
        box_y0: int,
        box_ny: int,
        box_z0: int,
        box_nz: int,
    ):
        idx = wp.tid()
        if wp.static(ranged):
            idx = idx + base
        if wp.static(pairs):
            idx = idx * 2
        omega = omega_arr[0]
        if wp.static(cfg.omega_field):
            omega = omega_arr[idx]
        force = vec3()
        if wp.static(cfg.force == K.FORCE_UNIFORM):
            force = force_arr[0]
        if wp.static(cfg.force == K.FORCE_FIELD):
            force = force_arr[idx]
        lbm_cell_update(f_in, f_out, code, wall_slot, wall_term, omega, force, mom, slot, inlet_velocity,
                        outlet_density, idx, nx, ny, nz,
                        magic_z, shift_z, magic_y, shift_y, box_x0, box_nx, box_y0, box_ny, box_z0, box_nz)

    lbm_step_native.difflbm_native = True
    lbm_step_native.difflbm_variant = dict(moments=moments, ranged=ranged)
    lbm_step_native.difflbm_cells_per_thread = 2 if pairs else 1
    lbm_step_native.difflbm_form = form
    lbm_step_native.difflbm_constants = constants
    lbm_step_native.difflbm_max_registers = max_registers
    return lbm_step_native


def native_adjoint_unsupported(cfg: K.StepConfig, cell_count: int, pull_in: bool, push_out: bool) -> str | None:
    """Why :func:`native_moments_adjoint_kernel` cannot stand in for ``step_adjoint_kernel(cfg,
    omega_grad=False, moments=True, pull_in=pull_in, push_out=push_out)``, or None when it can."""
    reason = native_step_unsupported(cfg, cell_count)
    if reason is not None:
        return reason
    if push_out:
        return "push_out=True (the native adjoint writes the gathered form)"
    if cfg.collision != K.COLLISION_BGK:
        # the TRT form was bit-identical on the CPU but not on an H200 (last bits of some outputs,
        # tenth session): the GPU compiler contracted its products differently; it stays generated
        return f"collision={cfg.collision!r} (the native adjoint is BGK only)"
    if cfg.velocity_bc or cfg.pressure_bc or cfg.outflow_bc:
        return "open boundaries"
    if cfg.force != K.FORCE_NONE:
        return "a body force"
    return None


def native_adjoint_used(cfg: K.StepConfig, cell_count: int, pull_in: bool, push_out: bool) -> bool:
    """Whether the gradient runs that moments adjoint natively: switched on, the native step on
    (the native adjoint covers a subset of its configurations) and the configuration covered."""
    return (native_adjoint_enabled() and native_step_enabled()
            and native_adjoint_unsupported(cfg, cell_count, pull_in, push_out) is None)


def adjoint_body(cfg: K.StepConfig, pull_in: bool) -> str:
    """C++ of one cell of the moments adjoint that writes the gathered form: the operations of
    ``step_adjoint_kernel(cfg, omega_grad=False, force_grad=False, moments=True, pull_in=pull_in,
    push_out=False)`` in its order (BGK, walls, moving walls; no force)."""
    if cfg.collision != K.COLLISION_BGK or cfg.force != K.FORCE_NONE:
        raise ValueError(f"the native adjoint body is BGK without a body force, not collision={cfg.collision!r}, "
                         f"force={cfg.force!r}")
    ph = K.physics(cfg.lattice, cfg.precision)
    Q, C, W, OPP = ph["Q"], ph["C"], ph["W"], ph["OPP"]
    arith = "float"
    lit = lambda v: _literal(v, arith)  # noqa: E731
    zero = lit(0.0)
    lines = []
    a = lines.append
    _prologue(cfg, a, "adj_out", "adj_in", arith)
    # BGK: the generated kernel's TRT coefficients with omega_m = omega (coef_b = 0 is not used)
    a(f"const {arith} coef_a = {lit(0.5)} * (omega + omega);")
    a(f"const {arith} keep = {lit(1.0)} - coef_a;")
    a(f"const {arith}* mrow = mom.data;")
    a(f"const size_t mstride = (size_t)mom.strides[0] / sizeof({arith});")
    a(f"{arith} rho = mrow[ui];")
    a(f"const {arith} ux = mrow[mstride + ui];")
    a(f"const {arith} uy = mrow[2 * mstride + ui];")
    a(f"const {arith} uz = mrow[3 * mstride + ui];")
    a(f"const {arith} a0 = fi[ui];")
    for i in range(1, Q):
        if pull_in:
            # population i here, from the gathered form: direction opp(i) here where that link is a
            # wall, else direction i at the neighbour x + c_i
            d = " + ".join(_SOURCE[(k, -C[i][k])] for k in range(3) if C[i][k] != 0)
            a(f"const {arith} a{i} = fi[((cell >> {OPP[i]}u) & 1u) ? ({OPP[i]}u * un + ui)"
              f" : ({i}u * un + ui + (unsigned int)({d}))];")
        else:
            a(f"const {arith} a{i} = fi[{i}u * un + ui];")
    # as the generated kernel: rho depends (by 0 x their sum) on every adjoint load
    a(f"const {arith} sav = " + " + ".join(f"a{i}" for i in range(Q)) + ";")
    a(f"rho = rho + sav * {zero};")
    a(f"const {arith} usq = {lit(1.5)} * (ux * ux + uy * uy + uz * uz);")
    a(f"{arith} adj_rho = {zero};")
    a(f"{arith} aux = {zero};")
    a(f"{arith} auy = {zero};")
    a(f"{arith} auz = {zero};")
    for i in range(Q):
        # c_i . u as Warp's dot writes it (zero components as 0 * u_k): with the zero terms left out,
        # 3 cu of an axis direction would be the same product as the 3 u_k below, which the compiler
        # could then share and fuse differently on the GPU (review, ninth session)
        cu = " + ".join({1: u, -1: f"(-{u})", 0: f"{zero} * {u}"}[C[i][k]] for k, u in enumerate(("ux", "uy", "uz")))
        a("{")
        a(f"    const {arith} cu = {cu};")
        a(f"    const {arith} wr = {lit(W[i])} * rho;")
        a(f"    const {arith} feq = wr * ({lit(1.0)} + {lit(3.0)} * cu + {lit(4.5)} * cu * cu - usq);")
        a(f"    const {arith} ae = coef_a * a{i};")
        a("    adj_rho = adj_rho + ae * feq / rho;")
        a(f"    const {arith} aw = ae * wr;")
        for comp, u_k, c_k in (("aux", "ux", C[i][0]), ("auy", "uy", C[i][1]), ("auz", "uz", C[i][2])):
            # (3 c_k + 9 cu c_k) - 3 u_k, with 9 cu c_k as +-(9 cu) or 0 * (9 cu) like the generated code
            nine = f"{lit(9.0)} * cu"
            term = {1: f"({lit(3.0)} + {nine})", -1: f"({lit(-3.0)} - {nine})", 0: f"({zero} + {nine} * {zero})"}[c_k]
            a(f"    {comp} = {comp} + aw * ({term} - {lit(3.0)} * {u_k});")
        a("}")
    a(f"const {arith} amx = aux / rho;")
    a(f"const {arith} amy = auy / rho;")
    a(f"const {arith} amz = auz / rho;")
    a("adj_rho = adj_rho - (aux * ux + auy * uy + auz * uz) / rho;")
    if cfg.moving_walls:
        a("int ws = -1;")
        a(f"if (want_wall != 0 && (cell & {K.LINK_MASK}u)) ws = wall_slot.data[idx];")
        a(f"{arith}* wt = (ws >= 0) ? ({arith}*)((char*)adj_wall_term.data + (size_t)ws * (size_t)adj_wall_term.strides[0]) : nullptr;")
    for i in range(Q):
        cm = _signed_sum([(C[i][0], "amx"), (C[i][1], "amy"), (C[i][2], "amz")], zero)
        a("{")
        a(f"    {arith} g = keep * a{i} + adj_rho + ({cm});")
        a(f"    fo[{i}u * un + ui] = g;")
        if cfg.moving_walls and i > 0:
            a(f"    if (wt != nullptr && ((cell >> {i}u) & 1u)) wt[{i}] = wt[{i}] + g;")
        a("}")
    return "\n".join(lines)


@lru_cache(maxsize=None)
def native_moments_adjoint_kernel(cfg: K.StepConfig, pull_in: bool, max_registers: int | None = None):
    """The moments adjoint writing the gathered form with a native per-cell body: the same inputs as
    ``step_adjoint_kernel(cfg, omega_grad=False, force_grad=False, moments=True, pull_in=pull_in,
    push_out=False)`` followed by :func:`extra_inputs`. Raises ValueError where
    :func:`native_adjoint_unsupported` gives a reason."""
    reason = native_adjoint_unsupported(cfg, 0, pull_in, False)
    if reason is not None:
        raise ValueError(f"the native adjoint does not support this configuration: {reason}")
    dtype = K.wp_dtype(cfg.precision)
    sdtype = K.storage_dtype(cfg.precision)
    vec3 = K.physics(cfg.lattice, cfg.precision)["vec3"]

    @wp.func_native(adjoint_body(cfg, pull_in))
    def lbm_cell_adjoint(adj_out: wp.array2d(dtype=dtype), adj_in: wp.array2d(dtype=dtype),
                         code: wp.array(dtype=wp.uint32), wall_slot: wp.array(dtype=wp.int32),
                         adj_wall_term: wp.array2d(dtype=dtype), want_wall: int, omega: dtype,
                         mom: wp.array2d(dtype=dtype), idx: int, nx: int, ny: int, nz: int,
                         magic_z: wp.uint32, shift_z: int, magic_y: wp.uint32, shift_y: int,
                         box_x0: int, box_nx: int, box_y0: int, box_ny: int, box_z0: int, box_nz: int):
        ...

    @wp.kernel(enable_backward=False, module="unique", module_options=K.MODULE_OPTIONS,
               cuda_max_registers=max_registers)
    def lbm_moments_adjoint_native(
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
        magic_z: wp.uint32,
        shift_z: int,
        magic_y: wp.uint32,
        shift_y: int,
        box_x0: int,
        box_nx: int,
        box_y0: int,
        box_ny: int,
        box_z0: int,
        box_nz: int,
    ):
        idx = wp.tid()
        omega = omega_arr[0]
        if wp.static(cfg.omega_field):
            omega = omega_arr[idx]
        lbm_cell_adjoint(adj_out, adj_in, code, wall_slot, adj_wall_term, want_wall, omega, mom, idx, nx, ny, nz,
                         magic_z, shift_z, magic_y, shift_y, box_x0, box_nx, box_y0, box_ny, box_z0, box_nz)

    lbm_moments_adjoint_native.difflbm_native = True
    lbm_moments_adjoint_native.difflbm_ranged = False
    return lbm_moments_adjoint_native
