"""Muon (keras_optx/matrix.py) against torch.optim.Muon, and how it differs from Keras's and optax's Muon.

The float64 oracle (tests/reference.py `Muon`) is compared step by step in test_conformance.py (its
rows in tests/cases.py, Newton–Schulz in float32). Here the second witness, the real torch.optim.Muon
(torch 2.13, CPU, whatever the Keras backend), eager and compiled:

- with its Newton–Schulz swapped for the same iteration in float32 (`_torch_ns_float32`): everything
  else of torch's step (momentum as `lerp`, Nesterov, `adjust_lr_fn`, decoupled weight decay) to
  float32 tolerance;
- as shipped, in bfloat16: each step's Δ to 10% of its Frobenius norm. bfloat16 keeps 8 bits, and
  five iterations with |a| ≈ 3.4 amplify each rounding: torch's own steps differ from the float64
  oracle's by up to 7% (Frobenius, measured on these streams). This rule rounds where torch's
  kernels do (eager torch: within 1% of torch's steps), but a compiler that orders a sum otherwise
  flips roundings, which the iteration amplifies as much (XLA: 4%).
"""

import keras
import numpy as np
import pytest
import torch
from conftest import BACKEND
from test_conformance import MODES, compiled_apply

import keras_optx as ox

SHAPES = [(4, 6), (7, 3), (5, 5), (16, 8)]
STEPS = 12


def _torch_ns_float32(grad, ns_coefficients, ns_steps, eps):
    """torch's Newton–Schulz iteration (torch/optim/_muon.py) in float32 instead of bfloat16."""
    a, b, c = ns_coefficients
    x = grad.float()
    tall = grad.size(0) > grad.size(1)
    x = x.T if tall else x
    x = x / x.norm().clamp(min=eps)
    for _ in range(ns_steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if tall else x


def _streams(shapes, seed=0):
    rng = np.random.default_rng(seed)
    x0 = [rng.standard_normal(s).astype("float32") for s in shapes]
    grads = [[(rng.standard_normal(s) * (10.0 if n % 4 == 0 else 1.0)).astype("float32") for s in shapes]
             for n in range(STEPS)]
    return x0, grads


def _keras_steps(optimizer, x0, grads, mode="eager"):
    """The variables before and after each step: [(before, after)] per step, as NumPy."""
    variables = [keras.Variable(x) for x in x0]
    apply = (lambda gs: optimizer.apply(gs, variables)) if mode == "eager" else compiled_apply(optimizer, variables)
    out = []
    for gs in grads:
        before = [np.array(keras.ops.convert_to_numpy(v.value)) for v in variables]
        apply([keras.ops.convert_to_tensor(g) for g in gs])
        out.append((before, [np.array(keras.ops.convert_to_numpy(v.value)) for v in variables]))
    return out


def _torch_steps(x0, grads, **kwargs):
    params = [torch.nn.Parameter(torch.tensor(x)) for x in x0]
    optimizer = torch.optim.Muon(params, **kwargs)
    out = []
    for gs in grads:
        before = [p.detach().numpy().copy() for p in params]
        for p, g in zip(params, gs):
            p.grad = torch.tensor(g)
        optimizer.step()
        out.append((before, [p.detach().numpy().copy() for p in params]))
    return out


SETTINGS = [
    dict(lr=0.02, momentum=0.95, nesterov=True, weight_decay=0.0, adjust_lr_fn=None),
    dict(lr=0.05, momentum=0.8, nesterov=False, weight_decay=0.1, adjust_lr_fn="match_rms_adamw",
         ns_coefficients=(3.0, -3.2, 1.2), ns_steps=3, eps=1e-6),
    dict(lr=0.01, momentum=0.9, nesterov=True, weight_decay=0.5, adjust_lr_fn="original"),
]


def _ours(setting, ns_dtype):
    s = dict(setting)
    return ox.Muon(
        s.pop("lr"), s.pop("momentum"), s.pop("nesterov"), s.pop("ns_steps", 5),
        s.pop("ns_coefficients", (3.4445, -4.775, 2.0315)), s.pop("eps", 1e-7), s.pop("adjust_lr_fn"),
        ns_dtype, weight_decay=s.pop("weight_decay") or None,
    )


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: f"{s['adjust_lr_fn']}-wd{s['weight_decay']}")
def test_equals_torch_muon_with_float32_newton_schulz(setting, mode, monkeypatch):
    monkeypatch.setattr(torch.optim._muon, "_zeropower_via_newtonschulz", _torch_ns_float32)
    x0, grads = _streams(SHAPES)
    ours = _keras_steps(_ours(setting, "float32"), x0, grads, mode)
    theirs = _torch_steps(x0, grads, **setting)
    for n, ((_, xs), (_, ys)) in enumerate(zip(ours, theirs), 1):
        for i, (x, y) in enumerate(zip(xs, ys)):
            np.testing.assert_allclose(x, y, rtol=2e-5, atol=2e-6 * (1 + np.abs(y).max()), err_msg=f"variable {i} step {n}")


