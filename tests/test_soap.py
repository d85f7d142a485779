"""SOAP (keras_optx/soap.py) against pytorch_optimizer.SOAP, and its slots of their own shape (`Slot`).

The float64 oracle (tests/reference.py `SOAP`) is compared step by step in test_conformance.py. Here the
second witness, pytorch_optimizer 4.1.0's SOAP (float32, torch on CPU, whatever the Keras backend), eager
and compiled, over 25 steps: at precondition_frequency=3 the eigenbases are refreshed 8 times. Square
matrices: a rank-deficient factor's eigenbasis depends on rounding (SPEC §7); `max_precondition_dim`
below a side leaves that side unpreconditioned. For the same reason `precondition_1d=True` is not compared
numerically: a vector's first factor g⊗g has rank 1, so its eigenbasis (and the refresh's sorting of
near-zero eigenvalues) is rounding's choice in the reference as here; its slots are checked instead.
"""

import keras
import numpy as np
import pytest
import torch
from test_conformance import MODES, compiled_apply

import keras_optx as ox

pytorch_optimizer = pytest.importorskip("pytorch_optimizer", reason="the reference package (requirements: test dependency)")

SHAPES = [(4, 4), (6, 6), (5,), ()]
STEPS = 25
EAGER_STEPS = 12  # still 3–6 preconditioner refreshes; eager dispatch of eigh/QR costs ~1 s a step on jax

SETTINGS = [
    dict(lr=0.01, precondition_frequency=3),
    dict(lr=0.003, betas=(0.9, 0.99), shampoo_beta=0.8, eps=1e-6, precondition_frequency=2, correct_bias=False),
    dict(lr=0.01, precondition_frequency=4, max_precondition_dim=5, normalize_gradient=True),
]


def _ours(setting):
    s = dict(setting)
    return ox.SOAP(s.pop("lr"), s.pop("betas", (0.95, 0.95)), epsilon=s.pop("eps", 1e-8), **s)


def _stream(seed=0):
    rng = np.random.default_rng(seed)
    x0 = [rng.standard_normal(s).astype("float32") for s in SHAPES]
    return x0, [[rng.standard_normal(s).astype("float32") for s in SHAPES] for _ in range(STEPS)]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: "-".join(f"{k}={v}" for k, v in s.items() if k != "lr"))
def test_equals_pytorch_optimizer_soap(setting, mode):
    x0, grads = _stream()
    variables = [keras.Variable(x) for x in x0]
    optimizer = _ours(setting)
    apply = (lambda gs: optimizer.apply(gs, variables)) if mode == "eager" else compiled_apply(optimizer, variables)
    params = [torch.nn.Parameter(torch.tensor(x)) for x in x0]
    reference = pytorch_optimizer.SOAP(params, weight_decay=0.0, **setting)
    for n, gs in enumerate(grads[: EAGER_STEPS if mode == "eager" else STEPS], 1):
        apply([keras.ops.convert_to_tensor(g) for g in gs])
        for p, g in zip(params, gs):
            p.grad = torch.tensor(g)
        reference.step()
        for i, (v, p) in enumerate(zip(variables, params)):
            np.testing.assert_allclose(keras.ops.convert_to_numpy(v.value), p.detach().numpy(), rtol=2e-5, atol=2e-6,
                                       err_msg=f"variable {i} at step {n}")


