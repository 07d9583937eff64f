"""Output and restart files: VTI content, PNG, bit-identical restarts, no silent overwrites."""

import xml.etree.ElementTree as ET

import numpy as np
import pytest

from difflbm import io
from difflbm.problem import Problem, Wall
from difflbm.solver import Solver


def _problem(precision="float64", shape=(12, 10)):
    walls = [Wall(face="x-"), Wall(face="x+"), Wall(face="y-"), Wall(face="y+", velocity=(0.05, 0.0))]
    return Problem(shape, "D2Q9", omega=1.3, boundaries=walls, precision=precision, device="cpu")


def test_restart_round_trip_bit_identical(tmp_path):
    """20 steps equal 10 steps, save, load, 10 steps, bit for bit."""
    p = _problem()
    solver = Solver(p)
    straight = solver.run(p.state(), 20)
    half = solver.run(p.state(), 10)
    path = io.save_restart(tmp_path / "r.npz", p, half, 10)
    state, step = io.load_restart(path, p)
    assert step == 10
    resumed = solver.run(state, 10)
    assert np.array_equal(resumed.f.numpy(), straight.f.numpy())


def test_restart_mismatch_names_difference(tmp_path):
    """Loading into a problem of other shape and precision raises, naming both entries."""
    p = _problem()
    path = io.save_restart(tmp_path / "r", p, p.state(), 0)
    with pytest.raises(ValueError, match="precision.*shape|shape.*precision"):
        io.load_restart(path, _problem("float32", (12, 11)))


def test_vti_written_and_readable(tmp_path):
    """The VTI header parses as XML, holds the extent and both fields, and density reads back in order."""
    p = _problem()
    st = Solver(p).run(p.state(), 5)
    path = io.write_vti(tmp_path / "flow", p, st)
    raw = open(path, "rb").read()
    head, _, appended = raw.partition(b"<AppendedData")
    root = ET.fromstring(head + b"</VTKFile>")
    image = root.find("ImageData")
    assert image.get("WholeExtent").split() == ["0", "12", "0", "10", "0", "1"]
    names = {a.get("Name"): a for a in root.iter("DataArray")}
    assert set(names) == {"density", "velocity"}
    assert names["velocity"].get("NumberOfComponents") == "3"
    # raw appended block: '_' then, per array, a UInt64 byte count and the values with x fastest
    data = appended[appended.index(b"_") + 1:]
    n = int(np.frombuffer(data[:8], np.uint64)[0])
    rho = np.frombuffer(data[8:8 + n], np.float64).reshape((12, 10), order="F")
    np.testing.assert_array_equal(rho, io.macroscopic(p, st)[0])


def test_png_written(tmp_path):
    """write_png produces a PNG file."""
    p = _problem()
    path = io.write_png(tmp_path / "speed.png", p, p.state(velocity=(0.01, 0.0)))
    assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_overwrite_refused_then_allowed(tmp_path):
    """Every writer refuses an existing file and replaces it only with overwrite=True."""
    p = _problem()
    st = p.state()
    writers = [lambda ow: io.save_restart(tmp_path / "r.npz", p, st, 1, overwrite=ow),
               lambda ow: io.write_vti(tmp_path / "f.vti", p, st, overwrite=ow),
               lambda ow: io.write_png(tmp_path / "f.png", p, st, overwrite=ow)]
    for write in writers:
        path = write(False)
        with pytest.raises(FileExistsError, match="overwrite=True"):
            write(False)
        assert write(True) == path


def test_bad_field_named(tmp_path):
    """Unknown field names raise, naming the value and the allowed ones."""
    p = _problem()
    with pytest.raises(ValueError, match="vorticity.*density, velocity"):
        io.write_vti(tmp_path / "f", p, p.state(), fields=("vorticity",))
    with pytest.raises(ValueError, match="field='uz'.*speed"):
        io.write_png(tmp_path / "f.png", p, p.state(), field="uz")