@pytest.mark.parametrize("mode", MODES)
def test_equals_torch_muon_in_bfloat16_to_its_rounding(mode):
    setting = SETTINGS[0]
    x0, grads = _streams(SHAPES, seed=1)
    ours = _keras_steps(_ours(setting, "bfloat16"), x0, grads, mode)
    theirs = _torch_steps(x0, grads, **setting)
    for n, ((xb, xa), (yb, ya)) in enumerate(zip(ours, theirs), 1):
        for i in range(len(SHAPES)):
            ours_step, torch_step = xb[i] - xa[i], yb[i] - ya[i]
            error = np.linalg.norm(ours_step - torch_step) / np.linalg.norm(torch_step)
            assert error < 0.1, f"variable {i} step {n}: relative difference {error:.3g}"
    # and not equal to a float32 iteration's steps by chance: bfloat16 is really used
    exact = _keras_steps(_ours(setting, "float32"), x0, grads[:1])
    assert np.abs((exact[0][0][0] - exact[0][1][0]) - (ours[0][0][0] - ours[0][1][0])).max() > 1e-5


def _as_numpy(tensors):
    return [np.asarray(keras.ops.convert_to_numpy(t), "float32") for t in tensors]


def test_matrices_of_one_shape_run_as_one_batch_and_equal_one_at_a_time():
    """(4, 6), its transpose (6, 4) and another (4, 6) run as one batch; each equals its own iteration."""
    rng = np.random.default_rng(3)
    shapes = [(4, 6), (6, 4), (5, 5), (4, 6), (2, 3, 4)]
    updates = [keras.ops.convert_to_tensor(rng.standard_normal(s).astype("float32")) for s in shapes]
    muon = ox.Muon(ns_dtype="float32")
    together = _as_numpy(muon.orthogonalise(updates))
    for u, got in zip(updates, together):
        (alone,) = _as_numpy(muon.orthogonalise([u]))
        assert got.shape == tuple(u.shape)
        np.testing.assert_allclose(got, alone, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(BACKEND != "torch", reason="the Newton–Schulz kernel is torch's (jax and tensorflow run the formula, compiled by XLA)")
@pytest.mark.parametrize("ns_dtype", ["float32", "bfloat16"])
def test_torch_kernel_equals_the_formula(ns_dtype, monkeypatch):
    """torch's batched baddbmm chain against the rule's formula (the kernel switched off)."""
    rng = np.random.default_rng(4)
    updates = [keras.ops.convert_to_tensor(rng.standard_normal(s).astype("float32")) for s in [(8, 16), (16, 8), (8, 16), (12, 12)]]
    muon = ox.Muon(ns_dtype=ns_dtype)
    kernel = _as_numpy(muon.orthogonalise(updates))
    monkeypatch.setattr(ox.matrix.backend, "newton_schulz", lambda *args: None)
    formula = _as_numpy(muon.orthogonalise(updates))
    for got, expected in zip(kernel, formula):
        if ns_dtype == "float32":
            np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
        else:  # both round each product once to bfloat16; the kernels may order the sums otherwise
            assert np.linalg.norm(got - expected) / np.linalg.norm(expected) < 0.02


@pytest.mark.skipif(BACKEND != "torch", reason="the Newton–Schulz kernel is torch's (jax and tensorflow run the formula, compiled by XLA)")
def test_torch_batched_products_equal_one_matrix_at_a_time():
    """The GPU path (baddbmm over the batch) against the CPU path (addmm per matrix), here on the CPU."""
    from keras_optx._backends.torch import matrix

    x = torch.randn(3, 8, 16, generator=torch.Generator().manual_seed(5)) / 12
    batched = matrix._iterate_batch(x, 3.4445, -4.775, 2.0315, 5)
    alone = torch.stack([matrix._iterate(m, 3.4445, -4.775, 2.0315, 5) for m in x])
    torch.testing.assert_close(batched, alone, rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(BACKEND != "torch", reason="the Muon kernel is torch's (jax and tensorflow run the formula, compiled by XLA)")
@pytest.mark.parametrize("ns_dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: f"{s['adjust_lr_fn']}-nesterov{s['nesterov']}")
def test_torch_muon_kernel_equals_the_formula(setting, ns_dtype):
    """The whole step as a torch kernel (in-place momentum, per-matrix iteration) against the rule's formula."""
    shapes = [(4, 6), (6, 4), (4, 6), (5, 5), (3, 2, 4)]
    x0, grads = _streams(shapes, seed=6)
    kernel_opt, formula_opt = _ours(setting, ns_dtype), _ours(setting, ns_dtype)
    formula_opt._torch_kernel = None  # an instance's own kernel (none) replaces its class's: the formula runs
    ours, formula = _keras_steps(kernel_opt, x0, grads), _keras_steps(formula_opt, x0, grads)
    for n, ((_, xs), (_, ys)) in enumerate(zip(ours, formula), 1):
        for i, (x, y) in enumerate(zip(xs, ys)):
            if ns_dtype == "float32":
                np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5, err_msg=f"variable {i} step {n}")
            else:  # the same roundings; a sum ordered otherwise flips one, which the iteration amplifies
                step_x, step_y = x0[i] - x if n == 1 else ours[n - 2][1][i] - x, x0[i] - y if n == 1 else formula[n - 2][1][i] - y
                assert np.linalg.norm(step_x - step_y) / np.linalg.norm(step_y) < 0.02, f"variable {i} step {n}"


def test_rank_above_two_runs_as_fan_in_by_outputs(monkeypatch):
    """A (k, k, in, out) kernel steps as torch.optim.Muon on its (k·k·in, out) matrix."""
    monkeypatch.setattr(torch.optim._muon, "_zeropower_via_newtonschulz", _torch_ns_float32)
    shape = (3, 3, 2, 5)
    x0, grads = _streams([shape])
    ours = _keras_steps(_ours(SETTINGS[1], "float32"), x0, grads)
    flat = lambda a: a.reshape(18, 5)  # noqa: E731
    theirs = _torch_steps([flat(x0[0])], [[flat(g[0])] for g in grads], **SETTINGS[1])
    for n, ((_, xs), (_, ys)) in enumerate(zip(ours, theirs), 1):
        np.testing.assert_allclose(flat(xs[0]), ys[0], rtol=2e-5, atol=1e-5, err_msg=f"step {n}")
    with pytest.raises(ValueError, match="2D"):  # torch.optim.Muon itself refuses it
        torch.optim.Muon([torch.nn.Parameter(torch.zeros(shape))])


def test_rank_below_two_is_refused_at_build_naming_partition():
    kernel, bias = keras.Variable(np.ones((3, 4), "float32"), name="kernel"), keras.Variable(np.ones(4, "float32"), name="bias")
    with pytest.raises(ValueError, match=r"rank < 2.*bias.*Partition"):
        ox.Muon().build([kernel, bias])
    partition = ox.Partition({"bias|kernel": ox.Muon(), ".*": ox.ADAM()})
    with pytest.raises(ValueError, match=r"rank < 2.*bias.*Partition"):
        partition.apply([np.ones((3, 4), "float32"), np.ones(4, "float32")], [kernel, bias])
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(kernel.value), np.ones((3, 4)))  # nothing written


def test_state_dtype_keeps_the_momentum_in_bfloat16():
    x = keras.Variable(np.ones((4, 4), "float32"))
    optimizer = ox.Muon(0.02, state_dtype="bfloat16")
    optimizer.apply([np.eye(4, dtype="float32")], [x])
    slots = [v for v in optimizer.variables if "momentum_buffer" in v.path]
    assert [keras.backend.standardize_dtype(s.dtype) for s in slots] == ["bfloat16"]
    np.testing.assert_allclose(keras.ops.convert_to_numpy(slots[0].value).astype("float32"), 0.05 * np.eye(4), rtol=1e-2)


# How it differs from keras.optimizers.Muon -------------------------------------------------------------
def test_differs_from_keras_muon():
    rng = np.random.default_rng(3)
    x0, g1, g2 = (rng.standard_normal((6, 4)).astype("float32") for _ in range(3))
    x, y = keras.Variable(x0, name="kernel"), keras.Variable(x0, name="kernel")
    theirs = keras.optimizers.Muon(0.02, weight_decay=0.0, momentum=0.9)
    ours = ox.Muon(0.02, 0.9, adjust_lr="match_rms_adamw", ns_dtype="float32")
    theirs.apply([keras.ops.convert_to_tensor(g1)], [x])
    ours.apply([keras.ops.convert_to_tensor(g1)], [y])
    # Scale: Keras's rms_rate·√max(rows, cols) is "match_rms_adamw"; at the first step both orthogonalise
    # a multiple of g (ϵ on the norm apart), so the steps agree...
    np.testing.assert_allclose(keras.ops.convert_to_numpy(y.value), keras.ops.convert_to_numpy(x.value), rtol=1e-4, atol=1e-5)
    # ...and torch's default √max(1, rows/cols) = 1.22 here is another step.
    default = keras.Variable(x0)
    ox.Muon(0.02, 0.9, ns_dtype="float32").apply([keras.ops.convert_to_tensor(g1)], [default])
    ratio = (x0 - keras.ops.convert_to_numpy(y.value)) / (x0 - keras.ops.convert_to_numpy(default.value))
    np.testing.assert_allclose(ratio, 0.2 * np.sqrt(6) / np.sqrt(6 / 4), rtol=1e-4)
    # Momentum form: Keras sums (B ← μB + g), this rule averages (B ← μB + (1−μ)g): 1/(1−μ) apart.
    theirs.apply([keras.ops.convert_to_tensor(g2)], [x])
    ours.apply([keras.ops.convert_to_tensor(g2)], [y])
    keras_b = keras.ops.convert_to_numpy(theirs.momentums[0].value)
    ours_b = keras.ops.convert_to_numpy([v for v in ours.variables if "momentum_buffer" in v.path][0].value)
    np.testing.assert_allclose(keras_b * (1 - 0.9), ours_b, rtol=1e-5, atol=1e-6)
    # Which variables: Keras's runs an AdamW inside for a bias; this rule refuses it.
    bias = keras.Variable(np.ones(4, "float32"), name="bias")
    keras.optimizers.Muon(0.02).apply([np.ones(4, "float32")], [bias])
    assert not np.allclose(keras.ops.convert_to_numpy(bias.value), 1.0)
    with pytest.raises(ValueError, match="Partition"):
        ox.Muon(0.02).apply([np.ones(4, "float32")], [keras.Variable(np.ones(4, "float32"))])


# How it differs from optax.contrib.muon ------------------------------------------------------------------
def _optax_steps(x0, grads, **kwargs):
    import jax.numpy as jnp
    import optax

    params = [jnp.asarray(x0)]
    transformation = optax.contrib.muon(**kwargs)
    state = transformation.init(params)
    out = []
    for g in grads:
        updates, state = transformation.update([jnp.asarray(g)], state, params)
        params = optax.apply_updates(params, updates)
        out.append(np.array(params[0]))
    return out


def test_differs_from_optax_muon():
    rng = np.random.default_rng(4)
    x0 = rng.standard_normal((2, 4)).astype("float32")
    grads = [rng.standard_normal((2, 4)).astype("float32") for _ in range(2)]
    theirs = _optax_steps(x0, grads, learning_rate=0.02, beta=0.9, eps=1e-7)
    ours = _keras_steps(ox.Muon(0.02, 0.9, ns_dtype="float32"), [x0], [[g] for g in grads])
    # Scale: optax reads a matrix as (in, out), √max(1, cols/rows) = √2 for (2, 4); torch's (and this
    # rule's) √max(1, rows/cols) = 1. At the first step (a multiple of g on both sides) that is all.
    np.testing.assert_allclose(x0 - theirs[0], np.sqrt(2) * (x0 - ours[0][1][0]), rtol=1e-4, atol=1e-6)
    # Momentum form: optax bias-corrects its Nesterov terms, μ·m/(1−μᵗ⁺¹) + (1−μ)·g/(1−μᵗ), which weighs
    # g and m otherwise than (1−μ)·g + μ·B from the second step on: another direction.
    step_theirs, step_ours = (theirs[0] - theirs[1]) / np.sqrt(2), ours[1][0][0] - ours[1][1][0]
    assert np.linalg.norm(step_theirs - step_ours) > 0.05 * np.linalg.norm(step_ours)
    # Which variables: optax runs an AdamW inside for non-2-D leaves; this rule refuses them.
    import jax.numpy as jnp
    import optax

    transformation = optax.contrib.muon(learning_rate=0.02)
    updates, _ = transformation.update([jnp.ones(4)], transformation.init([jnp.ones(4)]), [jnp.ones(4)])
    assert np.all(np.asarray(updates[0]) != 0)


# compare and the gallery ----------------------------------------------------------------------------------
def test_compare_routes_matrices_to_muon_and_the_rest_to_adamw():
    from test_conformance import regression_data, small_model

    from keras_optx import compare

    optimizer = compare.build_optimizer("muon:0.01")
    assert isinstance(optimizer, ox.Partition) and isinstance(optimizer.rules[0], ox.Muon)
    assert float(keras.ops.convert_to_numpy(optimizer.rules[0].learning_rate)) == pytest.approx(0.01)
    assert repr(optimizer.rules[1]) == repr(ox.ADAMW())
    # the rate `--tune` searches is Muon's (the Partition's own would be the catch-all ADAMW's), through wrappers too
    from keras_optx.compare.rules import _entries

    for spec in ("muon", "lookahead+clipnorm+muon", "soap"):
        (entry,) = _entries([spec])
        assert entry.default_rate == pytest.approx(0.02 if "muon" in spec else 3e-3), spec
        made = entry.make(0.5)
        assert float(keras.ops.convert_to_numpy(entry.holder(made).learning_rate)) == 0.5
        assert type(entry.holder(made)).__name__ == ("Muon" if "muon" in spec else "SOAP")
    # a rank-3 kernel (attention's (d_model, heads, head_dim)) is not Muon's: ADAMW takes it, as SOAP's routing does
    # (and an MLP's variables alone: no key may be left matching nothing)
    for name in ("muon", "soap"):
        for shapes in ([(4, 2, 3), (4, 6), (6,)], [(4, 6), (6,)]):
            rng = np.random.default_rng(0)
            variables = [keras.Variable(rng.standard_normal(s).astype("float32")) for s in shapes]
            compare.build_optimizer(name).apply([np.ones(v.shape, "float32") for v in variables], variables)
    x, y = regression_data()
    model = small_model()
    model.compile(optimizer=optimizer, loss="mse")
    before = model.evaluate(x, y, verbose=0)
    model.fit(x, y, batch_size=32, epochs=2, verbose=0, shuffle=False)
    assert model.evaluate(x, y, verbose=0) < before


def test_gallery_moves_muons_point_as_a_1x2_matrix_along_the_gradient():
    pytest.importorskip("matplotlib", reason="keras_optx.gallery draws with matplotlib")
    from keras_optx import gallery

    entry = next(e for e in gallery.entries() if e.label == "Muon")
    f = gallery.FUNCTIONS["rosenbrock"]
    path = gallery.run_path(entry, f, 0.01, 1)
    step, g = path[0] - path[1], np.array(f.grad(*f.start))
    np.testing.assert_allclose(step / np.linalg.norm(step), g / np.linalg.norm(g), atol=1e-2)  # bfloat16 NS
