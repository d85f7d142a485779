"""Kernels registered per exact rule class; see the package docstring for their contract."""

_KERNELS = {}  # exact class → kernel(rule, xs, gs, slots, t, lr[, weight_decay]) -> bool
_TAKES_WEIGHT_DECAY = set()  # classes whose kernel adds a coupled decay g + λ·x itself
_TAKES_SHAPED_SLOTS = set()  # classes whose kernel reads slots of their own shape (`Slot`: SOAP's factors)
_INTOS = {}  # exact class → into(rule, out, g, xs, t, step) -> Δ (a transform's)
_DIRECTIONS = {}  # exact class → direction(rule, t, lr) -> None or write(out, temp, gs, slots) (a rule's Δ)
_OWN = "_torch_kernel"  # an instance attribute of this name replaces the class's kernel (None: none)


def register_kernel(*classes, weight_decay=False, shaped_slots=False):
    """Decorator: `kernel` applies the whole update of a rule of exactly one of `classes`.

    `weight_decay=True`: the kernel also takes `weight_decay=λ` and adds g + λ·x itself.
    `shaped_slots=True`: the kernel reads slots not of their variable's shape (`Slot`); other kernels,
    which pair each slot with its variable, are not run for a rule that has such slots."""

    def register(kernel):
        for cls in classes:
            _KERNELS[cls] = kernel
            if weight_decay:
                _TAKES_WEIGHT_DECAY.add(cls)
            if shaped_slots:
                _TAKES_SHAPED_SLOTS.add(cls)
        return kernel

    return register


def register_into(*classes):
    """Decorator: `into` computes the Δ of a transform of exactly one of `classes` into a kept buffer."""

    def register(into):
        for cls in classes:
            _INTOS[cls] = into
        return into

    return register


def register_direction(*classes):
    """Decorator: `direction(rule, t, lr)` returns None (it declines: the formula runs) or
    `write(out, temp, gs, slots)`, which updates the slots (lists, any block of them) in place and
    writes the rule's Δ into `out`, not applying it; `temp`, a scratch list like `out`, it may use
    until it returns. Elementwise: a caller may run `write` block by block (a wrapper's kernel: `Cautious`)."""

    def register(direction):
        for cls in classes:
            _DIRECTIONS[cls] = direction
        return direction

    return register


def kernel_of(rule, shaped_slots=False):
    """The kernel for `rule`: its own (`rule._torch_kernel`, set by tests) or its exact class's; else None.
    None too where the rule has slots of their own shape (`shaped_slots`) and its class's kernel does not
    read such slots (`register_kernel(..., shaped_slots=True)`): other kernels pair each slot with its variable.

    Keyed by exact class: a subclass, which may change the formula, runs its formula."""
    if shaped_slots and type(rule) not in _TAKES_SHAPED_SLOTS:
        return None
    own = rule.__dict__.get(_OWN, _KERNELS)
    return _KERNELS.get(type(rule)) if own is _KERNELS else own


def takes_weight_decay(rule):
    """Whether `rule`'s kernel takes `weight_decay=λ` (by its exact class)."""
    return type(rule) in _TAKES_WEIGHT_DECAY


def into_of(rule):
    """The `into` of `rule`'s exact class, or None."""
    return _INTOS.get(type(rule))


def direction_of(rule):
    """The `direction` of `rule`'s exact class, or None."""
    return _DIRECTIONS.get(type(rule))
