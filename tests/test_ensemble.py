"""Ensembles: members stacked in one launch behave exactly like their solo runs."""

import numpy as np
import pytest

import difflbm as lbm
from difflbm import adjoint as A, losses as L
from difflbm.ensemble import Ensemble


def _member(k):
    sh = (12, 10)
    mask = np.zeros(sh, bool)
    mask[4 + k: 6 + k, 3:5] = True  # the obstacle moves from member to member
    return lbm.Problem(sh, "D2Q9", omega=1.2 + 0.15 * k, precision="float64", device="cpu",
                       boundaries=[lbm.Wall(face="y-"), lbm.Wall(face="y+", velocity=(0.01 * (k + 1), 0.0)),
                                   lbm.Wall(mask=mask), lbm.VelocityInlet(face="x-", velocity=(0.02 + 0.01 * k, 0.0)),
                                   lbm.PressureOutlet(face="x+", density=1.0)])


def _state(p, seed):
    rng = np.random.default_rng(seed)
    return p.state(1 + 0.01 * rng.standard_normal(p.shape), 0.02 * rng.standard_normal(p.shape + (2,)))


def test_ensemble_forward_equals_solo_runs():
    """Three members with different geometry, lid, inlet and omega: each slice equals its solo run."""
    members = [_member(k) for k in range(3)]
    ens = Ensemble(members)
    states = [_state(m, k) for k, m in enumerate(members)]
    out = lbm.Solver(ens.problem).run(ens.state(states), 15, ens.parameters())
    parts = ens.split_populations(out.f.numpy())
    for m, st, part in zip(members, states, parts):
        solo = lbm.Solver(m).run(st, 15).f.numpy()
        assert np.abs(part - solo).max() <= 1e-14


def test_ensemble_gradients_equal_solo_gradients():
    """Each member's gradient (initial state, inlet, lid, omega) equals the gradient of its own rollout."""
    members = [_member(k) for k in range(3)]
    ens = Ensemble(members)
    states = [_state(m, k) for k, m in enumerate(members)]
    loss = L.KineticEnergy(when="every")
    wrt = ("initial", "inlet_velocity", "wall_velocity", "omega")
    value, grads = ens.value_and_grad(ens.parameters(), ens.state(states), 15, loss, wrt=wrt)
    total = 0.0
    for m, st, g in zip(members, states, grads):
        v, solo = A.value_and_grad(m, m.parameters(), st, 15, loss, wrt=wrt)
        total += v
        for name in ("initial", "inlet_velocity", "wall_velocity"):
            np.testing.assert_allclose(g[name], getattr(solo, name), rtol=1e-11, atol=1e-14, err_msg=name)
        # the stacked omega is a field: its member part sums to the member's scalar gradient
        assert abs(g["omega"].sum() - solo.omega[0]) <= 1e-11 * abs(solo.omega[0])
    assert abs(value - total) <= 1e-12 * abs(total)


def test_ensemble_refuses_mismatched_members(monkeypatch):
    """Members of different shapes, boundary kinds or float16 collisions cannot share one kernel:
    refused with the reason."""
    a = lbm.Problem((8, 6), "D2Q9", device="cpu", precision="float64")
    b = lbm.Problem((8, 7), "D2Q9", device="cpu", precision="float64")
    with pytest.raises(ValueError, match=r"members\[1\].shape"):
        Ensemble([a, b])
    c = lbm.Problem((8, 6), "D2Q9", "trt", device="cpu", precision="float64")
    with pytest.raises(ValueError, match="collision, boundary kind"):
        Ensemble([a, c])
    d = lbm.Problem((4, 4, 4), "D3Q19", device="cpu", precision="float64")
    with pytest.raises(ValueError, match="2D lattices"):
        Ensemble([d])
    monkeypatch.setenv("DIFFLBM_FP16_COLLISION", "shifted")
    e = lbm.Problem((8, 6), "D2Q9", device="cpu", precision="float16")
    monkeypatch.setenv("DIFFLBM_FP16_COLLISION", "deviation")
    f = lbm.Problem((8, 6), "D2Q9", device="cpu", precision="float16")
    with pytest.raises(ValueError, match="float16_collision='deviation'"):
        Ensemble([e, f])
