"""Mesh voxelization on the device: exact and statistical checks, orientation, file round trips, bad input."""

import struct
import sys

import numpy as np
import pytest

import difflbm as lbm
from difflbm.geometry import load_mesh, voxelize_mesh

RADIUS = 10.0
# A generic offset keeps the sphere's centre off the lattice's symmetry points, so boundary-cell
# errors do not come in symmetric groups that would all round the same way.
OFFSET = np.array([0.31, 0.17, 0.43])
SHAPE = (24, 24, 24)


def _cube(lo=0.0, hi=1.0):
    v = np.array([[x, y, z] for x in (lo, hi) for y in (lo, hi) for z in (lo, hi)], dtype=np.float64)
    # Index = 4x + 2y + z; each face split in two, wound counter-clockwise seen from outside.
    quads = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
    t = [[a, b, c] for a, b, c, d in quads] + [[a, c, d] for a, b, c, d in quads]
    return v, np.array(t)


def _icosphere(subdivisions=3, radius=RADIUS):
    g = (1 + 5 ** 0.5) / 2
    v = [(-1, g, 0), (1, g, 0), (-1, -g, 0), (1, -g, 0), (0, -1, g), (0, 1, g), (0, -1, -g), (0, 1, -g),
         (g, 0, -1), (g, 0, 1), (-g, 0, -1), (-g, 0, 1)]
    v = [np.array(p, dtype=np.float64) / np.linalg.norm(p) for p in v]
    faces = [(0, 11, 5), (0, 5, 1), (0, 1, 7), (0, 7, 10), (0, 10, 11), (1, 5, 9), (5, 11, 4), (11, 10, 2),
             (10, 7, 6), (7, 1, 8), (3, 9, 4), (3, 4, 2), (3, 2, 6), (3, 6, 8), (3, 8, 9), (4, 9, 5),
             (2, 4, 11), (6, 2, 10), (8, 6, 7), (9, 8, 1)]
    for _ in range(subdivisions):
        cache, new = {}, []

        def mid(a, b):
            key = (min(a, b), max(a, b))
            if key not in cache:
                m = v[a] + v[b]
                v.append(m / np.linalg.norm(m))
                cache[key] = len(v) - 1
            return cache[key]

        for a, b, c in faces:
            ab, bc, ca = mid(a, b), mid(b, c), mid(c, a)
            new += [(a, ab, ca), (b, bc, ab), (c, ca, bc), (ab, bc, ca)]
        faces = new
    v = np.array(v) * radius
    t = np.array(faces)
    # Orient every face outward (the body is convex about the origin), independent of the table above.
    n = np.cross(v[t[:, 1]] - v[t[:, 0]], v[t[:, 2]] - v[t[:, 0]])
    flip = np.einsum("ij,ij->i", n, v[t].mean(1)) < 0
    t[flip] = t[flip][:, ::-1]
    return v, t


def _centres(shape, origin, spacing):
    return np.stack(np.meshgrid(*[origin[a] + (np.arange(shape[a]) + 0.5) * spacing for a in range(3)],
                                indexing="ij"), axis=-1)


def _polyhedron_volume(v, t):
    return float(np.einsum("ij,ij->", v[t[:, 0]], np.cross(v[t[:, 1]], v[t[:, 2]]))) / 6.0


def test_cube_count_is_exact():
    """A unit cube at spacing 1/16 with faces half a cell from the centres covers exactly 16^3 cells."""
    v, t = _cube()
    h = 1.0 / 16
    mask = voxelize_mesh(v, t, (24, 24, 24), origin=(-0.25, -0.25, -0.25), spacing=h, device="cpu")
    expected = np.zeros((24, 24, 24), dtype=bool)
    expected[4:20, 4:20, 4:20] = True
    assert mask.dtype == np.bool_ and mask.shape == (24, 24, 24)
    assert mask.sum() * h ** 3 == pytest.approx(1.0, abs=0.0)
    np.testing.assert_array_equal(mask, expected)


