"""A user-written loss (a Warp kernel on the populations) is differentiated like the built-in ones."""

import numpy as np
import warp as wp

import difflbm as lbm
from difflbm import losses as L
from difflbm.gradcheck import gradcheck


@wp.kernel
def x_momentum_squared(f: wp.array2d(dtype=wp.float64), scale: wp.float64, out: wp.array(dtype=wp.float64)):
    # sum over cells of scale * (f_1 - f_2)^2: an arbitrary smooth function of two populations
    idx = wp.tid()
    d = f[1, idx] - f[2, idx]
    wp.atomic_add(out, 0, scale * d * d)


def test_kernel_loss_matches_finite_differences():
    """KernelLoss with an extra scalar input, accumulated over steps: adjoint = central FD (float64)."""
    rng = np.random.default_rng(9)
    p = lbm.Problem((10, 8), "D2Q9", omega=1.4, precision="float64", device="cpu",
                    boundaries=[lbm.Wall(face="y+", velocity=(0.04, 0.0))])
    st = p.state(1 + 0.01 * rng.standard_normal(p.shape), 0.02 * rng.standard_normal(p.shape + (2,)))
    loss = L.KernelLoss(x_momentum_squared, dim=p.cell_count, inputs=[wp.float64(3.0)], when="every", every=4)
    r = gradcheck(p, p.parameters(), st, 20, loss, wrt=("initial", "omega", "wall_velocity"))
    for k, v in r.items():
        if k != "pairs":
            assert v <= 1e-6, (k, v)
