"""The NumPy float64 oracle: each rule transliterated, one short class each, from the formula its
keras_optx docstring states (keras_optx/descent.py, adaptive.py, adam.py, sign.py, transforms.py,
schedules.py): Flux.jl v0.12's rules (src/optimise/optimisers.jl; Innes 2018, arXiv:1811.01457),
and Lion and Rprop as their docstrings cite them.

A reference rule maps (gradients, variables, n) to the updates Δ (x ← x − Δ) for a list of
variables, keeping per-variable state like Flux's `IdDict`; n = 1, 2, … counts updates.
Rates may be numbers or functions of n (a schedule as a learning rate).
"""

import numpy as np

EPS = 1e-8
# The oracle's precision. Tests of float32 overflow (tests/test_properties.py) set it to
# np.float32 for a run, to see which values float32 itself turns non-finite.
DTYPE = np.float64


def _rate(eta, n):
    return eta(n) if callable(eta) else eta


class Reference:
    """Per-variable state created on first use, as Flux's `get!(o.state, x)`."""

    init = {}

    def __init__(self):
        self.state = {}

    def __call__(self, gs, xs, n):
        out = []
        for i, (g, x) in enumerate(zip(gs, xs)):
            s = self.state.setdefault(i, {k: np.full_like(x, v, dtype=DTYPE) for k, v in self.initial().items()})
            out.append(self.step(s, np.asarray(g, DTYPE), np.asarray(x, DTYPE), n))
        return out

    def initial(self):
        return self.init


class Descent(Reference):
    def __init__(self, eta=0.1):
        super().__init__()
        self.eta = eta

    def step(self, s, g, x, n):  # Δ = η g
        return _rate(self.eta, n) * g


class Momentum(Reference):
    init = {"v": 0.0}

    def __init__(self, eta=0.01, rho=0.9):
        super().__init__()
        self.eta, self.rho = eta, rho

    def step(self, s, g, x, n):  # v = ρv − ηg; Δ = −v
        s["v"] = self.rho * s["v"] - _rate(self.eta, n) * g
        return -s["v"]


class Nesterov(Reference):
    init = {"v": 0.0}

    def __init__(self, eta=0.001, rho=0.9):
        super().__init__()
        self.eta, self.rho = eta, rho

    def step(self, s, g, x, n):  # d = ρ²v − (1+ρ)ηg; v = ρv − ηg; Δ = −d
        eta, rho = _rate(self.eta, n), self.rho
        d = rho**2 * s["v"] - (1 + rho) * eta * g
        s["v"] = rho * s["v"] - eta * g
        return -d


class RMSProp(Reference):
    init = {"a": 0.0}

    def __init__(self, eta=0.001, rho=0.9, eps=EPS):
        super().__init__()
        self.eta, self.rho, self.eps = eta, rho, eps

    def step(self, s, g, x, n):  # a = ρa + (1−ρ)g²; Δ = ηg/(√a + ϵ)
        s["a"] = self.rho * s["a"] + (1 - self.rho) * g**2
        return _rate(self.eta, n) * g / (np.sqrt(s["a"]) + self.eps)


class _Betas(Reference):
    init = {"m": 0.0, "v": 0.0}

    def __init__(self, eta=0.001, beta=(0.9, 0.999), eps=EPS):
        super().__init__()
        self.eta, self.beta, self.eps = eta, beta, eps

    def moments(self, s, g):
        b1, b2 = self.beta
        s["m"] = b1 * s["m"] + (1 - b1) * g
        s["v"] = b2 * s["v"] + (1 - b2) * g**2
        return s["m"], s["v"]


class ADAM(_Betas):
    def step(self, s, g, x, n):  # Δ = η (m/(1−β₁ᵗ)) / (√(v/(1−β₂ᵗ)) + ϵ)
        (b1, b2), m_v = self.beta, self.moments(s, g)
        m, v = m_v
        return _rate(self.eta, n) * (m / (1 - b1**n)) / (np.sqrt(v / (1 - b2**n)) + self.eps)