def test_icosphere_matches_halfspaces_and_volume():
    """An icosphere's mask equals the convex half-space test cell for cell, and its count is the
    polyhedron's volume within 1.5 %, while cells far inside are True and far outside False."""
    v, t = _icosphere()
    origin = -np.array(SHAPE) / 2 + OFFSET
    mask = voxelize_mesh(v, t, SHAPE, origin=origin, device="cpu")
    p = _centres(SHAPE, origin, 1.0)
    n = np.cross(v[t[:, 1]] - v[t[:, 0]], v[t[:, 2]] - v[t[:, 0]])
    n /= np.linalg.norm(n, axis=1, keepdims=True)
    # Signed distance to each face plane; inside a convex body means behind every plane.
    d = (p.reshape(-1, 1, 3) @ n.T).reshape(p.shape[:3] + (-1,)) - np.einsum("ij,ij->i", n, v[t[:, 0]])
    reference = np.all(d < 0, axis=-1)
    # The kernel works in float32; centres within 1e-4 of the surface may go either way.
    sure = np.abs(d.max(-1)) > 1e-4
    np.testing.assert_array_equal(mask[sure], reference[sure])
    # Only cells cut by the surface can differ from the volume, about 4 pi R^2 = 1257 of them; with
    # an error of +-1/2 cell each, roughly independent, the standard deviation is sqrt(1257 / 12),
    # about 10 cells (0.25 %). 1.5 % is six of those, and well below a systematic one-layer shift
    # (1257 cells, 30 %), which would mean a wrong half-cell offset of the centres.
    volume = _polyhedron_volume(v, t)
    assert abs(mask.sum() - volume) <= 0.015 * volume
    r = np.linalg.norm(p, axis=-1)
    assert mask[r < RADIUS - 2].all() and not mask[r > RADIUS + 2].any()


def test_inward_orientation_gives_same_mask():
    """Reversing every triangle (inward normals) leaves the mask unchanged."""
    v, t = _icosphere(2)
    origin = -np.array(SHAPE) / 2 + OFFSET
    a = voxelize_mesh(v, t, SHAPE, origin=origin, device="cpu")
    b = voxelize_mesh(v, t[:, ::-1], SHAPE, origin=origin, device="cpu")
    assert a.sum() > 0
    np.testing.assert_array_equal(a, b)


def test_mask_is_a_wall():
    """The mask (anisotropic spacing) is accepted by Wall(mask=...) and becomes the problem's solid cells."""
    v, t = _icosphere(2, radius=3.0)
    shape = (12, 10, 8)
    spacing = (1.0, 0.8, 1.1)
    origin = -np.array(shape) * spacing / 2 + 0.1
    mask = voxelize_mesh(v, t, shape, origin=origin, spacing=spacing, device="cpu")
    p = lbm.Problem(shape, "D3Q19", device="cpu", boundaries=[lbm.Wall(mask=mask)])
    np.testing.assert_array_equal(p.solid, mask)
    assert 0 < mask.sum() < mask.size


def _write_ascii_stl(path, v, t):
    with open(path, "w") as fh:
        fh.write("solid test\n")
        for tri in t:
            a, b, c = v[tri]
            n = np.cross(b - a, c - a)
            fh.write(f" facet normal {n[0]:.9g} {n[1]:.9g} {n[2]:.9g}\n  outer loop\n")
            for p in (a, b, c):
                fh.write(f"   vertex {p[0]:.9g} {p[1]:.9g} {p[2]:.9g}\n")
            fh.write("  endloop\n endfacet\n")
        fh.write("endsolid test\n")


def _write_binary_stl(path, v, t):
    with open(path, "wb") as fh:
        fh.write(b"\0" * 80 + struct.pack("<I", len(t)))
        for tri in t:
            a, b, c = v[tri]
            fh.write(struct.pack("<12fH", *np.cross(b - a, c - a), *a, *b, *c, 0))


def _write_obj(path, v, t):
    with open(path, "w") as fh:
        fh.write("# icosphere\no sphere\n")
        fh.writelines(f"v {p[0]:.9g} {p[1]:.9g} {p[2]:.9g}\n" for p in v)
        # 1-based indices with texture/normal slots, as many exporters write them
        fh.writelines(f"f {a + 1}//1 {b + 1}//1 {c + 1}//1\n" for a, b, c in t)


