"""Train a learned correction between solver steps with PyTorch: difflbm's step as a torch op.

A periodic 2D shear-wave flow (D2Q9) is simulated twice: once with the "true" relaxation rate (the
reference trajectory) and once with a wrong one. Between the wrong model's steps a small torch
closure relaxes the populations further towards their equilibrium, computed in torch from their
moments, with one learnable rate per lattice direction (zero at the start). Training fits the rates
so that the corrected trajectory matches the reference at every step of a short window: gradients
flow through every difflbm step (its fused adjoint, exposed to autograd by
:func:`difflbm.bridges.torch.step_op`) and through the closure in between. The closure can absorb
the wrong viscosity exactly (every rate equal to (omega_true - omega) / (1 - omega)), which the
script prints next to the fitted rates.

Run:  python examples/torch_step_closure.py [--resolution 24] [--steps 20] [--iterations 60] [--device cpu]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import warp as wp

wp.config.log_level = wp.LOG_WARNING  # keep Warp start-up and module-load messages out of the output

import difflbm as lbm
from difflbm.bridges.torch import step_op

OMEGA_TRUE, OMEGA_MODEL = 1.2, 1.6


def initial_state(problem: lbm.Problem) -> lbm.State:
    """A shear wave u_x = U sin(2 pi y / ny) with a weaker cross wave, at rest density."""
    nx, ny = problem.shape
    y = (np.arange(ny) + 0.5) / ny
    x = (np.arange(nx) + 0.5) / nx
    u = np.zeros((nx, ny, 2))
    u[..., 0] = 0.05 * np.sin(2 * np.pi * y)[None, :]
    u[..., 1] = 0.02 * np.sin(2 * np.pi * x)[:, None]
    return problem.state(1.0, u)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--resolution", type=int, default=24)
    ap.add_argument("--steps", type=int, default=20, help="steps per training window")
    ap.add_argument("--iterations", type=int, default=60)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: CUDA when present)")
    args = ap.parse_args(argv)

    n = args.resolution
    truth = lbm.Problem((n, n), "D2Q9", omega=OMEGA_TRUE, precision="float64", device=args.device)
    model = lbm.Problem((n, n), "D2Q9", omega=OMEGA_MODEL, precision="float64", device=args.device)
    dev = torch.device("cpu" if model.device.is_cpu else f"cuda:{model.device.ordinal}")
    f0 = initial_state(truth)
    ref, st = [], f0
    solver = lbm.Solver(truth)
    for _ in range(args.steps):  # the reference trajectory
        nxt = lbm.State.empty(truth)
        solver.step(st, nxt, truth.parameters())
        ref.append(torch.tensor(nxt.populations(), device=dev))
        st = nxt

    step = step_op(model)  # populations in, populations out, differentiable
    c = torch.tensor(model.lattice.velocities[:, :2], dtype=torch.float64, device=dev)
    w = torch.tensor(model.lattice.weights, device=dev).view(9, 1, 1)
    rates = torch.nn.Parameter(torch.zeros(9, 1, 1, dtype=torch.float64, device=dev))
    opt = torch.optim.Adam([rates], lr=args.lr)
    start = torch.tensor(f0.populations(), device=dev)

    def equilibrium(f):
        rho = f.sum(0)
        u = torch.einsum("ia,ixy->axy", c, f) / rho
        cu = torch.einsum("ia,axy->ixy", c, u)
        return w * rho * (1 + 3 * cu + 4.5 * cu * cu - 1.5 * (u * u).sum(0))

    def window_loss():
        f, total = start, 0.0
        for r in ref:
            f = step(f)
            f = f + rates * (equilibrium(f) - f)  # the learned closure
            total = total + ((f - r) ** 2).sum()
        return total / len(ref)

    t0 = time.perf_counter()
    history = []
    for _ in range(args.iterations):
        opt.zero_grad()
        loss = window_loss()
        loss.backward()
        opt.step()
        history.append(loss.item())
    with torch.no_grad():
        final = window_loss().item()
    print(f"loss before {history[0]:.3e}, after {final:.3e} ({history[0] / final:.0f}x lower), "
          f"{args.iterations} iterations in {time.perf_counter() - t0:.1f} s on {model.device}")
    exact = (OMEGA_TRUE - OMEGA_MODEL) / (1 - OMEGA_MODEL)
    print("fitted rates", np.round(rates.detach().cpu().numpy().ravel(), 3), f"(exact {exact:.3f})")
    return {"initial": history[0], "final": final, "history": history}


if __name__ == "__main__":
    main()
