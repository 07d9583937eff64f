"""Bridges that expose difflbm rollouts to autodiff frameworks (``difflbm.bridges.torch``, ``difflbm.bridges.jax``)."""
