"""cProfile of one checkpointed gradient (D3Q19 fp32 cavity) on the GPU: where the host time goes."""
import cProfile, pstats, sys
import warp as wp
wp.config.log_level = wp.LOG_WARNING  # Warp 1.19 logs module loads at INFO, on stdout
from difflbm import adjoint as A, losses as L
from difflbm.bench import cavity_problem
size, T = int(sys.argv[1]), int(sys.argv[2])
p = cavity_problem("D3Q19", size, "float32", "cuda:0")
st, params = p.state(), p.parameters()
A.value_and_grad(p, params, st, 4, L.KineticEnergy(), wrt=("initial", "wall_velocity"))
wp.synchronize()
pr = cProfile.Profile()
pr.enable()
A.value_and_grad(p, params, st, T, L.KineticEnergy(), wrt=("initial", "wall_velocity"))
wp.synchronize()
pr.disable()
pstats.Stats(pr).sort_stats("cumulative").print_stats(18)
