"""Torch tensors behind Keras variables, and the buffers kernels write into.

- `values`: the variables' tensors, read past `.value`'s per-variable checks where that is safe.
- Packed buffers (`pack_slots`, `whole`): each slot's variables are views of one contiguous buffer.
- Kept scratch (`scratch`, `into`): temporaries live between steps instead of being re-allocated
  (`kept_bytes` measures them).
- Cache blocks (`in_blocks`, `flat_blocks`, `tensor_blocks`): on CPU, a rule's in-place steps run block by block over large tensors.

Each is a measured speed-up on this project's CPU benchmarks (benchmarks/RESULTS.md); none changes
a result: the kernels using them are tested against the formulas (tests/test_fast_paths.py).
"""

import collections
import itertools
import math
import operator

import torch

from ..._identity import _same

try:  # Keras internals that `values` needs to skip `.value`'s per-variable checks safely
    from keras.src.backend.common.stateless_scope import in_stateless_scope
    from keras.src.backend.common.variables import get_autocast_scope
    from keras.src.backend.torch.core import Variable as _TorchVariable
    from keras.src.backend.torch.core import get_device as _torch_device
except ImportError:  # another Keras layout: `values` reads `.value`
    _TorchVariable = None

_TORCH_VALUE = _TorchVariable.value if _TorchVariable is not None else None  # what `values` inlines


def values(variables):
    """The variables' values, as `[v.value for v in variables]`, fast.

    `.value` costs ~2 µs (stateless-scope, autocast-scope and meta-device checks, per
    variable); outside those scopes it is `v._value`, so read that directly when every
    variable's class uses Keras's torch `value` property."""
    if _TORCH_VALUE is None or in_stateless_scope() or get_autocast_scope() is not None or str(_torch_device()) == "meta":
        return [v.value for v in variables]
    if any(getattr(kind, "value", None) is not _TORCH_VALUE for kind in set(map(type, variables))):
        return [v.value for v in variables]  # a Variable class with its own `value`
    xs = [v._value for v in variables]
    if any(map(operator.is_, xs, itertools.repeat(None))):  # uninitialized: `.value` makes a placeholder
        return [v.value for v in variables]
    return xs


def step_tensors(t, xs):
    """The per-variable step counts torch's fused kernels read (one shared float tensor)."""
    return [torch.tensor(float(t), dtype=torch.float32, device=xs[0].device)] * len(xs)


def scratch(owner, xs, count=1):
    """`count` buffer lists shaped like `xs`, kept by `owner` between steps.

    Kernels write their temporaries here: on CPU a fresh large buffer costs page
    faults on every step, often more than the arithmetic. Each list is views of one packed
    buffer where it can be (see `whole`). Zeros when first made (one-time cost): no kernel
    ever reads non-finite garbage from them."""
    buffers = getattr(owner, "_torch_scratch", [])
    made_for = getattr(owner, "_torch_scratch_for", ())
    if len(buffers) < count or not (_same(made_for, xs) or _like(buffers[0], xs)):
        buffers = owner._torch_scratch = [_packed(xs) or [torch.zeros_like(x) for x in xs] for _ in range(count)]
    # The tensors last checked: next step's are nearly always the same ones (identity is ~20x cheaper to check).
    object.__setattr__(owner, "_torch_scratch_for", list(xs))
    return buffers[:count]


