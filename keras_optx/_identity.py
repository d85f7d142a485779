"""Identity caches: lookups an optimizer repeats every step, kept for the last list of variables seen.

Keras hands `apply` a new list each step, nearly always of the very same variables. Comparing the
lists by identity (`_same`) is ~20x cheaper than redoing the lookups; a cache holds the variables
themselves, so their ids cannot be reused by other objects.
"""

import operator


def _same(a, b):
    """Whether lists `a` and `b` hold the very same objects (identity, not `==`)."""
    return len(a) == len(b) and all(map(operator.is_, a, b))


class _Cache:
    """A plain attribute holder, invisible to Keras's variable tracking."""

    def __init__(self, **fields):
        self.__dict__.update(fields)


def _set_cache(optimizer, name, **fields):
    """Store a `_Cache` on `optimizer`, past Keras's `__setattr__` (whose tracker would adopt
    a list of variables as the optimizer's own)."""
    cache = _Cache(**fields)
    object.__setattr__(optimizer, name, cache)
    return cache
