"""Solid obstacles from closed triangle meshes, voxelized on the device.

:func:`voxelize_mesh` marks the cells of a 3D grid whose centres lie inside a closed triangle mesh;
the result is a bool array for ``Wall(mask=...)``. :func:`load_mesh` reads STL (ASCII or binary)
and OBJ files into ``(vertices, triangles)`` arrays.

Meshes are 3D only: a 2D problem has no third coordinate to place cell centres in a mesh. For a
2D cross-section, voxelize a grid of shape (nx, ny, 1) and take ``mask[:, :, 0]``.
"""

from __future__ import annotations

import numbers
import os

import numpy as np
import warp as wp

from .problem import resolve_device

__all__ = ["voxelize_mesh", "load_mesh"]


@wp.kernel(enable_backward=False)
def _inside_kernel(mesh: wp.uint64, origin: wp.vec3, spacing: wp.vec3, max_dist: float,
                   inside: wp.array3d(dtype=wp.uint8)):
    i, j, k = wp.tid()
    p = wp.vec3(origin[0] + (float(i) + 0.5) * spacing[0],
                origin[1] + (float(j) + 0.5) * spacing[1],
                origin[2] + (float(k) + 0.5) * spacing[2])
    # The generalized winding number classifies a point by the solid angle the whole surface subtends
    # at it, so it stays correct far from the surface and for meshes with small gaps or flipped
    # duplicates, where the closest-face normal or ray parity can misclassify.
    q = wp.mesh_query_point_sign_winding_number(mesh, p, max_dist)
    if q.result and q.sign < 0.0:
        inside[i, j, k] = wp.uint8(1)


def _vector3(value, name: str, positive: bool) -> np.ndarray:
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        arr = np.full(3, float(value))
    else:
        try:
            arr = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"{name}={value!r} must be a number or 3 numbers") from None
        if arr.shape != (3,):
            raise ValueError(f"{name}={value!r} has shape {arr.shape}; allowed: {'a number or ' * positive}3 numbers")
    if not np.all(np.isfinite(arr)) or (positive and np.any(arr <= 0)):
        allowed = "finite positive numbers" if positive else "finite numbers"
        raise ValueError(f"{name}={value!r} is not allowed; allowed: {allowed}")
    return arr


def _check_mesh(vertices, triangles) -> tuple[np.ndarray, np.ndarray]:
    try:
        v = np.asarray(vertices, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"vertices of type {type(vertices).__name__} are not numeric; "
                         "allowed: (V, 3) floats") from None
    if v.ndim != 2 or v.shape[1] != 3 or v.shape[0] < 3:
        raise ValueError(f"vertices has shape {v.shape}; allowed: (V, 3) with V >= 3")
    bad = ~np.all(np.isfinite(v), axis=1)
    if np.any(bad):
        n = int(np.flatnonzero(bad)[0])
        raise ValueError(f"vertices[{n}]={v[n].tolist()} is not finite; allowed: finite coordinates")
    t = np.asarray(triangles)
    if t.ndim != 2 or t.shape[1] != 3 or t.shape[0] < 1:
        raise ValueError(f"triangles has shape {t.shape}; allowed: (T, 3) with T >= 1")
    if not np.issubdtype(t.dtype, np.integer):
        raise ValueError(f"triangles has dtype {t.dtype}; allowed: integer vertex indices")
    out = (t < 0) | (t >= len(v))
    if np.any(out):
        n, c = (int(x) for x in np.argwhere(out)[0])
        raise ValueError(f"triangles[{n}, {c}]={int(t[n, c])} is out of range; allowed: 0 <= index < {len(v)} "
                         "(the number of vertices)")
    return v, t.astype(np.int32)


