"""PyTorch and JAX bridges: same gradients as difflbm's own adjoint, compile/jit-friendly, checked inputs."""

import numpy as np
import pytest
import warp as wp

import difflbm as lbm
from difflbm import adjoint as A, losses as L

# every Warp device present: CI has only the CPU; the GPU machine's Warp is packed without its CPU compiler
DEVICES = [d for d in ("cpu", "cuda:0") if d in [x.alias for x in wp.get_devices()]]

STEPS = 10
CONTROLS = ("initial", "inlet_velocity", "omega", "outlet_density")


def _channel(shape=(12, 10), device="cpu"):
    # Every test uses the same boundary set, so the fused step kernel compiles once per session.
    return lbm.Problem(shape, "D2Q9", omega=1.2, precision="float64", device=device,
                       boundaries=[lbm.Wall(face="y-"), lbm.Wall(face="y+"),
                                   lbm.VelocityInlet(face="x-", velocity=(0.03, 0.0)),
                                   lbm.PressureOutlet(face="x+", density=1.0)])


def _state(p, seed=0):
    rng = np.random.default_rng(seed)
    return p.state(1 + 0.01 * rng.standard_normal(p.shape), 0.02 * rng.standard_normal(p.shape + (2,)))


def _controls(p, st):
    params = p.parameters()
    return [st.populations() if n == "initial" else params.numpy()[n] for n in CONTROLS]


def _native(p, st):
    return A.value_and_grad(p, p.parameters(), st, STEPS, L.KineticEnergy(), adjoint=A.Checkpointed(),
                            wrt=CONTROLS)


@pytest.fixture
def x64():
    jax = pytest.importorskip("jax")
    old = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield jax
    jax.config.update("jax_enable_x64", old)


@pytest.mark.parametrize("device", DEVICES)
def test_torch_matches_native_gradients(device):
    """Loss and gradients through the torch op equal native value_and_grad in float64 to round-off
    (on CUDA: zero-copy tensors, launched on a non-default torch stream)."""
    torch = pytest.importorskip("torch")
    from difflbm.bridges.torch import rollout_op

    p = _channel(device=device)
    st = _state(p)
    op = rollout_op(p, STEPS, L.KineticEnergy(), controls=CONTROLS)
    tdev = torch.device(device)
    xs = [torch.tensor(v, requires_grad=True, device=tdev) for v in _controls(p, st)]
    if tdev.type == "cuda":
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            value = op(*xs)
            value.backward()
        torch.cuda.current_stream().wait_stream(side)
        torch.cuda.synchronize()
    else:
        value = op(*xs)
        value.backward()
    ref_value, ref = _native(p, st)
    assert value.dtype == torch.float64 and value.shape == () and value.device.type == tdev.type
    assert abs(value.item() - ref_value) <= 1e-14 * abs(ref_value)
    for name, x in zip(CONTROLS, xs):
        b = getattr(ref, name)
        assert x.grad.device.type == tdev.type
        np.testing.assert_allclose(x.grad.cpu().numpy(), b, rtol=1e-12, atol=1e-15 * np.abs(b).max(), err_msg=name)