def kept_bytes(optimizer, variables=()):
    """Bytes of the tensors `optimizer` keeps between steps besides its own variables and
    `variables`: the kept scratch of the fast paths (`scratch`, `in_blocks`), each storage once,
    over the optimizer and the rules in it (a chain's members, a Partition's rules, a wrapper's
    `optimizer`). What benchmarks/bench_memory.py reports as "kept beyond state"."""
    seen = {v.value.untyped_storage().data_ptr() for v in [*optimizer.variables, *variables]}
    total = 0

    def visit(value, depth=0):
        nonlocal total
        if isinstance(value, torch.Tensor):
            storage = value.untyped_storage()
            if storage.data_ptr() not in seen:
                seen.add(storage.data_ptr())
                total += storage.nbytes()
        elif isinstance(value, (list, tuple, dict)) and depth < 3:
            for item in value.values() if isinstance(value, dict) else value:
                visit(item, depth + 1)

    def walk(rule):
        for key, value in vars(rule).items():
            if key.startswith("_torch"):
                visit(value)
        parts = rule._parts() if hasattr(rule, "_parts") else None
        for member in [*(parts or ()), getattr(rule, "optimizer", None)]:
            if member is not None and hasattr(member, "__dict__"):
                walk(member)

    walk(optimizer)
    return total


def _like(buffers, xs):
    return len(buffers) == len(xs) and all(
        b.shape == x.shape and b.dtype == x.dtype and b.device == x.device for b, x in zip(buffers, xs)
    )


# Packed buffers. A foreach op costs ~1.3 µs of dispatch per tensor on CPU: over 200 variables of
# 10k elements that is more than its arithmetic. So each slot's variables (and each kept scratch
# list) are views of one contiguous buffer, and a step that touches only slots and scratch runs as
# one op on the buffers (`whole`); steps that read gradients or write the variables stay per
# tensor. The views are what the Keras variables hold, so saving, loading and `assign` work on them
# as before. In the buffer, tensors of one size lie side by side (sizes in first-seen order, then
# variable order; every pack of one list of shapes alike), so a per-tensor reduction over them is
# one op on a (count, size) view (`Pack.runs`: ClipNorm's norms).
_PACK = "_keras_optx_pack"  # set on each view: a `Pack`


class Pack:
    """A packed buffer and how its tensors lie in it."""

    def __init__(self, whole, views, order, runs):
        self.whole = whole  # the buffer
        self.views = views  # one per tensor, in the list's order
        self.order = order  # the list's positions in buffer order
        self.runs = runs  # [(a (count, size) view of the buffer, the count)] in buffer order


def _packed(like, values=None, parameters=False):
    """Zero tensors shaped like `like` (or copies of `values`), views of one contiguous buffer;
    None where `like` is empty or mixes dtypes or devices."""
    first = like[0] if like else None
    if first is None or any(t.dtype != first.dtype or t.device != first.device for t in like):
        return None
    sizes = [t.numel() for t in like]
    counts = collections.Counter(sizes)  # keeps first-seen order
    rank = {size: k for k, size in enumerate(counts)}
    order = sorted(range(len(like)), key=lambda i: rank[sizes[i]])
    whole = torch.zeros(sum(sizes), dtype=first.dtype, device=first.device)
    views = [None] * len(like)
    for piece, i in zip(torch.split(whole, [sizes[i] for i in order]), order):
        views[i] = piece.view(like[i].shape)
    runs = [(block.view(count, size), count) for block, (size, count) in
            zip(torch.split(whole, [size * count for size, count in counts.items()]), counts.items())]
    if values is not None:
        torch._foreach_copy_(views, values)
    if parameters:  # what Keras's torch Variable holds; a Parameter made from a view shares its memory
        views = [torch.nn.Parameter(v, requires_grad=False) for v in views]
    return _set_pack(Pack(whole, views, order, runs))


def _packed_views(whole, shapes):
    """Views of `whole` shaped `shapes`, side by side in that order, as a `Pack`'s (a span of another's)."""
    sizes = [math.prod(shape) for shape in shapes]
    views = [piece.view(shape) for piece, shape in zip(torch.split(whole, sizes), shapes)]
    runs, start = [], 0
    for size, group in itertools.groupby(sizes):
        count = len(list(group))
        runs.append((whole[start : start + size * count].view(count, size), count))
        start += size * count
    return _set_pack(Pack(whole, views, list(range(len(views))), runs))


def _set_pack(pack):
    for view in pack.views:
        setattr(view, _PACK, pack)
    return pack.views


