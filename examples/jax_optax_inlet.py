"""Fit a small neural network that sets a channel's inlet profile, with JAX and optax.adam.

The same task as ``torch_inlet_nn.py``: a 2D channel (D2Q9) with a velocity inlet on x-, walls on
y- and y+, a pressure outlet on x+ and an off-centre square obstacle. A multilayer perceptron (plain
JAX, parameters in a pytree) maps the normalized height of each inlet cell to its inflow velocity;
the loss is the squared mismatch of the velocity on a column behind the obstacle after ``--steps``
steps with a target made by a known, skewed inlet profile.

:func:`difflbm.bridges.jax.rollout_fn` makes the rollout a ``jax.custom_vjp`` function whose
backward pass is difflbm's checkpointed adjoint, so ``jax.jit(jax.value_and_grad(...))`` works
through network and solver together. The problem is float64, so JAX runs with x64 enabled inside
:func:`main` (and restores the previous setting on return).

Run:  python examples/jax_optax_inlet.py [--steps 300] [--iterations 60] [--resolution 16] [--device cpu]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import warp as wp

wp.config.log_level = wp.LOG_WARNING  # keep Warp start-up and module-load messages out of the output

import difflbm as lbm
from difflbm import losses
from difflbm.bridges.jax import rollout_fn

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
    # Shape information travels with the flow (about 0.05 cells per step), far slower than pressure
    # waves; close behind the obstacle the inlet's shape arrives within a few hundred steps.
    column[ny // 2 + s, 1:-1] = True
    return problem, column


def target_inlet(ny: int) -> np.ndarray:
    """A skewed profile (faster near y+), zero at the walls; shape (ny,)."""
    y = (np.arange(ny) + 0.5) / ny
    return U_MAX * 0.9 * 6.75 * y * y * (1 - y)  # 6.75 y^2 (1 - y) peaks at 1 for y = 2/3


def init_mlp(key, sizes=(1, 32, 32, 1)):
    """Weights of an MLP as a list of (W, b), uniform in +-1/sqrt(fan in) for weights and biases."""
    params = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        key, kw, kb = jax.random.split(key, 3)
        # Random biases matter for the 1-input first layer: with zero biases every tanh unit is an odd
        # function of y through the origin, and the fit stalls at nearly linear profiles.
        lim = 1.0 / np.sqrt(n_in)
        params.append((jax.random.uniform(kw, (n_in, n_out), jnp.float64, -lim, lim),
                       jax.random.uniform(kb, (n_out,), jnp.float64, -lim, lim)))
    # Start from a slow, nearly uniform inflow (about U_MAX / 8), far from the target.
    w, b = params[-1]
    params[-1] = (w, jnp.full_like(b, -2.0))
    return params


def inlet_profile(params, y):
    """Normalized heights in [-1, 1] -> inflow speeds in (0, U_MAX)."""
    h = y[:, None]
    for w, b in params[:-1]:
        h = jnp.tanh(h @ w + b)
    w, b = params[-1]
    return U_MAX * jax.nn.sigmoid(h @ w + b)[:, 0]


def inlet_array(ux):
    """The bridge's inlet layout: (windows=1, inlet cells, 3) with u_y = u_z = 0."""
    zero = jnp.zeros_like(ux)
    return jnp.stack([ux, zero, zero], axis=-1)[None]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300, help="time steps per rollout")
    ap.add_argument("--iterations", type=int, default=60, help="Adam iterations")
    ap.add_argument("--resolution", type=int, default=16, help="channel height in cells (length is 2x)")
    ap.add_argument("--device", default=None, help="Warp device (cpu, cuda:0); default CUDA if present")
    ap.add_argument("--lr", type=float, default=0.02, help="Adam peak learning rate")
    args = ap.parse_args(argv)
    if args.resolution < 10:
        ap.error(f"--resolution={args.resolution} is too small for the obstacle and walls; allowed: >= 10")
    x64 = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        return _fit(args)
    finally:
        jax.config.update("jax_enable_x64", x64)


def _fit(args) -> dict:
    problem, column = build_problem(args.resolution, args.device)
    ny = problem.shape[1]

    # The target: the downstream velocity that the known profile produces after the same rollout.
    params = problem.parameters()
    inlet = params.inlet_velocity.numpy()
    inlet[0, :, 0] = target_inlet(ny)
    params.inlet_velocity.assign(inlet)
    final = lbm.Solver(problem).run(problem.state(), args.steps, params, check_every=args.steps)
    f = final.f.numpy()
    c = problem.lattice.velocities.astype(np.float64)
    target = ((c.T @ f) / f.sum(0)).T.reshape(problem.shape + (2,))

    rollout = rollout_fn(problem, args.steps, losses.VelocityMismatch(region=column, target=target),
                         controls=("inlet_velocity",))
    y = jnp.linspace(-1.0, 1.0, ny)

    def objective(mlp):
        return rollout(inlet_array(inlet_profile(mlp, y)))

    # Cosine decay damps Adam's late oscillations, so the last iterate is also about the best.
    opt = optax.adam(optax.cosine_decay_schedule(args.lr, max(args.iterations, 1)))
    mlp = init_mlp(jax.random.PRNGKey(0))
    opt_state = opt.init(mlp)

    @jax.jit
    def update(mlp, opt_state):
        value, grads = jax.value_and_grad(objective)(mlp)
        updates, opt_state = opt.update(grads, opt_state, mlp)
        return optax.apply_updates(mlp, updates), opt_state, value

    start = time.perf_counter()
    history = []
    for it in range(args.iterations):
        mlp, opt_state, value = update(mlp, opt_state)
        history.append(float(value))
        if it % 10 == 0:
            print(f"iteration {it:4d}  loss {history[-1]:.4e}")
    final_loss = float(jax.jit(objective)(mlp))
    elapsed = time.perf_counter() - start
    err = float(np.abs(np.asarray(inlet_profile(mlp, y)) - target_inlet(ny))[1:-1].max())
    initial = history[0] if history else final_loss

    print(f"loss before {initial:.4e}  after {final_loss:.4e}  "
          f"(x{initial / max(final_loss, 1e-300):.3g} lower, {args.iterations} iterations, {elapsed:.1f} s)")
    print(f"largest inlet error away from the walls: {err:.2e} (peak speed {U_MAX * 0.9:.3f})")
    return dict(initial=initial, final=final_loss, history=history, inlet_error=err)


if __name__ == "__main__":
    main()