class RADAM(_Betas):
    def step(self, s, g, x, n):
        b1, b2 = self.beta
        m, v = self.moments(s, g)
        eta = _rate(self.eta, n)
        rho_inf = 2 / (1 - b2) - 1
        rho = rho_inf - 2 * n * b2**n / (1 - b2**n)
        if rho > 4:
            r = np.sqrt((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho))
            return r * eta * (m / (1 - b1**n)) / (np.sqrt(v / (1 - b2**n)) + self.eps)
        return eta * m / (1 - b1**n)


class AdaMax(_Betas):
    init = {"m": 0.0, "u": 0.0}

    def step(self, s, g, x, n):  # u = max(β₂u, |g|); Δ = η/(1−β₁ᵗ) · m/(u + ϵ)
        b1, b2 = self.beta
        s["m"] = b1 * s["m"] + (1 - b1) * g
        s["u"] = np.maximum(b2 * s["u"], np.abs(g))
        return _rate(self.eta, n) / (1 - b1**n) * s["m"] / (s["u"] + self.eps)


class ADAGrad(Reference):
    def __init__(self, eta=0.1, eps=EPS):
        super().__init__()
        self.eta, self.eps = eta, eps

    def initial(self):
        return {"a": self.eps}

    def step(self, s, g, x, n):  # a starts at ϵ; a += g²; Δ = ηg/(√a + ϵ)
        s["a"] = s["a"] + g**2
        return _rate(self.eta, n) * g / (np.sqrt(s["a"]) + self.eps)


class ADADelta(Reference):
    init = {"a": 0.0, "d": 0.0}

    def __init__(self, rho=0.9, eps=EPS):
        super().__init__()
        self.rho, self.eps = rho, eps

    def step(self, s, g, x, n):  # a = ρa + (1−ρ)g²; Δ = g√(d+ϵ)/√(a+ϵ); d = ρd + (1−ρ)Δ²
        rho, eps = self.rho, self.eps
        s["a"] = rho * s["a"] + (1 - rho) * g**2
        delta = g * np.sqrt(s["d"] + eps) / np.sqrt(s["a"] + eps)
        s["d"] = rho * s["d"] + (1 - rho) * delta**2
        return delta


class AMSGrad(_Betas):
    def initial(self):
        return {"m": self.eps, "v": self.eps, "v_hat": self.eps}

    def step(self, s, g, x, n):  # v̂ = max(v̂, v); Δ = ηm/(√v̂ + ϵ), no bias correction
        m, v = self.moments(s, g)
        s["v_hat"] = np.maximum(s["v_hat"], v)
        return _rate(self.eta, n) * m / (np.sqrt(s["v_hat"]) + self.eps)


class NADAM(_Betas):
    def step(self, s, g, x, n):  # Δ = η(β₁m/(1−β₁ᵗ⁺¹) + (1−β₁)g/(1−β₁ᵗ)) / (√(β₂v/(1−β₂ᵗ)) + ϵ)
        b1, b2 = self.beta
        m, v = self.moments(s, g)
        num = b1 * m / (1 - b1 ** (n + 1)) + (1 - b1) * g / (1 - b1**n)
        return _rate(self.eta, n) * num / (np.sqrt(b2 * v / (1 - b2**n)) + self.eps)


class OADAM(_Betas):
    """Flux v0.12.10 `apply!(o::OADAM, x, Δ)`: Δ_ keeps the last ADAM step; out = 2·Δ_new − Δ_old."""

    init = {"m": 0.0, "v": 0.0, "prev": 0.0}

    def __init__(self, eta=0.001, beta=(0.5, 0.9), eps=EPS):
        super().__init__(eta, beta, eps)

    def step(self, s, g, x, n):
        (b1, b2), (m, v) = self.beta, self.moments(s, g)
        new = _rate(self.eta, n) * m / (1 - b1**n) / (np.sqrt(v / (1 - b2**n)) + self.eps)
        out = 2 * new - s["prev"]
        s["prev"] = new
        return out


class AdaBelief(Reference):
    """Flux v0.12.10 `apply!(o::AdaBelief, x, Δ)`: no bias correction; s tracks (g − m)² with the new m."""

    init = {"m": 0.0, "s": 0.0}

    def __init__(self, eta=0.001, beta=(0.9, 0.999), eps=EPS):
        super().__init__()
        self.eta, self.beta, self.eps = eta, beta, eps

    def step(self, s, g, x, n):
        b1, b2 = self.beta
        s["m"] = b1 * s["m"] + (1 - b1) * g
        s["s"] = b2 * s["s"] + (1 - b2) * (g - s["m"]) ** 2
        return _rate(self.eta, n) * s["m"] / (np.sqrt(s["s"]) + self.eps)