def pack_slots(variables):
    """Make one slot's Keras variables hold views of one packed buffer, where their class
    is Keras's own torch Variable and all are initialised, of one dtype and device."""
    if _TORCH_VALUE is None or not variables or any(type(v).value is not _TORCH_VALUE for v in variables):
        return
    tensors = [v._value for v in variables]
    if any(tensor is None for tensor in tensors):  # initialisation deferred (built in a stateless scope)
        return
    with torch.no_grad():
        views = _packed(tensors, tensors, parameters=True)
    if views is not None:
        for variable, view in zip(variables, views):
            variable._value = view


def whole(*lists):
    """`([buffer], …)` when each list is exactly the views of one packed buffer, in order, so a
    foreach op over them is one op; else `lists` as they are (a subset of the variables, a
    stateless call's values, mixed dtypes). Lists combined in one op must be `whole`d together."""
    wholes, order = [], None
    for tensors in lists:
        pack = pack_of(tensors)
        # Lists shaped alike are packed alike; a guard all the same, as one op pairs their elements.
        if pack is None or (order is not None and pack.order != order):
            return lists
        order = pack.order
        wholes.append([pack.whole])
    return tuple(wholes)


def pack_of(tensors):
    """The `Pack` whose views `tensors` are, exactly and in order; else None."""
    pack = getattr(tensors[0], _PACK, None) if tensors else None
    return pack if pack is not None and _same(pack.views, tensors) else None


def gather(pack, tensors):
    """Copy `tensors` (shaped like the pack's views) into the pack's buffer: one op."""
    torch.cat([tensors[i].reshape(-1) for i in pack.order], out=pack.whole)


def into(outs, name, tensors, *args, **kwargs):
    """outs ← torch.<name>(tensors, *args, **kwargs) elementwise, in kept buffers; returns `outs`.

    An argument that is a list (or tuple) is taken per tensor (`into(out, "add", g, xs, alpha=λ)`);
    `outs` may hold the very tensors of `tensors` (in place). No fresh tensors: on CPU, freed and
    re-allocated buffers page-fault on every step, which cost more than the arithmetic (measured:
    ~3x a fused Adam for one fresh `_foreach_add` over 200×10k). Packed lists (`whole`): one `out=` call on the
    buffers. Tensors of ≥ 32768 elements on average: one `out=` call each; smaller ones: a
    foreach copy and the foreach in-place op (a pass over little memory costs less than a
    Python call per tensor), on the packed buffer where `outs` is one."""
    per_tensor = any(isinstance(a, (list, tuple)) for a in args)
    whole_outs, whole_tensors = whole(outs, tensors) if not per_tensor else (outs, tensors)
    if whole_outs is not outs or large(tensors):
        fn = getattr(torch, name)
        for i, (out, tensor) in enumerate(zip(whole_outs, whole_tensors)):
            fn(tensor, *(a[i] if isinstance(a, (list, tuple)) else a for a in args), out=out, **kwargs)
        return outs
    if not _same(outs, tensors):  # a list of the same tensors is in place too
        torch._foreach_copy_(outs, tensors)
    getattr(torch, f"_foreach_{name}_")(outs if per_tensor else whole(outs)[0], *args, **kwargs)
    return outs


LARGE = 1 << 15  # elements per tensor from which `into` calls per tensor (on 200×10k both branches time alike)


def large(tensors):
    """Whether `tensors` hold ≥ `LARGE` elements on average: worth a call (or a cache block) each."""
    return sum(t.numel() for t in tensors) >= LARGE * len(tensors)


