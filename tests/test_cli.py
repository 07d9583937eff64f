"""The command line: one JSON object on stdout with --json, errors named on stderr."""

import json
import subprocess
import sys

import pytest


def _run(*args):
    return subprocess.run([sys.executable, "-m", "difflbm.cli", *args], capture_output=True, text=True, timeout=600)


def test_gradcheck_json_is_one_object_and_small():
    """`difflbm gradcheck --json` prints exactly one JSON object whose relative error is <= 1e-6."""
    r = _run("gradcheck", "--boundary", "wall", "--parameter", "wall_velocity", "--steps", "20", "--device", "cpu",
             "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["relative_error"] <= 1e-6
    assert out["parameter"] == "wall_velocity" and out["steps"] == 20
    assert out["replay"] == "states"  # a loss at every step: the replay keeps states


def test_gradcheck_final_loss_takes_the_moments_replay():
    """`--loss final` on an inlet-outlet channel is differentiated by the moments replay, within 1e-6 of FD."""
    r = _run("gradcheck", "--boundary", "inlet-outlet", "--parameter", "outlet_density", "--loss", "final",
             "--steps", "20", "--device", "cpu", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["replay"] == "moments" and out["relative_error"] <= 1e-6


def test_validate_json_taylor_green_second_order():
    """`difflbm validate taylor-green-2d --json`: the velocity error (and the mode amplitude) falls at second order."""
    r = _run("validate", "taylor-green-2d", "--resolution", "16", "--device", "cpu", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert min(out["orders"]) >= 1.8 and out["passed"] is True
    assert min(out["mode_amplitude_orders"]) >= 1.8


def test_validate_option_of_another_case_refused():
    """--u-max belongs to the cylinder: given to another case it exits with an error naming it."""
    r = _run("validate", "cavity", "--resolution", "8", "--u-max", "0.05", "--device", "cpu")
    assert r.returncode != 0
    assert "--u-max=0.05 applies to the cylinder case only" in r.stderr


def test_gradcheck_unknown_control_refused():
    """Asking gradcheck for a control the setup lacks exits 2 with the name in the message."""
    r = _run("gradcheck", "--boundary", "periodic", "--parameter", "inlet_velocity", "--device", "cpu")
    assert r.returncode == 2
    assert "inlet_velocity" in r.stderr


@pytest.mark.parametrize("bad", [["validate", "nosuchcase"], ["gradcheck", "--lattice", "D2Q7"]])
def test_unknown_names_rejected(bad):
    """Unknown case or lattice names are rejected by the parser, listing the allowed ones."""
    r = _run(*bad)
    assert r.returncode == 2
    assert "invalid choice" in r.stderr