class Lion(Reference):
    """Chen et al. 2023, Algorithm 2 (without decay): Δ = η·sign(β₁m + (1−β₁)g); m = β₂m + (1−β₂)g."""

    init = {"m": 0.0}

    def __init__(self, eta=0.001, beta=(0.9, 0.99)):
        super().__init__()
        self.eta, self.beta = eta, beta

    def step(self, s, g, x, n):
        b1, b2 = self.beta
        out = _rate(self.eta, n) * np.sign(b1 * s["m"] + (1 - b1) * g)
        s["m"] = b2 * s["m"] + (1 - b2) * g
        return out


class Rprop(Reference):
    """Rprop as torch.optim.Rprop: step sizes start at η, grow by ℓ₊ / shrink by ℓ₋ as the sign of
    g·prev holds / flips, always clamped into Γ; where it flipped the gradient is zeroed (no step)
    and remembered as 0."""

    def __init__(self, eta=0.001, ell=(0.5, 1.2), gamma=(1e-6, 50.0)):
        super().__init__()
        self.eta, self.ell, self.gamma = eta, ell, gamma

    def initial(self):
        return {"prev": 0.0, "step": self.eta}

    def step(self, s, g, x, n):
        q = g * s["prev"]
        factor = np.where(q > 0, self.ell[1], np.where(q < 0, self.ell[0], 1.0))
        s["step"] = np.clip(s["step"] * factor, *self.gamma)
        g = np.where(q < 0, 0.0, g)
        s["prev"] = g
        return s["step"] * np.sign(g)


class WeightDecay(Reference):
    def __init__(self, wd=0.0):
        super().__init__()
        self.wd = wd

    def step(self, s, g, x, n):  # Δ = g + wd·x
        return g + self.wd * x


class ClipValue(Reference):
    def __init__(self, thresh):
        super().__init__()
        self.thresh = thresh

    def step(self, s, g, x, n):
        return np.clip(g, -self.thresh, self.thresh)


class ClipNorm(Reference):
    def __init__(self, thresh):
        super().__init__()
        self.thresh = thresh

    def step(self, s, g, x, n):  # rescale where ‖g‖₂ > thresh, as Flux
        norm = np.linalg.norm(g)
        return g * (self.thresh / norm) if norm > self.thresh else g


class ClipGlobalNorm:
    """One norm over all variables together."""

    def __init__(self, thresh):
        self.thresh = thresh

    def __call__(self, gs, xs, n):
        norm = np.sqrt(sum(np.sum(np.asarray(g, DTYPE) ** 2) for g in gs))
        scale = self.thresh / norm if norm > self.thresh else 1.0
        return [np.asarray(g, DTYPE) * scale for g in gs]


