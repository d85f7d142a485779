"""The gallery's (keras_optx/gallery.py) batched paths on jax and tensorflow: every rate of a rule moved in one
compiled step. Kept here, in the backend package, as every use of a backend library is; `lanes` is the gallery's
stepping loop, handed in."""

import keras
import numpy as np


def run_traced(entry, function, made, steps, seed, compiled, lanes):
    """{rate: path} on tensorflow: every rate's optimizer applied to its own point in one `tf.function` per step.
    `compiled` caches it by label: on the next function the first optimizers and points are reused (tracing
    dominates), given the state the fresh optimizers in `made` build on this function's start."""
    import tensorflow as tf

    start = np.asarray(function.start, "float32").reshape(entry.shape)
    points = [keras.Variable(start, name="point") for _ in made]
    for point, (_, opt) in zip(points, made):
        opt.build([point])
    key = (entry.label, tuple(rate for rate, _ in made))
    if key in compiled:
        kept, kept_points, move = compiled[key]
        for (_, opt), (_, fresh), point in zip(kept, made, kept_points):
            for variable, value in zip(opt.variables, fresh.variables):
                variable.assign(value.value)
            point.assign(start)
        points = kept_points
    else:

        @tf.function
        def move(g):
            for grad, point, (_, opt) in zip(tf.unstack(g), points, made):
                opt.apply([grad], [point])
            return tf.stack([point.value for point in points])

        compiled[key] = (made, points, move)

    def step(i, g, live):
        return move(tf.constant(g.reshape(len(points), *entry.shape))).numpy().reshape(len(points), 2)

    return dict(zip((rate for rate, _ in made), lanes(function, steps, seed, len(made), step)))


def stateless_step(optimizer):
    """(state, point, grad) -> (state, point): one `stateless_apply` of `optimizer` on one point."""

    def one(state, point, grad):
        (point,), state = optimizer.stateless_apply(list(state), [grad], [point])
        return state, point

    return one


def run_vmapped(entry, function, made, steps, seed, compiled, lanes):
    """{rate: path} on jax: one compiled step of the first optimizer, mapped over every rate's state (the rates
    differ only in their optimizer variables' values; where they do not, as ExpDecay's rate, one compiled step
    per rate); `compiled` caches the steps by label."""
    import jax
    import jax.numpy as jnp

    start = np.asarray(function.start, "float32").reshape(entry.shape)
    points = [keras.Variable(start, name="point") for _ in made]
    for point, (_, opt) in zip(points, made):
        opt.build([point])
    states = [[v.value for v in opt.variables] for _, opt in made]
    distinct = len({tuple(np.asarray(v).tobytes() for v in state) for state in states}) == len(made)
    if distinct:
        key = (entry.label, len(made))
        if key not in compiled:
            compiled[key] = jax.jit(jax.vmap(stateless_step(made[0][1])))
        moves = [compiled[key]]
        state = [[jnp.stack(values) for values in zip(*states)]]
        current = [jnp.asarray(np.broadcast_to(start, (len(made), *entry.shape)))]
    else:
        for rate, opt in made:
            compiled.setdefault((entry.label, rate), jax.jit(stateless_step(opt)))
        moves = [compiled[(entry.label, rate)] for rate, _ in made]
        state = states
        current = [jnp.asarray(start) for _ in made]

    def step(i, g, live):
        g = g.reshape(len(moves), -1, *entry.shape)
        for k, move in enumerate(moves):
            state[k], current[k] = move(state[k], current[k], jnp.asarray(g[k].reshape(current[k].shape)))
        return np.concatenate([np.asarray(c, "float64").reshape(-1, 2) for c in current])

    return dict(zip((rate for rate, _ in made), lanes(function, steps, seed, len(made), step)))