def test_weight_decay_is_keras_keyword_before_each_step():
    """Keras's weight_decay decays before every step (the first too); pytorch_optimizer after each step but the first."""
    x0, grads = _stream(1)
    x0, grads = x0[:1], [g[:1] for g in grads[:3]]
    decayed, plain = keras.Variable(x0[0]), keras.Variable(x0[0])
    with_decay, without = ox.SOAP(0.01, weight_decay=0.5), ox.SOAP(0.01)
    for gs in grads:
        with_decay.apply(gs, [decayed])
        before = keras.ops.convert_to_numpy(plain.value)
        without.apply(gs, [plain])
    # x₃ = (1−ηλ)·x₂ − Δ₃ where x₂ = (1−ηλ)²x₀ − (1−ηλ)·Δ₂ (Δ₁ = 0), Δ from the undecayed run alike
    keep = 1 - 0.01 * 0.5
    step2 = x0[0] - before  # Δ₂ (x₂ = x₀ − Δ₂ without decay)
    step3 = before - keras.ops.convert_to_numpy(plain.value)
    expected = keep**3 * x0[0] - keep * step2 - step3
    np.testing.assert_allclose(keras.ops.convert_to_numpy(decayed.value), expected, rtol=1e-5, atol=1e-6)
    params = [torch.nn.Parameter(torch.tensor(x0[0]))]
    reference = pytorch_optimizer.SOAP(params, lr=0.01, weight_decay=0.5)
    params[0].grad = torch.tensor(grads[0][0])
    reference.step()
    np.testing.assert_array_equal(params[0].detach().numpy(), x0[0])  # no decay at its first step


def test_factor_slots_have_their_own_shape_and_stay_out_of_packed_buffers():
    variables = [keras.Variable(np.ones((3, 5), "float32"), name="kernel"), keras.Variable(np.ones(4, "float32"), name="bias")]
    optimizer = ox.SOAP(max_precondition_dim=4)
    optimizer.build(variables)
    shapes = {v.path.rsplit("/", 1)[-1]: tuple(v.shape) for v in optimizer.variables}
    assert shapes["kernel_L"] == shapes["kernel_QL"] == (3, 3)
    assert shapes["kernel_R"] == (1, 1)  # 5 > max_precondition_dim: no factor, a placeholder
    assert shapes["bias_L"] == (1, 1) and shapes["bias_m"] == (4,)  # a vector without precondition_1d: Adam
    assert optimizer._shaped_slots
    if keras.backend.backend() == "torch":
        from keras_optx._backends.torch.buffers import pack_of

        factors = [v.value for v in optimizer.variables if v.path.endswith(("_L", "_QL"))]
        moments = [v.value for v in optimizer.variables if v.path.endswith("_m")]
        assert pack_of(factors) is None and pack_of(moments) is not None


def test_precondition_1d_gives_vectors_a_factor():
    bias = keras.Variable(np.ones(4, "float32"), name="bias")
    optimizer = ox.SOAP(0.01, precondition_1d=True, precondition_frequency=2)
    for n in range(5):
        optimizer.apply([np.arange(1.0, 5.0, dtype="float32") * (-1) ** n], [bias])
    factors = {v.path.rsplit("/", 1)[-1]: keras.ops.convert_to_numpy(v.value) for v in optimizer.variables}
    assert factors["bias_L"].shape == factors["bias_QL"].shape == (4, 4) and factors["bias_R"].shape == (1, 1)
    q = factors["bias_QL"]
    np.testing.assert_allclose(q.T @ q, np.eye(4), atol=1e-5)  # an orthogonal basis after the refreshes
    assert np.all(np.isfinite(keras.ops.convert_to_numpy(bias.value)))


def test_rank_above_two_is_refused_naming_partition():
    with pytest.raises(ValueError, match=r"rank > 2.*Partition"):
        ox.SOAP().build([keras.Variable(np.ones((2, 2, 2), "float32"))])


# The torch kernel (keras_optx/_backends/torch/kernels.py `soap`): SOAP's formula matrix by matrix in
# place, held to the formula (`delta`, run with the kernel switched off) step by step, slots included. Full-rank
# factors only (matrices whose sides are at most their number of steps, no `precondition_1d`): a rank-deficient
# factor's eigenbasis is rounding's choice, in the formula run as in the kernel's.
KERNEL_SHAPES = [(4, 4), (6, 6), (3, 7), (8, 5), (5,), ()]
KERNEL_SETTINGS = [*SETTINGS, dict(lr=0.01, precondition_frequency=2, max_precondition_dim=6)]
torch_only = pytest.mark.skipif(keras.backend.backend() != "torch", reason="the kernel is torch's; jax/tf run the formula")


