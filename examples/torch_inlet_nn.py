"""Fit a small neural network that sets a channel's inlet profile, with PyTorch and torch.optim.Adam.

A 2D channel (D2Q9) has a velocity inlet on x-, no-slip walls on y- and y+, a pressure outlet on x+
and a square obstacle off the centre line. A multilayer perceptron maps the normalized height y of
each inlet cell to its inflow velocity u_x(y). The loss is the squared mismatch between the velocity
on a column downstream of the obstacle after ``--steps`` steps and a target. The target comes from
a run with a known, skewed inlet profile, so a perfect fit exists; the network starts far from it.

Gradients flow from the loss through the whole rollout (difflbm's checkpointed adjoint, exposed to
autograd by :func:`difflbm.bridges.torch.rollout_op`) into the network's weights.

Run:  python examples/torch_inlet_nn.py [--steps 300] [--iterations 60] [--resolution 16] [--device cpu]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import warp as wp

wp.config.log_level = wp.LOG_WARNING  # keep Warp start-up and module-load messages out of the output

import difflbm as lbm
from difflbm import losses
from difflbm.bridges.torch import rollout_op

# The inflow stays below this speed so the Mach number (u / c_s, c_s = 1/sqrt(3)) stays small.
U_MAX = 0.1


def build_problem(ny: int, device=None) -> tuple[lbm.Problem, np.ndarray]:
    """The channel (nx = 2 ny) with its obstacle, and the mask of the downstream measurement column."""
    nx = 2 * ny
    block = np.zeros((nx, ny), dtype=bool)
    s = max(ny // 5, 1)
    # Off the centre line, so the wake is asymmetric and the inlet profile matters in detail.
    block[ny // 4: ny // 4 + s, ny // 2: ny // 2 + s] = True
    problem = lbm.Problem((nx, ny), "D2Q9", omega=1.2, precision="float64", device=device,
                          boundaries=[lbm.Wall(face="y-"), lbm.Wall(face="y+"),
                                      lbm.VelocityInlet(face="x-", velocity=(0.03, 0.0)),
                                      lbm.PressureOutlet(face="x+", density=1.0),
                                      lbm.Wall(mask=block)])
    column = np.zeros((nx, ny), dtype=bool)
    # Shape information travels with the flow (about 0.05 cells per step here), much slower than
    # pressure waves, so the column sits close behind the obstacle where the inlet's shape arrives
    # within a few hundred steps; further downstream only the flow rate would be identifiable.
    column[ny // 2 + s, 1:-1] = True
    return problem, column


def target_inlet(ny: int) -> np.ndarray:
    """A skewed profile (faster near y+), zero at the walls; shape (ny,)."""
    y = (np.arange(ny) + 0.5) / ny
    return U_MAX * 0.9 * 6.75 * y * y * (1 - y)  # 6.75 y^2 (1 - y) peaks at 1 for y = 2/3


class InletNet(torch.nn.Module):
    """MLP: normalized height in [-1, 1] -> inflow speed in (0, U_MAX)."""

    def __init__(self, hidden: int = 32, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.net = torch.nn.Sequential(torch.nn.Linear(1, hidden), torch.nn.Tanh(),
                                       torch.nn.Linear(hidden, hidden), torch.nn.Tanh(),
                                       torch.nn.Linear(hidden, 1))
        # Start from a slow, nearly uniform inflow (about U_MAX / 8), far from the target.
        with torch.no_grad():
            self.net[-1].bias.fill_(-2.0)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return U_MAX * torch.sigmoid(self.net(y[:, None]))[:, 0]


def inlet_tensor(ux: torch.Tensor) -> torch.Tensor:
    """The bridge's inlet layout: (windows=1, inlet cells, 3) with u_y = u_z = 0."""
    zero = torch.zeros_like(ux)
    return torch.stack([ux, zero, zero], dim=-1)[None]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300, help="time steps per rollout")
    ap.add_argument("--iterations", type=int, default=60, help="Adam iterations")
    ap.add_argument("--resolution", type=int, default=16, help="channel height in cells (length is 2x)")
    ap.add_argument("--device", default=None, help="Warp device (cpu, cuda:0); default CUDA if present")
    ap.add_argument("--lr", type=float, default=0.02, help="Adam learning rate")
    args = ap.parse_args(argv)
    if args.resolution < 10:
        ap.error(f"--resolution={args.resolution} is too small for the obstacle and walls; allowed: >= 10")

    problem, column = build_problem(args.resolution, args.device)
    ny = problem.shape[1]

    # The target: the downstream velocity that the known profile produces after the same rollout.
    params = problem.parameters()
    inlet = params.inlet_velocity.numpy()
    inlet[0, :, 0] = target_inlet(ny)
    params.inlet_velocity.assign(inlet)
    solver = lbm.Solver(problem)
    final = solver.run(problem.state(), args.steps, params, check_every=args.steps)
    u = final.f.numpy()  # (Q, cells)
    c = problem.lattice.velocities.astype(np.float64)  # (Q, D)
    target = ((c.T @ u) / u.sum(0)).T.reshape(problem.shape + (2,))

    loss = losses.VelocityMismatch(region=column, target=target)
    op = rollout_op(problem, args.steps, loss, controls=("inlet_velocity",))
    net = InletNet().to(dtype=op.dtype, device=op.device)
    y = torch.linspace(-1, 1, ny, dtype=op.dtype, device=op.device)
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    # Decaying the step damps Adam's late oscillations, so the last iterate is also about the best.
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(args.iterations, 1))

    start = time.perf_counter()
    history = []
    for it in range(args.iterations):
        opt.zero_grad()
        value = op(inlet_tensor(net(y)))
        value.backward()
        opt.step()
        schedule.step()
        history.append(value.item())
        if it % 10 == 0:
            print(f"iteration {it:4d}  loss {history[-1]:.4e}")
    with torch.no_grad():
        profile = net(y)
        final_loss = op(inlet_tensor(profile)).item()
    elapsed = time.perf_counter() - start
    err = float(np.abs(profile.cpu().numpy() - target_inlet(ny))[1:-1].max())

    print(f"loss before {history[0]:.4e}  after {final_loss:.4e}  "
          f"(x{history[0] / max(final_loss, 1e-300):.3g} lower, {args.iterations} iterations, {elapsed:.1f} s)")
    print(f"largest inlet error away from the walls: {err:.2e} (peak speed {U_MAX * 0.9:.3f})")
    return dict(initial=history[0], final=final_loss, history=history, inlet_error=err)


if __name__ == "__main__":
    main()
