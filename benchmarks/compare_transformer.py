"""Do the matrix rules Muon and SOAP help over AdamW on a small transformer? Each rule's η tuned, equal steps, 3 seeds.

    KERAS_BACKEND=jax .venv/bin/python benchmarks/compare_transformer.py          # the full run: ~3 min (2 cores, shared)
    .venv/bin/python benchmarks/compare_transformer.py --backend torch --quick     # a tiny run (~30 s on jax): that it runs
    .venv/bin/python benchmarks/compare_transformer.py --blocks 1 --epochs 40      # other sizes; --seeds, --rules

The task: scikit-learn's digits (shipped with scikit-learn, no download), split as `python -m keras_optx.compare`
splits it (`keras_optx.compare.data.load_digits(0)`: scaled to [0, 1], 1438 train / 359 test by a seeded
shuffle), each 8×8 image read as a sequence of 8 tokens (its rows) of 8 pixel features. The model: Dense(32)
token embedding + a learned position embedding (8×32), `--blocks` (default 2) pre-norm transformer blocks
(LayerNormalization → keras.layers.MultiHeadAttention(4 heads, key_dim 8) → residual; LayerNormalization →
Dense(64, gelu) → Dense(32) → residual), a final LayerNormalization, mean pooling over the tokens,
Dense(10, softmax): 18,026 parameters with 2 blocks (9,482 with 1). Sparse categorical cross-entropy, batches
of 64 (23 steps an epoch), `--epochs` (default 20: 460 steps per run) for every rule.

`keras_optx.compare.compare(..., tune=True, seeds=3)` does the rest: for each seed every rule starts from the
same weights and sees the batches in the same order; each rule's η is first chosen by successive halving over
×0.01 … ×100 its default (half-decade steps: 9 rates × 1 epoch, the best 3 to 3 epochs, up to two steps beyond
the grid when the best is at its edge) on a seeded 20% of the training data held out (never the test set),
from seed 0's weights; then the full runs at that η, scored by test accuracy (mean ± sample std over seeds).

The rules (`--rules`, default adamw,muon,soap), by their compare names:
- `adamw`: ADAMW() on every variable. Its default decay is 0 (Flux's ADAMW(η, β, decay=0)): exactly ADAM.
- `muon`: Muon on the 2-D variables (the token embedding's, the MLPs' and the head's kernels), ADAMW() at its
  default on the rest: biases, norms, the position embedding and MultiHeadAttention's rank-3 kernels (whose
  matrix, (d_model, heads·head_dim), is not the (k…·in, out) flattening Muon gives a convolution kernel).
- `soap`: SOAP on every variable of rank ≤ 2, ADAMW() at its default on the rank-3 attention kernels (SOAP
  refuses rank > 2).
In both, the rule's own η is the one tuned (ADAMW's stays at its default).

Progress goes to stderr; to stdout the machine, the markdown table (ranked by test accuracy), the per-seed
figures, the rates each search tried, and the wall time. The process runs on `--threads` cores (default 1:
steady on a shared machine). Time goes to compiling, not training (a step takes milliseconds, compiling a
model's step 10–50 s here): on jax, XLA's executables are cached on disk for the run (a temporary folder,
removed at the end), so a rule's later seeds reuse its first compile; `--quick` also turns XLA's
optimisation passes off. Only the smoke run (`--quick`) is tested (tests/test_benchmarks.py); nothing here
asserts a figure.
"""

import argparse
import os
import sys
import time

from _common import limit_threads, machine, per_backend