@pytest.mark.parametrize("kind", ["ascii.stl", "binary.stl", "trimesh.obj", "builtin.obj"])
def test_file_round_trip(kind, tmp_path, monkeypatch):
    """A mesh written as ASCII/binary STL or OBJ (with trimesh or the builtin OBJ reader) and read back
    voxelizes to the same mask as the mesh in memory."""
    if kind == "builtin.obj":
        monkeypatch.setitem(sys.modules, "trimesh", None)  # makes `import trimesh` fail
    else:
        pytest.importorskip("trimesh")
    v, t = _icosphere(2)
    path = tmp_path / f"mesh.{kind.split('.')[1]}"
    {"ascii.stl": _write_ascii_stl, "binary.stl": _write_binary_stl}.get(kind, _write_obj)(path, v, t)
    v2, t2 = load_mesh(path)
    assert v2.shape == v.shape and t2.shape == t.shape  # STL corners were merged back into shared vertices
    origin = -np.array(SHAPE) / 2 + OFFSET
    np.testing.assert_array_equal(voxelize_mesh(v2, t2, SHAPE, origin=origin, device="cpu"),
                                  voxelize_mesh(v, t, SHAPE, origin=origin, device="cpu"))


def test_bad_input_raises(tmp_path, monkeypatch):
    """2D shapes, out-of-range or non-integer triangles, non-finite vertices, bad spacing/origin and
    unsupported files raise errors naming the argument, its value and what is allowed."""
    v, t = _cube()
    with pytest.raises(ValueError, match=r"shape=\(8, 8\) is 2D; meshes are 3D only"):
        voxelize_mesh(v, t, (8, 8))
    with pytest.raises(ValueError, match=r"shape=\(8, 0, 8\).*allowed: 3 positive integers"):
        voxelize_mesh(v, t, (8, 0, 8))
    bad = t.copy()
    bad[3, 1] = 8
    with pytest.raises(ValueError, match=r"triangles\[3, 1\]=8 is out of range; allowed: 0 <= index < 8"):
        voxelize_mesh(v, bad, (4, 4, 4))
    with pytest.raises(ValueError, match=r"triangles\[0, 0\]=-1 is out of range"):
        voxelize_mesh(v, np.where(t == 0, -1, t), (4, 4, 4))
    with pytest.raises(ValueError, match=r"triangles has dtype float64; allowed: integer"):
        voxelize_mesh(v, t.astype(float), (4, 4, 4))
    with pytest.raises(ValueError, match=r"triangles has shape \(12, 4\); allowed: \(T, 3\)"):
        voxelize_mesh(v, np.hstack([t, t[:, :1]]), (4, 4, 4))
    nan = v.copy()
    nan[5, 2] = np.nan
    with pytest.raises(ValueError, match=r"vertices\[5\]=\[1.0, 0.0, nan\] is not finite; allowed: finite"):
        voxelize_mesh(nan, t, (4, 4, 4))
    with pytest.raises(ValueError, match=r"vertices has shape \(8, 2\); allowed: \(V, 3\)"):
        voxelize_mesh(v[:, :2], t, (4, 4, 4))
    with pytest.raises(ValueError, match=r"spacing=-1.0 is not allowed; allowed: finite positive numbers"):
        voxelize_mesh(v, t, (4, 4, 4), spacing=-1.0)
    with pytest.raises(ValueError, match=r"origin=\(0, 0\) has shape \(2,\); allowed: 3 numbers"):
        voxelize_mesh(v, t, (4, 4, 4), origin=(0, 0))
    with pytest.raises(ValueError, match=r"device='tpu' does not exist"):
        voxelize_mesh(v, t, (4, 4, 4), device="tpu")
    with pytest.raises(ValueError, match=r"extension '.ply'; allowed: .stl, .obj"):
        load_mesh(tmp_path / "mesh.ply")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_mesh(tmp_path / "missing.obj")
    (tmp_path / "bad.obj").write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 7\n")
    monkeypatch.setitem(sys.modules, "trimesh", None)
    with pytest.raises(ValueError, match=r"triangles\[0, 2\]=6 is out of range"):
        load_mesh(tmp_path / "bad.obj")
    with pytest.raises(ImportError, match="needs trimesh"):
        (tmp_path / "m.stl").write_text("solid x\nendsolid x\n")
        load_mesh(tmp_path / "m.stl")