def in_blocks(owner, lists, scratch_lists=0):
    """Yield `lists` (each a list of tensors shaped like the first), plus `scratch_lists` kept buffer
    lists, in blocks that fit the cache: on CPU, where the tensors are large (≥ 32768 elements on
    average), contiguous and of one dtype, a block is a run of consecutive tensors of ≤ `BLOCK` elements in
    all, or one piece of a larger tensor, taken from every list, with block-sized kept scratch (each
    list min(`BLOCK`, the parameters) elements), or blocks of the parameter-sized buffers `owner`
    keeps for `xs` already (a chain's, `scratch`); else the whole lists once, with `scratch`.

    A rule's sequence of elementwise in-place ops then reads each element from memory once per
    block instead of once per op. Measured over 4×2.5M parameters: AdaMax 22.9 → 14.5 ms (medians).
    (`flat_blocks` is the same idea where the temporaries need not be kept.)"""
    xs = lists[0]
    dtype = xs[0].dtype
    if (
        xs[0].device.type != "cpu"
        or not large(xs)
        or any(x.dtype != dtype for x in xs)
        or not all(t.is_contiguous() for tensors in lists for t in tensors)  # pieces are flat views
    ):
        yield (*lists, *(scratch(owner, xs, scratch_lists) if scratch_lists else ()))
        return
    whole_lists = getattr(owner, "_torch_scratch", ())
    if scratch_lists and len(whole_lists) >= scratch_lists and _same(getattr(owner, "_torch_scratch_for", ()), xs):
        # `owner` keeps parameter-sized buffers for these tensors (a chain's): blocks of those, none besides
        lists, kept = (*lists, *whole_lists[:scratch_lists]), []
    else:
        elements = min(BLOCK, sum(x.numel() for x in xs))  # no block is larger: a kept list is at most parameter-sized
        kept = getattr(owner, "_torch_block_scratch", None)
        if kept is None or len(kept) < scratch_lists or any(k.dtype != dtype or k.numel() != elements for k in kept):
            kept = owner._torch_block_scratch = [torch.zeros(elements, dtype=dtype) for _ in range(scratch_lists)]
        kept = kept[:scratch_lists]

    yield from _blocks(lists, kept, BLOCK)


BLOCK = 1 << 18  # elements per block: a few lists of 1 MiB stay in this machine's 32 MiB L3 (measured best of 2^16–2^21)
DEVICE_BLOCK = 1 << 22  # on a GPU a block is for memory only (16 MiB of float32 while a step runs), not for a cache


def flat_blocks(lists, scratch_lists=0):
    """Yield `lists` (each a list of contiguous tensors shaped like the first) in blocks of ≤ `BLOCK`
    elements (`DEVICE_BLOCK` on a device), as lists of tensors: pieces of the packed buffers where the
    lists are packed alike (`whole`: one op a block), else runs of consecutive tensors or pieces of a
    larger one (as `in_blocks`); plus `scratch_lists` block-sized buffers made for this call, in each
    block's dtype.

    For temporaries that need not outlive the step: none is kept, and while the step runs they take at
    most a block of memory each. (Measured over 200×1k: ADADelta with a parameter-sized buffer and its
    per-tensor views made each step took 1.7x the step with a kept one; with a block made each step, 1.0x.)"""
    lists = whole(*lists)
    device = lists[0][0].device
    block = BLOCK if device.type == "cpu" else DEVICE_BLOCK
    for dtype in dict.fromkeys(t.dtype for t in lists[0]):  # a block is of one dtype
        positions = [i for i, t in enumerate(lists[0]) if t.dtype == dtype]
        sub = [[tensors[i] for i in positions] for tensors in lists]
        size = min(block, sum(t.numel() for t in sub[0]))
        made = [torch.empty(size, dtype=dtype, device=device) for _ in range(scratch_lists)]
        yield from _blocks(sub, made, size)


