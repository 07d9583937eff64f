"""Conversion between physical and lattice units (diffusive/acoustic scaling helpers)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Units", "MAX_LATTICE_VELOCITY"]

# |u| cs^-1 = Mach; above ~0.3 (u ~ 0.17) the second-order equilibrium's compressibility error and
# the BGK stability limit make results unreliable.
MAX_LATTICE_VELOCITY = 0.2


@dataclass(frozen=True)
class Units:
    """A flow's scales: Reynolds number, characteristic length in cells, lattice velocity.

    ``omega`` is the BGK relaxation rate 1 / (3 nu + 1/2) with nu = velocity * length / reynolds.
    Physical values: ``length_m`` metres per characteristic length and ``velocity_ms`` metres per
    second for the characteristic velocity give dx, dt and conversions.
    """

    reynolds: float
    length: float
    velocity: float
    length_m: float = 1.0
    velocity_ms: float = 1.0

    @classmethod
    def from_reynolds(cls, reynolds: float, length: float, velocity: float = 0.05, length_m: float = 1.0,
                      velocity_ms: float = 1.0) -> "Units":
        if not reynolds > 0:
            raise ValueError(f"reynolds={reynolds} must be positive")
        if not length > 0:
            raise ValueError(f"length={length} must be a positive number of cells")
        if not (0 < velocity <= MAX_LATTICE_VELOCITY):
            raise ValueError(f"velocity={velocity} gives Mach {velocity * 3 ** 0.5:.2f}; allowed (0, "
                             f"{MAX_LATTICE_VELOCITY}]: lower the lattice velocity and raise the resolution")
        u = cls(float(reynolds), float(length), float(velocity), float(length_m), float(velocity_ms))
        if not (0.0 < u.omega < 2.0) or u.omega > 1.99:
            raise ValueError(f"reynolds={reynolds} at length={length} cells and velocity={velocity} gives "
                             f"omega={u.omega:.4f}, too close to 2 to be stable: raise length (resolution)")
        return u

    @property
    def viscosity(self) -> float:
        """Kinematic viscosity, lattice units."""
        return self.velocity * self.length / self.reynolds

    @property
    def omega(self) -> float:
        return 1.0 / (3.0 * self.viscosity + 0.5)

    @property
    def mach(self) -> float:
        return self.velocity * 3 ** 0.5

    @property
    def dx(self) -> float:
        """Metres per cell."""
        return self.length_m / self.length

    @property
    def dt(self) -> float:
        """Seconds per step."""
        return self.dx * self.velocity / self.velocity_ms

    def to_physical_velocity(self, u_lattice):
        return u_lattice * self.dx / self.dt

    def to_physical_time(self, steps):
        return steps * self.dt

    def to_physical_viscosity(self) -> float:
        return self.viscosity * self.dx * self.dx / self.dt