def _kernel_and_formula(setting, steps=12, shapes=KERNEL_SHAPES, seed=3, route=None):
    """A SOAP (or `route(soap)` holding it) with its torch kernel counted, and the same run by its formula,
    applied side by side and compared at each step; returns both optimizers, the kernel's answers, the variables."""
    from keras_optx._backends.torch import kernel_of

    route = route or (lambda rule: rule)
    rng = np.random.default_rng(seed)
    x0 = [rng.standard_normal(s).astype("float32") for s in shapes]
    soap = _ours(setting)
    fast, formula = route(soap), route(_ours(setting))
    formula._torch_kernel = None  # an instance's own kernel (none) replaces its class's: the formula runs
    calls, kernel = [], kernel_of(soap)
    soap._torch_kernel = lambda *a, **k: calls.append(kernel(*a, **k)) or calls[-1]
    xs, ys = ([keras.Variable(x, name="bias" if x.ndim < 2 else "kernel") for x in x0] for _ in range(2))
    for n in range(1, steps + 1):
        gs = [keras.ops.convert_to_tensor(rng.standard_normal(s).astype("float32")) for s in shapes]
        fast.apply(gs, xs)
        formula.apply(gs, ys)
        for i, (x, y) in enumerate(zip(xs, ys)):
            np.testing.assert_allclose(keras.ops.convert_to_numpy(x.value), keras.ops.convert_to_numpy(y.value),
                                       rtol=1e-5, atol=1e-6, err_msg=f"variable {i} at step {n}")
    return fast, formula, calls, xs


@torch_only
@pytest.mark.parametrize("setting", KERNEL_SETTINGS, ids=lambda s: "-".join(f"{k}={v}" for k, v in s.items() if k != "lr"))
def test_torch_kernel_matches_formula(setting):
    fast, formula, calls, _ = _kernel_and_formula(setting)
    assert calls == [True] * 12
    for a, b in zip(fast.variables, formula.variables):
        # QR's signs and eigh's order are the formula's too (same inputs up to rounding): every slot compares
        np.testing.assert_allclose(keras.ops.convert_to_numpy(a.value), keras.ops.convert_to_numpy(b.value),
                                   rtol=1e-4, atol=1e-5, err_msg=a.path)


@torch_only
def test_torch_kernel_keeps_two_matrices_per_shape_and_reads_a_scheduled_beta():
    from keras_optx._backends.torch.buffers import kept_bytes

    fast, _, _, xs = _kernel_and_formula(dict(lr=0.01, precondition_frequency=3), steps=3)
    largest = {tuple(x.shape): 4 * max(1, int(np.prod(x.shape))) for x in xs}
    assert kept_bytes(fast, xs) == 2 * sum(largest.values())  # two buffers per shape, never parameter-sized
    beta1 = keras.optimizers.schedules.ExponentialDecay(0.95, 1, 0.5)  # halves each step: a stale β₁ would show
    _, _, calls, _ = _kernel_and_formula(dict(lr=0.01, betas=(beta1, 0.95), precondition_frequency=3), steps=6)
    assert calls == [True] * 6  # the step's value of the schedule, as the formula's


@torch_only
def test_torch_kernel_runs_as_a_partition_member():
    # compare's and the docs' routing: SOAP for the matrices, Adam for the rest. The Partition's kernel runs
    # each group's kernel, SOAP's reading its factors (a kernel that does not read `Slot`s is not given them).
    route = lambda soap: ox.Partition({"bias": ox.ADAM(0.01), ".*": soap})  # noqa: E731
    _, _, calls, _ = _kernel_and_formula(dict(lr=0.01, precondition_frequency=3), steps=8, route=route)
    assert calls == [True] * 8


@torch_only
def test_a_chain_holding_soap_in_a_partition_runs_its_formula():
    # The chain's kernel pairs each slot with its variable: given SOAP's factors it would misread them, so the
    # Partition's kernel runs that group's formula (SOAP's kernel is not reached: no calls), equal to the formula run.
    route = lambda soap: ox.Partition({"bias": ox.ADAM(0.01), ".*": ox.Optimiser(ox.ClipNorm(1.0), soap)})  # noqa: E731
    _, _, calls, _ = _kernel_and_formula(dict(lr=0.01, precondition_frequency=3), steps=5, route=route)
    assert calls == []
