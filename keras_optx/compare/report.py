"""What `compare` returns: a `Row` per rule and the `Comparison` (ranked table, plain data, plot)."""

import math
import statistics


class Row:
    """One rule's runs in a `Comparison`.

    Attributes:
        rule: its display name (`"ClipNorm+ADAM"`).
        learning_rate: the rate of the full runs (chosen by the search when tuned), or
            None when the rule has no settable rate.
        tuned: True when the rate was chosen by the search.
        note: why it was not tuned, how many seeds diverged, or that it was interrupted.
        seeds: the seeds of its finished runs.
        curves: per seed, the training loss of each epoch (Keras's mean over the epoch's batches).
        losses: per seed, the final training loss (NaN for a diverged run).
        scores: per seed, the score (`Comparison.score_name`) at the end (NaN when diverged).
        ms_per_step: median wall time of a training step over all its runs (first steps,
            which include compilation, left out).
        trials: the search's `(rate, validation loss, epochs)` triples, in the order tried.
    """

    def __init__(self, rule, learning_rate, tuned, note=""):
        self.rule, self.learning_rate, self.tuned, self.note = rule, learning_rate, tuned, note
        self.seeds, self.curves, self.losses, self.scores, self._step_times, self.trials = [], [], [], [], [], []

    @property
    def diverged_runs(self):
        """How many of its runs ended with a non-finite loss."""
        return sum(1 for value in self.losses if not math.isfinite(value))

    @property
    def diverged(self):
        """True when every run diverged (`diverged_runs` counts partial divergence)."""
        return bool(self.losses) and self.diverged_runs == len(self.losses)

    @property
    def ms_per_step(self):
        return 1000 * statistics.median(self._step_times) if self._step_times else math.nan

    def loss(self):
        """(mean, standard deviation) of the final training loss over the runs that did not diverge."""
        return _mean_std(self.losses)

    def score(self):
        """(mean, standard deviation) of the score over the runs that did not diverge."""
        return _mean_std(self.scores)

    def __repr__(self):
        mean, _ = self.score()
        return f"Row({self.rule!r}, learning_rate={self.learning_rate!r}, score={mean:.4g}, runs={len(self.losses)})"


