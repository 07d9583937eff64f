"""difflbm: a differentiable lattice Boltzmann solver on NVIDIA Warp."""

from .lattice import Lattice, get_lattice
from .problem import (CollisionBGK, CollisionSmagorinsky, CollisionTRT, Outflow, Parameters, PressureOutlet,
                      Problem, State, VelocityInlet, Wall, circle_link_fractions)
from .solver import DivergenceError, Solver

__version__ = "0.1.0"

__all__ = [
    "Lattice", "get_lattice", "Problem", "Parameters", "State", "Solver", "DivergenceError",
    "CollisionBGK", "CollisionTRT", "CollisionSmagorinsky", "Wall", "VelocityInlet", "PressureOutlet",
    "Outflow", "circle_link_fractions",
]