def exp_decay(eta=0.001, decay=0.1, decay_step=1000, clip=1e-4, start=0):
    """Flux's ExpDecay (keras_optx/schedules.py) as a function of the update count n = 1, 2, …"""
    return lambda n: max(eta * decay ** max(0, n // decay_step - start // decay_step), clip)


def inv_decay(gamma=0.001, eta=1.0):
    return lambda n: eta / (1 + gamma * n)


class Scale:
    """A schedule as a chain member: Δ = rate(n)·g."""

    def __init__(self, rate):
        self.rate = rate

    def __call__(self, gs, xs, n):
        return [self.rate(n) * np.asarray(g, DTYPE) for g in gs]


class Chain:
    """Flux's Optimiser: each member transforms the output of the last."""

    def __init__(self, *members):
        self.members = members

    def __call__(self, gs, xs, n):
        for member in self.members:
            gs = member(gs, xs, n)
        return gs


def ADAMW(eta=0.001, beta=(0.9, 0.999), decay=0.0, eps=EPS):
    return Chain(ADAM(eta, beta, eps), WeightDecay(decay))


class Lookahead:
    """Zhang et al. 2019, Algorithm 1, as TF-Addons: `inner` moves the fast weights; after every
    k-th update φ ← φ + α(x − φ) and x ← φ; φ starts at the variables before the first update."""

    def __init__(self, inner, k=6, alpha=0.5):
        self.inner, self.k, self.alpha, self.slow = inner, k, alpha, None

    def __call__(self, gs, xs, n):
        xs = [np.asarray(x, np.float64) for x in xs]
        if self.slow is None:
            self.slow = [x.copy() for x in xs]
        fast = [x - d for x, d in zip(xs, self.inner(gs, xs, n))]
        if n % self.k == 0:
            self.slow = [s + self.alpha * (f - s) for s, f in zip(self.slow, fast)]
            fast = [s.copy() for s in self.slow]
        return [x - f for x, f in zip(xs, fast)]


class Partition:
    """Each variable to the first rule whose pattern `re.search`es its path; each rule sees its subset.

    `rules` is a list of (pattern, reference or None); None is `Frozen` (Δ = 0). `frozen(n)` names the
    positions frozen at update n (Δ = 0, state kept): their rule does not see them at that update."""

    def __init__(self, rules, paths, frozen=lambda n: ()):
        import re

        self.rules = rules
        self.routes = [next(k for k, (p, _) in enumerate(rules) if re.search(p, path)) for path in paths]
        self.frozen = frozen
        self.states = [{} for _ in rules]

    def __call__(self, gs, xs, n):
        out = [np.zeros_like(np.asarray(x, np.float64)) for x in xs]
        frozen = set(self.frozen(n))
        for k, (_, rule) in enumerate(self.rules):
            positions = [i for i, r in enumerate(self.routes) if r == k and i not in frozen]
            if rule is None or not positions:
                continue
            for i, d in zip(positions, _subset_call(rule, positions, [gs[i] for i in positions], [xs[i] for i in positions], n)):
                out[i] = d
        return out


def _subset_call(rule, positions, gs, xs, n):
    """Call `rule` on a subset, keeping each variable's state under its own position (Flux's IdDict)."""
    if isinstance(rule, Reference):
        saved = rule.state
        rule.state = {j: saved[p] for j, p in enumerate(positions) if p in saved}
        out = rule(gs, xs, n)
        saved.update({positions[j]: s for j, s in rule.state.items()})
        rule.state = saved
        return out
    if isinstance(rule, Chain):
        for member in rule.members:
            gs = _subset_call(member, positions, gs, xs, n)
        return gs
    return rule(gs, xs, n)  # stateless (ClipGlobalNorm, Scale)


# 2024 rules (keras_optx/recent.py, keras_optx/prodigy.py) --------------------------------------
class ADOPT(Reference):
    """Taniguchi et al. 2024 (clipped, as the authors' code and pytorch_optimizer): at n = 1 v = g² and
    no step; then ĝ = clip(g/max(√v, ϵ), ±n^¼); m = β₁m + (1−β₁)ĝ; Δ = ηm; v = β₂v + (1−β₂)g².
    `clip_offset=-1` clips at (n−1)^¼ instead: optax.contrib.adopt's count."""

    init = {"m": 0.0, "v": 0.0}

    def __init__(self, eta=0.001, beta=(0.9, 0.9999), eps=1e-6, clip_offset=0):
        super().__init__()
        self.eta, self.beta, self.eps, self.clip_offset = eta, beta, eps, clip_offset

    def step(self, s, g, x, n):
        b1, b2 = self.beta
        if n == 1:
            s["v"] = g**2
            return np.zeros_like(g)
        bound = (n + self.clip_offset) ** 0.25
        s["m"] = b1 * s["m"] + (1 - b1) * np.clip(g / np.maximum(np.sqrt(s["v"]), self.eps), -bound, bound)
        s["v"] = b2 * s["v"] + (1 - b2) * g**2
        return _rate(self.eta, n) * s["m"]


class AdEMAMix(Reference):
    """Pagliardini et al. 2024, Algorithm 1: Δ = η(m₁/(1−β₁ⁿ) + αm₂)/(√(v/(1−β₂ⁿ)) + ϵ), m₂ the β₃-EMA.
    α and β₃ may be functions of n. `cautious_fast=True`: pytorch_optimizer's cautious variant, which
    masks m₁ alone by sign(m₁·g) and scales it by N/(Σφ + 1) before adding αm₂."""

    init = {"m": 0.0, "slow": 0.0, "v": 0.0}

    def __init__(self, eta=0.001, beta=(0.9, 0.999, 0.9999), alpha=5.0, eps=EPS, cautious_fast=False):
        super().__init__()
        self.eta, self.beta, self.alpha, self.eps, self.cautious_fast = eta, beta, alpha, eps, cautious_fast

    def step(self, s, g, x, n):
        b1, b2, b3 = self.beta
        b3, alpha = _rate(b3, n), _rate(self.alpha, n)
        s["m"] = b1 * s["m"] + (1 - b1) * g
        s["slow"] = b3 * s["slow"] + (1 - b3) * g
        s["v"] = b2 * s["v"] + (1 - b2) * g**2
        fast = _cautious(s["m"], g) if self.cautious_fast else s["m"]
        return _rate(self.eta, n) * (fast / (1 - b1**n) + alpha * s["slow"]) / (np.sqrt(s["v"] / (1 - b2**n)) + self.eps)


def ademamix_alpha(alpha, warmup):
    """pytorch_optimizer's α warm-up as a function of n = 1, 2, …"""
    return lambda n: min(n * alpha / warmup, alpha)


def ademamix_beta3(beta1, beta3, warmup):
    """pytorch_optimizer's β₃ warm-up as a function of n = 1, 2, …"""
    l1, l3 = np.log(beta1), np.log(beta3)
    return lambda n: min(np.exp(l1 * l3 / ((1 - n / warmup) * l3 + (n / warmup) * l1)), beta3)


def _cautious(delta, g):
    """Liang et al. 2024: φ = [Δ·g > 0]; Δ·φ·N/(Σφ + 1)."""
    phi = (delta * g > 0).astype(DTYPE)
    return delta * phi * (phi.size / (phi.sum() + 1))


class Cautious:
    """Any reference's update masked per variable by `_cautious` against the gradient it was given."""

    def __init__(self, inner):
        self.inner = inner

    def __call__(self, gs, xs, n):
        return [_cautious(d, np.asarray(g, DTYPE)) for d, g in zip(self.inner(gs, xs, n), gs)]


class Prodigy:
    """prodigyopt.Prodigy (one group, slice_p = 1) in float64: sums over all the variables it is given."""

    def __init__(self, eta=1.0, beta=(0.9, 0.999), beta3=None, eps=EPS, d0=1e-6, d_coef=1.0,
                 growth_rate=np.inf, use_bias_correction=False, safeguard_warmup=False, weight_decay=0.0):
        self.eta, self.beta, self.eps, self.d0, self.d_coef = eta, beta, eps, d0, d_coef
        self.beta3 = np.sqrt(beta[1]) if beta3 is None else beta3
        self.growth_rate, self.bias, self.safeguard, self.wd = growth_rate, use_bias_correction, safeguard_warmup, weight_decay
        self.d, self.d_max, self.numerator, self.k, self.state = d0, d0, 0.0, 0, None

    def __call__(self, gs, xs, n):
        (b1, b2), b3, eta = self.beta, self.beta3, _rate(self.eta, n)
        gs, xs = [np.asarray(g, DTYPE) for g in gs], [np.asarray(x, DTYPE) for x in xs]
        if self.state is None:
            self.state = [{"m": 0 * x, "v": 0 * x, "s": 0 * x, "x0": x.copy()} for x in xs]
        d = self.d
        c = np.sqrt(1 - b2 ** (self.k + 1)) / (1 - b1 ** (self.k + 1)) if self.bias else 1.0
        dlr = d * eta * c
        numerator = b3 * self.numerator
        denominator = 0.0
        if eta > 0:
            for s, g, x in zip(self.state, gs, xs):
                numerator += (d / self.d0) * dlr * np.sum(g * (s["x0"] - x))
                s["m"] = b1 * s["m"] + d * (1 - b1) * g
                s["v"] = b2 * s["v"] + d * d * (1 - b2) * g**2
                s["s"] = b3 * s["s"] + (d / self.d0) * (d if self.safeguard else dlr) * g
                denominator += np.sum(np.abs(s["s"]))
        if denominator == 0:
            return [0 * x for x in xs]
        d_hat = self.d_coef * numerator / denominator
        if d == self.d0:
            d = max(d, d_hat)
        self.d_max = max(self.d_max, d_hat)
        self.d = d = min(self.d_max, d * self.growth_rate)
        self.numerator, self.k = numerator, self.k + 1
        out = []
        for s, g, x in zip(self.state, gs, xs):
            step = s["m"] if b1 > 0 else d * g
            out.append(dlr * (step / (np.sqrt(s["v"]) + d * self.eps) + self.wd * x))
        return out


# Matrix rules (keras_optx/matrix.py) ---------------------------------------------------------------
def _as_matrix(shape):
    """Muon's 2-D view of a variable: itself, or a Keras convolution kernel (k…, in, out) as (k…·in, out)."""
    return tuple(shape) if len(shape) == 2 else (int(np.prod(shape[:-1])), shape[-1])


def newton_schulz(u, steps=5, coefficients=(3.4445, -4.775, 2.0315), eps=1e-7):
    """X₀ = U/max(‖U‖_F, ϵ) (transposed if tall); Xₖ₊₁ = a·Xₖ + (b·Aₖ + c·Aₖ²)·Xₖ, Aₖ = XₖXₖᵀ."""
    a, b, c = coefficients
    x = np.asarray(u, DTYPE).reshape(_as_matrix(np.shape(u)))
    tall = x.shape[0] > x.shape[1]
    x = x.T if tall else x
    x = x / max(np.linalg.norm(x), eps)
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return (x.T if tall else x).reshape(np.shape(u))


class Muon(Reference):
    """torch.optim.Muon's step (torch/optim/_muon.py), in float64; weight decay is Keras's keyword, not here."""

    init = {"B": 0.0}

    def __init__(self, eta=0.02, momentum=0.95, nesterov=True, ns_steps=5, coefficients=(3.4445, -4.775, 2.0315),
                 eps=1e-7, adjust_lr=None):
        super().__init__()
        self.eta, self.mu, self.nesterov, self.ns_steps = eta, momentum, nesterov, ns_steps
        self.coefficients, self.eps, self.adjust_lr = coefficients, eps, adjust_lr

    def step(self, s, g, x, n):  # B = μB + (1−μ)g; U = (1−μ)g + μB (nesterov) or B; Δ = η·r·NS(U)
        mu = self.mu
        s["B"] = mu * s["B"] + (1 - mu) * g
        u = (1 - mu) * g + mu * s["B"] if self.nesterov else s["B"]
        rows, cols = _as_matrix(x.shape)
        r = 0.2 * np.sqrt(max(rows, cols)) if self.adjust_lr == "match_rms_adamw" else np.sqrt(max(1.0, rows / cols))
        return _rate(self.eta, n) * r * newton_schulz(u, self.ns_steps, self.coefficients, self.eps)


class SOAP(Reference):
    """pytorch_optimizer.SOAP's step (Vyas et al. 2024) for scalars, vectors and matrices, in float64.

    t = 1 builds the factors L = (1−β_s)GGᵀ, R = (1−β_s)GᵀG and their eigenbases and takes no step; then Adam
    in the eigenbasis, the factors' averages after each step, and at s = t−1 ≡ 0 (mod frequency) each basis
    refreshed by Q ← QR(L·Q), columns (and v along that axis) sorted by diag(QᵀLQ), descending."""

    def __init__(self, eta=3e-3, beta=(0.95, 0.95), shampoo_beta=None, eps=EPS, frequency=10, max_dim=10000,
                 precondition_1d=False, correct_bias=True, normalize_gradient=False):
        super().__init__()
        self.eta, self.beta, self.eps, self.frequency, self.max_dim = eta, beta, eps, frequency, max_dim
        self.shampoo_beta = beta[1] if shampoo_beta is None else shampoo_beta
        self.precondition_1d, self.correct_bias, self.normalize = precondition_1d, correct_bias, normalize_gradient

    def initial(self):
        return {"m": 0.0, "v": 0.0}

    def _axes(self, shape):
        return [a < len(shape) and shape[a] <= self.max_dim and (len(shape) == 2 or self.precondition_1d) for a in (0, 1)]

    @staticmethod
    def _outer(g, axis):
        return np.outer(g, g) if g.ndim == 1 else (g @ g.T if axis == 0 else g.T @ g)

    @staticmethod
    def _project(x, q, back=False):
        if q[0] is not None:
            x = (q[0] if back else q[0].T) @ x
        if q[1] is not None:
            x = x @ (q[1].T if back else q[1])
        return x

    def step(self, s, g, x, n):
        (b1, b2), bs = self.beta, self.shampoo_beta
        axes = self._axes(g.shape)
        if n == 1:
            s["F"] = [(1 - bs) * self._outer(g, a) if axes[a] else None for a in (0, 1)]
            s["Q"] = [np.linalg.eigh(f)[1][:, ::-1] if f is not None else None for f in s["F"]]
            return np.zeros_like(g)
        step = n - 1
        rate = _rate(self.eta, n)
        if self.correct_bias:
            rate = rate * np.sqrt(1 - b2**step) / (1 - b1**step)
        s["m"] = b1 * s["m"] + (1 - b1) * g
        s["v"] = b2 * s["v"] + (1 - b2) * self._project(g, s["Q"]) ** 2
        d = self._project(self._project(s["m"], s["Q"]) / (np.sqrt(s["v"]) + self.eps), s["Q"], back=True)
        if self.normalize:
            d = d / (np.sqrt(np.mean(d**2)) + self.eps)
        s["F"] = [bs * f + (1 - bs) * self._outer(g, a) if f is not None else None for a, f in enumerate(s["F"])]
        if step % self.frequency == 0:
            for a, (f, q) in enumerate(zip(s["F"], s["Q"])):
                if f is not None:
                    product = f @ q
                    order = np.argsort(-np.sum(q * product, axis=0), kind="stable")
                    s["v"] = np.take(s["v"], order, axis=a)
                    s["Q"][a] = np.linalg.qr(product[:, order])[0]
        return rate * d


class ScheduleFree:
    """Defazio et al. 2024 (arXiv:2405.15682), as schedulefree's AdamWScheduleFree (`beta2` given) and
    SGDScheduleFree (`beta2=None`) step: the model's values are y, z starts at y, and for the step
    n = 1, 2, …:  ηₙ = η·min(n/warmup, 1);  η_max = max(η_max, ηₙ);  wₙ = nʳ·η_max^p;  W += wₙ;
    c = wₙ/W (0 if W = 0);  d = g/(√(v/(1−β₂ⁿ)) + ϵ) (AdamW; v = β₂v + (1−β₂)g²) or g (SGD), plus λ·y;
    y_new = (1−c)·y + c·z − ηₙ·(1 − β(1−c))·d;  z −= ηₙ·d.  Returns Δ = y − y_new.
    `eval_weights(ys)`: x = y + (1 − 1/β)(z − y)."""

    def __init__(self, eta, beta, beta2=None, eps=EPS, wd=0.0, warmup=0, r=0.0, power=2.0):
        self.eta, self.beta, self.beta2, self.eps, self.wd = eta, beta, beta2, eps, wd
        self.warmup, self.r, self.power = warmup, r, power
        self.z, self.v = {}, {}
        self.lr_max, self.weight_sum = -1.0, 0.0

    def __call__(self, gs, xs, n):
        lr = _rate(self.eta, n) * (min(n / self.warmup, 1.0) if self.warmup else 1.0)
        self.lr_max = max(self.lr_max, lr)
        weight = n**self.r * self.lr_max**self.power
        self.weight_sum += weight
        c = weight / self.weight_sum if self.weight_sum else 0.0
        out = []
        for i, (g, y) in enumerate(zip(gs, xs)):
            g, y = np.asarray(g, DTYPE), np.asarray(y, DTYPE)
            z = self.z.setdefault(i, y.copy())
            d = g
            if self.beta2 is not None:
                self.v[i] = self.beta2 * self.v.get(i, 0.0) + (1 - self.beta2) * g * g
                d = g / (np.sqrt(self.v[i] / (1 - self.beta2**n)) + self.eps)
            d = d + self.wd * y
            y_new = (1 - c) * y + c * z - lr * (1 - self.beta * (1 - c)) * d
            self.z[i] = z - lr * d
            out.append(y - y_new)
        return out

    def eval_weights(self, ys):
        return [np.asarray(y, DTYPE) + (1 - 1 / self.beta) * (self.z[i] - np.asarray(y, DTYPE)) if i in self.z
                else np.asarray(y, DTYPE) for i, y in enumerate(ys)]