def tensor_blocks(lists, scratch_lists=0):
    """As `flat_blocks` over lists that are not all packed, each block as `(positions, whole, flat), block`:
    the positions in `lists[0]` of its tensors, whether they are whole (a run of tensors) or one piece
    of one tensor larger than a block, and the block's scratch buffers flat (for one op over them).
    A packed list's run that lies side by side in its buffer comes as the views of a pack of its own
    (`whole` takes it: slot-only steps are one op a block).

    For a per-tensor reduction over the block (`Cautious`): whole tensors can be finished in the block."""
    device = lists[0][0].device
    block = BLOCK if device.type == "cpu" else DEVICE_BLOCK
    packs = [pack_of(tensors) for tensors in lists]
    for dtype in dict.fromkeys(t.dtype for t in lists[0]):
        positions = [i for i, t in enumerate(lists[0]) if t.dtype == dtype]
        sub = [[tensors[i] for i in positions] for tensors in lists]
        size = min(block, sum(t.numel() for t in sub[0]))
        made = [torch.empty(size, dtype=dtype, device=device) for _ in range(scratch_lists)]
        spans = len(positions) == len(lists[0]) and any(packs)  # a packed list is of one dtype
        for (run, complete, elements), block_lists in _blocks(sub, made, size, where=True):
            if complete and spans:
                block_lists = (
                    *(_span(pack, run) or tensors if pack is not None else tensors for pack, tensors in zip(packs, block_lists)),
                    *block_lists[len(lists):],
                )
            yield ([positions[j] for j in run], complete, [k[:elements] for k in made]), block_lists


def _span(pack, run):
    """The views of `pack` at the list positions `run` (consecutive) as the views of a pack of their own,
    where they lie side by side in its buffer in that order; else None. Cached on `pack`."""
    spans = pack.__dict__.setdefault("spans", {})
    key = (run[0], len(run))
    if key not in spans:
        starts = pack.__dict__.get("starts")
        if starts is None:
            sizes = [v.numel() for v in pack.views]
            offsets = itertools.accumulate((sizes[i] for i in pack.order), initial=0)
            starts = pack.starts = dict(zip(pack.order, offsets))
        views = pack.views[run[0] : run[0] + len(run)]
        first, last = starts[run[0]], starts[run[-1]] + views[-1].numel()
        side_by_side = all(starts[i] + v.numel() == starts.get(i + 1) for i, v in zip(run[:-1], views))
        spans[key] = _packed_views(pack.whole[first:last], [v.shape for v in views]) if side_by_side else None
    return spans[key]


def _blocks(lists, kept, size, where=False):
    """`lists` in blocks of ≤ `size` elements, each with its pieces of the flat buffers `kept`: a run of
    consecutive tensors (scratch: consecutive views of `kept`), or one piece of a larger tensor.
    `where`: each block as `(positions, whole, elements), block` (see `tensor_blocks`)."""
    xs = lists[0]

    def run_block(run):
        offsets = list(itertools.accumulate((xs[i].numel() for i in run), initial=0))
        shaped = [[k[a:b].view(xs[i].shape) for i, a, b in zip(run, offsets, offsets[1:])] for k in kept]
        block = (*([tensors[i] for i in run] for tensors in lists), *shaped)
        return ((run, True, offsets[-1]), block) if where else block

    run, filled = [], 0
    for i, x in enumerate(xs):
        elements = x.numel()
        if run and (filled + elements > size or elements > size):
            yield run_block(run)
            run, filled = [], 0
        if elements > size:
            for pieces in zip(*(torch.split(tensors[i].view(-1), size) for tensors in lists)):
                block = (*([p] for p in pieces), *([k[: pieces[0].numel()]] for k in kept))
                yield (([i], False, pieces[0].numel()), block) if where else block
        else:
            run.append(i)
            filled += elements
    if run:
        yield run_block(run)


def gradients_into(buffer, gs):
    """Copy into the kept buffer list `buffer` the gradients that are not in it already (a chain's
    transforms wrote the others there): it then holds g, for a kernel to overwrite."""
    passed = [i for i, (g, b) in enumerate(zip(gs, buffer)) if g is not b]
    if passed:
        torch._foreach_copy_([buffer[i] for i in passed], [gs[i] for i in passed])