def _mean_std(values):
    """Mean and sample standard deviation of the finite values (std 0 for one value; NaNs when none)."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return math.nan, math.nan
    return statistics.fmean(finite), (statistics.stdev(finite) if len(finite) > 1 else 0.0)


class Comparison:
    """What `compare` returns: one `Row` per rule, in the order given, and how they were run.

    `table()` ranks them (best score first, diverged last), `to_dicts()` gives plain
    data, `plot(path)` draws the loss curves with a band of ± one standard deviation
    over the seeds. `str(result)` is the table.

    Attributes:
        rows: the `Row`s, in the order of `rules`.
        score_name: what `Row.scores` hold, e.g. `"test accuracy"` or `"validation loss"`.
        higher_is_better: the direction in which `table()` ranks the scores.
        seeds: the seeds run per rule.
        tuned: whether the learning rates were searched.
        interrupted: True when Ctrl-C stopped the run; `rows` hold what finished.
    """

    def __init__(self, rows, score_name, higher_is_better, seeds, tuned, interrupted=False, details=""):
        self.rows, self.score_name, self.higher_is_better = rows, score_name, higher_is_better
        self.seeds, self.tuned, self.interrupted, self.details = list(seeds), tuned, interrupted, details

    def ranked(self):
        """The rows, best score first; rows whose every run diverged last."""

        def key(row):
            mean, _ = row.score()
            if not math.isfinite(mean):
                return (1, 0.0)
            return (0, -mean if self.higher_is_better else mean)

        return sorted(self.rows, key=key)

    def _format_score(self, value):
        if "accuracy" in self.score_name and 0 <= value <= 1:
            return f"{100 * value:.1f}%"
        return f"{value:.4f}"

    def _cells(self):
        """The header and the ranked rows' cells: rank, rule, η, final training loss, score, ms per step, note
        (the score column left out where it is the training loss)."""
        several = len(self.seeds) > 1
        header = ["#", "rule", "η", "train loss", self.score_name, "ms/step", "note"]
        lines = []
        for rank, row in enumerate(self.ranked(), 1):
            loss, loss_std = row.loss()
            score, score_std = row.score()
            if row.diverged:
                loss_cell = score_cell = "diverged"
            else:
                loss_cell = f"{loss:.4f}" + (f" ± {loss_std:.4f}" if several else "")
                score_cell = self._format_score(score)
                if several:
                    score_cell += " ± " + (
                        f"{100 * score_std:.1f}" if score_cell.endswith("%") else f"{score_std:.4f}"
                    )
            rate = "—" if row.learning_rate is None else f"{row.learning_rate:.3g}"
            ms = "—" if math.isnan(row.ms_per_step) else f"{row.ms_per_step:.2f}"
            lines.append([str(rank), row.rule, rate, loss_cell, score_cell, ms, row.note])
        if self.score_name == "train loss":  # the score is the loss column: shown once
            header, lines = [c for i, c in enumerate(header) if i != 4], [[c for i, c in enumerate(r) if i != 4] for r in lines]
        return header, lines

    def table(self):
        """A fixed-width text table, ranked: rule, η, final training loss, score, ms per step, note.

        With several seeds a cell reads `mean ± std` (sample standard deviation over the seeds).
        A rule whose every run diverged reads `diverged` in its loss and score cells.
        """
        header, lines = self._cells()
        right = {i for i, name in enumerate(header) if name not in ("rule", "note")}
        widths = [max(len(r[i]) for r in [header] + lines) for i in range(len(header))]

        def fmt(cells):
            out = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))]
            return "  ".join(out).rstrip()

        text = [fmt(header), "-" * len(fmt(header))] + [fmt(cells) for cells in lines]
        if self.details:
            text.append(self.details)
        if self.interrupted:
            text.append("interrupted (Ctrl-C): the rows above are the runs that finished")
        return "\n".join(text)

    def markdown(self):
        """The same table as Markdown (for a README or a report), without the notes below it."""
        header, lines = self._cells()
        align = ["---" if name in ("rule", "note") else "---:" for name in header]
        return "\n".join("| " + " | ".join(cells) + " |" for cells in [header, align] + lines)

    def __str__(self):
        return self.table()

    def __repr__(self):
        return f"Comparison({len(self.rows)} rules, {len(self.seeds)} seed(s), score={self.score_name!r})"

    def to_dicts(self):
        """One plain dict per row, in the order given (means and standard deviations over the seeds)."""
        out = []
        for row in self.rows:
            loss, loss_std = row.loss()
            score, score_std = row.score()
            out.append(
                {
                    "rule": row.rule,
                    "learning_rate": row.learning_rate,
                    "tuned": row.tuned,
                    "seeds": list(row.seeds),
                    "train_loss": loss,
                    "train_loss_std": loss_std,
                    "score_name": self.score_name,
                    "score": score,
                    "score_std": score_std,
                    "ms_per_step": row.ms_per_step,
                    "diverged": row.diverged,
                    "diverged_runs": row.diverged_runs,
                    "note": row.note,
                    "curves": [list(c) for c in row.curves],
                    "trials": list(row.trials),
                }
            )
        return out

    def plot(self, path, title=None):
        """Write the training-loss curves to the PNG file `path` (needs matplotlib).

        One line per rule: the mean over the seeds of the loss after each epoch, with a shaded
        band of ± one standard deviation when there are several seeds; runs that diverged are
        left out. Returns `path`.
        """
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import numpy as np

        fig, ax = plt.subplots(figsize=(8, 5))
        styles = ("-", "--", ":", "-.")
        positive = True
        for i, row in enumerate(self.rows):
            curves = [c for c, final in zip(row.curves, row.losses) if math.isfinite(final)]
            if not curves:
                continue
            n = min(len(c) for c in curves)
            values = np.array([c[:n] for c in curves], dtype="float64")
            mean = values.mean(axis=0)
            epochs = np.arange(1, n + 1)
            label = row.rule if row.learning_rate is None else f"{row.rule} (η={row.learning_rate:.3g})"
            (line,) = ax.plot(epochs, mean, styles[(i // 10) % 4], marker="o", markersize=3, label=label)
            if len(values) > 1:
                std = values.std(axis=0, ddof=1)
                ax.fill_between(epochs, mean - std, mean + std, color=line.get_color(), alpha=0.2, linewidth=0)
            positive = positive and bool((mean - (values.std(axis=0, ddof=1) if len(values) > 1 else 0) > 0).all())
        if positive:
            ax.set_yscale("log")
        ax.set_xlabel("epoch")
        band = f"; bands: ± std over {len(self.seeds)} seeds" if len(self.seeds) > 1 else ""
        ax.set_ylabel("training loss (mean over the epoch)")
        ax.set_title((title or "keras_optx rules compared") + band, fontsize="medium")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small", ncol=2)
        ax.grid(True, which="both", alpha=0.3)
        fig.tight_layout()
        fig.savefig(path, format="png", dpi=100)
        plt.close(fig)
        return path