def test_torch_gradcheck_inlet():
    """torch.autograd.gradcheck passes in float64 for a tiny rollout w.r.t. two inlet velocity values."""
    torch = pytest.importorskip("torch")
    from difflbm.bridges.torch import rollout_op

    p = _channel((6, 5))
    op = rollout_op(p, 5, L.KineticEnergy(), controls=("inlet_velocity",), initial=_state(p, 1))
    base = torch.tensor(p.parameters().inlet_velocity.numpy())
    cells = [1, 3]

    def f(ux):
        # Only a few entries vary so gradcheck's finite differences stay cheap.
        inlet = base.clone()
        inlet[0, cells, 0] = ux
        return op(inlet)

    ux = torch.tensor([0.03, 0.025], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(f, (ux,), eps=1e-6, atol=1e-9, rtol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile_fullgraph(device):
    """torch.compile(fullgraph=True) of a module that builds an inlet profile and calls the op runs
    forward and backward without graph breaks and matches eager mode."""
    torch = pytest.importorskip("torch")
    from difflbm.bridges.torch import rollout_op

    p = _channel(device=device)
    op = rollout_op(p, STEPS, L.KineticEnergy(), controls=("inlet_velocity",), initial=_state(p))
    ny = p.shape[1]

    class Profile(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.amplitude = torch.nn.Parameter(torch.tensor(0.03, dtype=torch.float64))
            y = (torch.arange(ny, dtype=torch.float64) + 0.5) / ny
            self.register_buffer("shape", 4 * y * (1 - y))

        def forward(self):
            ux = self.amplitude * self.shape
            inlet = torch.stack([ux, torch.zeros_like(ux), torch.zeros_like(ux)], dim=-1)
            return op(inlet.unsqueeze(0))

    eager = Profile().to(device)
    eager().backward()
    module = Profile().to(device)
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
    value = compiled()
    value.backward()
    assert torch.allclose(value, eager(), rtol=1e-14, atol=0)
    assert torch.allclose(module.amplitude.grad, eager.amplitude.grad, rtol=1e-12, atol=0)
    assert module.amplitude.grad.item() != 0.0


@pytest.mark.parametrize("device", DEVICES)
def test_jax_matches_native_gradients(x64, device):
    """Loss and gradients through the JAX function (jit + value_and_grad) equal native value_and_grad."""
    jax = x64
    from difflbm.bridges.jax import rollout_fn

    p = _channel(device=device)
    st = _state(p)
    f = rollout_fn(p, STEPS, L.KineticEnergy(), controls=CONTROLS)
    xs = [jax.numpy.asarray(v) for v in _controls(p, st)]
    value, grads = jax.jit(jax.value_and_grad(f, argnums=tuple(range(len(xs)))))(*xs)
    ref_value, ref = _native(p, st)
    assert abs(float(value) - ref_value) <= 1e-14 * abs(ref_value)
    for name, g in zip(CONTROLS, grads):
        b = getattr(ref, name)
        assert g.dtype == np.float64
        np.testing.assert_allclose(np.asarray(g), b, rtol=1e-12, atol=1e-15 * np.abs(b).max(), err_msg=name)


def test_jax_jit_grad_matches_finite_differences(x64):
    """jax.jit(jax.grad(f)) w.r.t. the inlet velocity matches central finite differences in float64."""
    jax = x64
    from difflbm.bridges.jax import rollout_fn

    p = _channel((8, 6))
    f = rollout_fn(p, STEPS, L.KineticEnergy(), controls=("inlet_velocity",), initial=_state(p, 2))
    x = jax.numpy.asarray(p.parameters().inlet_velocity.numpy())
    grad = np.asarray(jax.jit(jax.grad(f))(x))
    d = np.random.default_rng(3).standard_normal(x.shape)
    h = 1e-6
    fd = (float(f(x + h * d)) - float(f(x - h * d))) / (2 * h)
    assert abs(fd - np.sum(grad * d)) <= 1e-6 * abs(fd)


def test_torch_bad_input_raises():
    """Wrong dtype, shape or number of tensors raise ValueError naming the control and what is allowed."""
    torch = pytest.importorskip("torch")
    from difflbm.bridges.torch import rollout_op

    p = _channel((6, 5))
    op = rollout_op(p, 2, L.KineticEnergy(), controls=("initial", "inlet_velocity"))
    f0 = torch.tensor(p.state().populations())
    inlet = torch.tensor(p.parameters().inlet_velocity.numpy())
    with pytest.raises(ValueError, match=r"initial has dtype=torch.float32.*allowed: torch.float64"):
        op(f0.float(), inlet)
    with pytest.raises(ValueError, match=r"inlet_velocity has shape=\(1, 5, 2\); allowed: \(1, 5, 3\)"):
        op(f0, inlet[..., :2])
    with pytest.raises(ValueError, match="takes 2"):
        op(f0)
    with pytest.raises(ValueError, match="not differentiable"):
        rollout_op(p, 2, L.KineticEnergy(), controls=("viscosity",))


def test_jax_bad_input_raises(x64):
    """Wrong dtype or shape of a JAX input raise ValueError naming the control and what is allowed."""
    jax = x64
    from difflbm.bridges.jax import rollout_fn

    p = _channel((6, 5))
    f = rollout_fn(p, 2, L.KineticEnergy(), controls=("inlet_velocity",))
    inlet = jax.numpy.asarray(p.parameters().inlet_velocity.numpy())
    with pytest.raises(ValueError, match=r"inlet_velocity has dtype=float32.*allowed: float64"):
        f(inlet.astype(jax.numpy.float32))
    with pytest.raises(ValueError, match=r"inlet_velocity has shape=\(5, 3\); allowed: \(1, 5, 3\)"):
        jax.jit(f)(inlet[0])


def _wall_box(shape=(7, 6), device="cpu"):
    return lbm.Problem(shape, "D2Q9", omega=1.3, precision="float64", device=device,
                       boundaries=[lbm.Wall(face="y-"), lbm.Wall(face="y+", velocity=(0.04, 0.0))])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["walls", "open"])
def test_torch_step_op(device, kind):
    """The single-step op returns exactly the solver's step; four composed steps with a torch loss in
    between get gradients (populations, omega, a boundary control) that match central finite
    differences in float64."""
    torch = pytest.importorskip("torch")
    from difflbm.bridges.torch import step_op
    from difflbm.solver import Solver

    p = _wall_box(device=device) if kind == "walls" else _channel((8, 6), device=device)
    extra = "wall_velocity" if kind == "walls" else "inlet_velocity"
    st = _state(p, 4)
    params = p.parameters()
    step = step_op(p, controls=("initial", "omega", extra))
    tdev = torch.device(device)
    f0 = torch.tensor(st.populations(), device=tdev, requires_grad=True)
    omega = torch.tensor(params.omega.numpy(), device=tdev, requires_grad=True)
    ctrl = torch.tensor(params.numpy()[extra], device=tdev, requires_grad=True)
    out = step(f0, omega, ctrl)
    ref = lbm.State.empty(p)
    Solver(p).step(st, ref, params)
    np.testing.assert_array_equal(out.detach().cpu().numpy(), ref.populations())

    w = torch.tensor(np.random.default_rng(5).standard_normal(out.shape), device=tdev)

    def loss(f, om, c):
        for _ in range(4):
            f = step(f, om, c)
            f = f * (1.0 + 0.1 * torch.tanh(f))  # torch code between the steps (a stand-in closure)
        return (w * f).sum()

    value = loss(f0, omega, ctrl)
    value.backward()
    rng = np.random.default_rng(6)
    for x in (f0, omega, ctrl):
        d = torch.tensor(rng.standard_normal(x.shape), device=tdev)
        h = 1e-6
        with torch.no_grad():
            args = [f0, omega, ctrl]
            k = [a is x for a in args].index(True)
            plus = [a + h * d if i == k else a for i, a in enumerate(args)]
            minus = [a - h * d if i == k else a for i, a in enumerate(args)]
            fd = (loss(*plus) - loss(*minus)).item() / (2 * h)
        ad = float((x.grad * d).sum())
        assert abs(fd - ad) <= 1e-6 * max(abs(fd), 1e-12), (kind, x.shape, fd, ad)


def test_torch_step_op_gradcheck_and_compile():
    """torch.autograd.gradcheck of the step op in float64, and torch.compile(fullgraph=True) of a
    module looping over it, forward and backward, equal to eager mode."""
    torch = pytest.importorskip("torch")
    from difflbm.bridges.torch import step_op

    p = _wall_box((5, 4))
    step = step_op(p, controls=("initial", "omega"))
    f0 = torch.tensor(_state(p, 7).populations(), requires_grad=True)
    omega = torch.tensor([1.3], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda f, om: step(f, om), (f0, omega), eps=1e-6, atol=1e-9, rtol=1e-6)

    class Loop(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.omega = torch.nn.Parameter(torch.tensor([1.3], dtype=torch.float64))

        def forward(self, f):
            for _ in range(3):
                f = step(f, self.omega)
            return (f * f).sum()

    eager = Loop()
    eager(f0.detach()).backward()
    module = Loop()
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
    value = compiled(f0.detach())
    value.backward()
    assert torch.allclose(value, eager(f0.detach()), rtol=1e-14, atol=0)
    assert torch.allclose(module.omega.grad, eager.omega.grad, rtol=1e-12, atol=0)
    assert module.omega.grad.item() != 0.0


def test_torch_step_op_bad_input():
    """The step op refuses controls without populations, wrong shapes and dtypes, and inlet windows."""
    torch = pytest.importorskip("torch")
    from difflbm.bridges.torch import step_op

    p = _wall_box()
    with pytest.raises(ValueError, match="must include 'initial'"):
        step_op(p, controls=("omega",))
    step = step_op(p)
    with pytest.raises(ValueError, match="shape"):
        step(torch.zeros((9, 3, 3), dtype=torch.float64))
    with pytest.raises(ValueError, match="dtype"):
        step(torch.zeros((9,) + p.shape, dtype=torch.float32))
    windows = lbm.Problem((8, 6), "D2Q9", omega=1.2, precision="float64", device="cpu", inlet_windows=2,
                          boundaries=[lbm.Wall(face="y-"), lbm.Wall(face="y+"),
                                      lbm.VelocityInlet(face="x-", velocity=(0.03, 0.0)), lbm.Outflow(face="x+")])
    with pytest.raises(ValueError, match="inlet_windows=2"):
        step_op(windows)