D_MODEL, HEADS, MLP_WIDTH, TOKENS, FEATURES, CLASSES, BATCH = 32, 4, 64, 8, 8, 10, 64
DEFAULT_RULES = "adamw,muon,soap"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=["jax", "torch", "tensorflow", "all"],
                        default=os.environ.get("KERAS_BACKEND", "jax"))
    parser.add_argument("--epochs", type=int, default=None, help="epochs of each full run (default 20; --quick 1)")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per rule (default 3; --quick 1)")
    parser.add_argument("--blocks", type=int, default=None, help="transformer blocks (default 2; --quick 1)")
    parser.add_argument("--rules", default=DEFAULT_RULES,
                        help=f"comma-separated, from adamw, adam, muon, soap (default {DEFAULT_RULES})")
    parser.add_argument("--threads", type=int, default=1, help="cores to run on (default 1)")
    parser.add_argument("--quick", action="store_true",
                        help="a tiny run (1 block, 1 epoch, 1 seed, 3 rates × 1 epoch, 320 train / 128 test): that it runs")
    args = parser.parse_args()
    for name in ("epochs", "seeds", "blocks"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name} must be ≥ 1")
    if per_backend(args, __file__, order=("jax", "torch", "tensorflow")):
        return
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if args.quick:  # XLA's optimisation passes off: compiles ~2x faster, steps slower (a smoke run times nothing)
        os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
    limit_threads(args.threads)
    cache = None
    if os.environ["KERAS_BACKEND"] == "jax":
        # Each new model compiles its step again (~10-50 s each on a 2-core machine here; a step runs in
        # milliseconds): the XLA executables cached on disk for this run make a rule's seeds compile once.
        import tempfile

        import jax

        cache = tempfile.mkdtemp(prefix="compare_transformer_xla_")
        jax.config.update("jax_compilation_cache_dir", cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    try:
        run(args)
    finally:
        if cache is not None:
            import shutil

            shutil.rmtree(cache, ignore_errors=True)


def say(text):
    print(text, file=sys.stderr, flush=True)


def load(quick):
    """Digits as (n, 8 tokens, 8 features): compare's CLI split (seed 0), rows of the image as tokens."""
    from keras_optx.compare.data import load_digits

    (x, y), (x_test, y_test) = load_digits(0)
    x, x_test = x.reshape(-1, TOKENS, FEATURES), x_test.reshape(-1, TOKENS, FEATURES)
    if quick:  # sizes in whole batches (256 + 64 held out for the search, 128 test): fewer shapes to compile
        x, y, x_test, y_test = x[:320], y[:320], x_test[:128], y_test[:128]
    return (x, y), (x_test, y_test)


def build_model(blocks):
    import keras

    class PositionEmbedding(keras.layers.Layer):
        """A learned (tokens, d_model) table added to the token embeddings."""

        def build(self, shape):
            self.table = self.add_weight(shape=tuple(shape[1:]), initializer=keras.initializers.RandomNormal(stddev=0.02),
                                         name="position_embedding")

        def call(self, x):
            return x + self.table

    def make():
        inputs = keras.Input((TOKENS, FEATURES))
        x = PositionEmbedding()(keras.layers.Dense(D_MODEL)(inputs))
        for _ in range(blocks):
            h = keras.layers.LayerNormalization(epsilon=1e-6)(x)
            x = keras.layers.Add()([x, keras.layers.MultiHeadAttention(HEADS, D_MODEL // HEADS)(h, h)])
            h = keras.layers.LayerNormalization(epsilon=1e-6)(x)
            h = keras.layers.Dense(D_MODEL)(keras.layers.Dense(MLP_WIDTH, activation="gelu")(h))
            x = keras.layers.Add()([x, h])
        x = keras.layers.GlobalAveragePooling1D()(keras.layers.LayerNormalization(epsilon=1e-6)(x))
        return keras.Model(inputs, keras.layers.Dense(CLASSES, activation="softmax")(x))

    return make


def rules(names):
    """{label: compare name}."""
    from keras_optx.compare.rules import display_name

    unknown = [n for n in names if n not in ("adamw", "adam", "muon", "soap")]
    if unknown:
        raise SystemExit(f"--rules: unknown {unknown[0]!r}; choose from adamw, adam, muon, soap")
    return {display_name(name): name for name in names}


def run(args):
    import keras

    from keras_optx.compare import compare

    began = time.perf_counter()
    args.blocks = args.blocks or (1 if args.quick else 2)
    epochs = args.epochs or (1 if args.quick else 20)
    seeds = args.seeds or (1 if args.quick else 3)
    (x, y), test = load(args.quick)
    make = build_model(args.blocks)
    keras.utils.set_random_seed(0)
    model = make()
    chosen = rules([n.strip().lower() for n in args.rules.split(",") if n.strip()])
    if not chosen:
        raise SystemExit("no rule left to compare")
    say(f"compare_transformer: backend {keras.backend.backend()}, {model.count_params()} parameters, {args.blocks} block(s), "
        f"{len(x)} train / {len(test[0])} test, {len(chosen)} rules × {epochs} epochs × {seeds} seed(s), batch {BATCH}")
    tuning = dict(tune_epochs=1, tune_factors=(0.1, 1.0, 10.0)) if args.quick else {}
    result = compare(make, (x, y), chosen, loss="sparse_categorical_crossentropy", metrics=["accuracy"],
                     epochs=epochs, batch_size=BATCH, seeds=seeds, tune=True, test_data=test, progress=True, **tuning)
    wall = time.perf_counter() - began
    print(machine(keras.backend.backend(), keras))
    print(f"\nTiny transformer ({args.blocks} block(s), d_model {D_MODEL}, {HEADS} heads, MLP {MLP_WIDTH}, "
          f"{model.count_params()} parameters) on digits as 8 tokens × 8 features: {len(x)} train / {len(test[0])} test, "
          f"{epochs} epochs × batch {BATCH}, {args.threads} thread(s){', --quick' if args.quick else ''}\n")
    print(result.markdown())
    print("\n" + result.details)
    print("\nPer seed (" + ", ".join(map(str, result.seeds)) + "): test accuracy / final train loss:")
    for row in result.rows:
        print(f"- {row.rule}: " + ", ".join(f"{100 * a:.1f}% / {l:.4f}" for a, l in zip(row.scores, row.losses)))
    print("\nRates the search tried (η: validation loss after its last round):")
    for row in result.rows:
        tried = sorted({rate: (val, ep) for rate, val, ep in row.trials}.items())
        print(f"- {row.rule}: " + ", ".join(f"{rate:.3g}: {val:.3f}" + ("" if ep == max(e for _, (_, e) in tried) else f" ({ep} ep)")
                                            for rate, (val, ep) in tried))
    print(f"\nwall time {wall:.0f} s" + (" (interrupted)" if result.interrupted else ""), flush=True)


if __name__ == "__main__":
    main()