def voxelize_mesh(vertices, triangles, shape, origin=(0.0, 0.0, 0.0), spacing=1.0, device=None) -> np.ndarray:
    """Bool mask of the cells of a 3D grid whose centres lie inside a closed triangle mesh.

    Cell (i, j, k) has its centre at ``origin + (index + 0.5) * spacing`` in mesh coordinates;
    ``spacing`` is a number or one per axis. ``vertices`` has shape (V, 3), ``triangles`` (T, 3)
    integer indices into ``vertices``. Inside/outside comes from the generalized winding number
    (threshold 1/2), so the mesh should be closed with consistently wound triangles; inward-facing
    meshes (negative enclosed volume) are flipped first, so either orientation works. The query
    runs in float32 on ``device`` (default: CUDA when present, else the CPU). Use the result as
    ``Wall(mask=...)`` on a problem of the same shape.

    Raises ``ValueError`` for a 2D shape: meshes are 3D only (voxelize shape (nx, ny, 1) and slice
    for a cross-section).
    """
    try:
        shape = tuple(int(s) for s in shape)
    except (TypeError, ValueError):
        raise ValueError(f"shape={shape!r} must be 3 positive integers") from None
    if len(shape) == 2:
        raise ValueError(f"shape={shape} is 2D; meshes are 3D only: voxelize shape {shape + (1,)} and take "
                         "mask[:, :, 0] for a cross-section")
    if len(shape) != 3 or any(s < 1 for s in shape):
        raise ValueError(f"shape={shape} is not allowed; allowed: 3 positive integers")
    origin = _vector3(origin, "origin", positive=False)
    spacing = _vector3(spacing, "spacing", positive=True)
    v, t = _check_mesh(vertices, triangles)
    dev = resolve_device(device)
    # With inward-facing triangles the winding number is -1 inside and nothing would count as
    # inside; the sign of the enclosed volume (divergence theorem, about the centroid to limit
    # round-off) tells the orientation of a closed mesh.
    a, b, c = (v[t[:, n]] - v.mean(0) for n in range(3))
    if np.einsum("ij,ij->", a, np.cross(b, c)) < 0.0:
        t = t[:, ::-1].copy()

    # Sign classification covers the whole mesh, but the query only reports a result when some face
    # is closer than max_dist; a bound beyond the farthest grid corner from any vertex is always met.
    corners = np.stack([origin, origin + np.asarray(shape) * spacing])
    lo, hi = np.minimum(v.min(0), corners.min(0)), np.maximum(v.max(0), corners.max(0))
    max_dist = float(2.0 * np.linalg.norm(hi - lo) + 1.0)

    points = wp.array(v.astype(np.float32), dtype=wp.vec3, device=dev)
    indices = wp.array(t.ravel(), dtype=wp.int32, device=dev)
    mesh = wp.Mesh(points=points, indices=indices, support_winding_number=True)
    inside = wp.zeros(shape, dtype=wp.uint8, device=dev)
    wp.launch(_inside_kernel, dim=shape, device=dev,
              inputs=[mesh.id, wp.vec3(*origin.astype(np.float32)), wp.vec3(*spacing.astype(np.float32)),
                      max_dist, inside])
    return inside.numpy().astype(bool)


def _read_obj(path: str) -> tuple[np.ndarray, np.ndarray]:
    # Fallback when trimesh is missing: ASCII OBJ only; polygons are fanned into triangles, and
    # texture/normal indices ("v/vt/vn") and negative (relative) indices are understood.
    verts, tris = [], []
    with open(path, encoding="utf-8", errors="replace") as fh:
        for lineno, line in enumerate(fh, 1):
            parts = line.split("#", 1)[0].split()
            if not parts:
                continue
            if parts[0] == "v":
                try:
                    verts.append([float(x) for x in parts[1:4]])
                except ValueError:
                    raise ValueError(f"{path}:{lineno}: vertex line {line.strip()!r} is not numeric") from None
            elif parts[0] == "f":
                try:
                    idx = [int(p.split("/")[0]) for p in parts[1:]]
                except ValueError:
                    raise ValueError(f"{path}:{lineno}: face line {line.strip()!r} is not integer indices") from None
                if len(idx) < 3:
                    raise ValueError(f"{path}:{lineno}: a face needs at least 3 vertices; got {len(idx)}")
                idx = [i - 1 if i > 0 else len(verts) + i for i in idx]
                tris.extend([idx[0], idx[n], idx[n + 1]] for n in range(1, len(idx) - 1))
    return np.asarray(verts, dtype=np.float64).reshape(-1, 3), np.asarray(tris, dtype=np.int64).reshape(-1, 3)


def load_mesh(path) -> tuple[np.ndarray, np.ndarray]:
    """Read a triangle mesh: returns ``(vertices, triangles)``, float64 (V, 3) and int64 (T, 3).

    STL (ASCII and binary) and OBJ are read with the ``trimesh`` package (``pip install trimesh``),
    which also merges the duplicated corners of STL files so the surface is connected. Without
    trimesh only ASCII OBJ can be read. Checked like the inputs of :func:`voxelize_mesh`.
    """
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".stl", ".obj"):
        raise ValueError(f"path={path!r} has extension {ext!r}; allowed: .stl, .obj")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"path={path!r} does not exist")
    try:
        import trimesh
    except ImportError:
        if ext != ".obj":
            raise ImportError(f"reading {ext} files needs trimesh (pip install trimesh); "
                              "without it only ASCII .obj is supported") from None
        v, t = _read_obj(path)
    else:
        # force="mesh" flattens multi-object files into one mesh; the solid is their union.
        m = trimesh.load(path, force="mesh", process=True)
        v, t = np.asarray(m.vertices, dtype=np.float64), np.asarray(m.faces, dtype=np.int64)
    v, t = _check_mesh(v, t)
    return v, t.astype(np.int64)
