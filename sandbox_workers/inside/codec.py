"""Plain data across the boundary between a test process and a candidate process (stdlib only; runs inside
the sandbox, and is imported by the trusted side's unit tests).

A value crosses as a tagged JSON tree and comes out as a fresh object of a builtin (or a few standard) types:

    None ["n"]  bool ["b", x]  int ["i", hex]  float ["f", repr]  complex ["c", repr, repr]  str ["s", x]
    bytes ["y", hex]  bytearray ["ya", hex]  list ["l", [..]]  tuple ["t", [..]]  set ["S", [..]]
    frozenset ["F", [..]]  dict ["d", [[k, v], ..]]  Counter ["C", ..]  OrderedDict ["O", ..]
    defaultdict ["D", ..] (its factory stays behind)  deque ["q", [..], maxlen]  range ["r", i, i, i]
    Fraction ["fr", i, i]  Decimal ["dec", str]  an iterator or generator ["it", [..]] (exhausted, within the
    budget; it comes out as a fresh iterator over the items)  anything else ["o", type name] (a reply only)

Subclasses cross as their builtin base (a NamedTuple as a tuple, an `int` subclass as an int), read through
the base type's own methods, so a subclass's `__eq__`, `__iter__` or `__repr__` never travels. The decoder
never hashes or compares values it decodes except as a dict key or set member of a decoded container, and
builds only the types above; whatever a tree holds, decoding either returns or raises `FrameError`.

Frames are a 4-byte big-endian length and ASCII JSON; `read_frame` refuses frames over its cap before reading
them.
"""

import collections
import decimal
import fractions
import json
import os
import struct

MAX_FRAME = 16 << 20      # bytes of one call or reply
MAX_ITEMS = 1_000_000     # values in one encoded or decoded tree
MAX_DEPTH = 100           # nesting of containers in one value
HEADER = struct.Struct(">I")


class FrameError(ValueError):
    """A frame or a tree that is not what the protocol allows (too large, too deep, malformed)."""


class Unsendable(Exception):
    """A value that is not plain data (a test's argument that cannot be sent to the candidate)."""


class Opaque:
    """Stands for a result that is not plain data (a function, an instance of the program's own class): equal
    only to itself, truthy, never the program's object."""
    __slots__ = ("type_name",)

    def __init__(self, type_name):
        self.type_name = type_name

    def __repr__(self):
        return "<%s object of the candidate's>" % self.type_name


# ------------------------------------------------------------------------------------------------- encode

def encode(value, opaque=False, budget=None):
    """A value -> tagged tree. Not plain data: ["o", type name] with `opaque`, else Unsendable."""
    return _encode(value, opaque, budget if budget is not None else [MAX_ITEMS], 0)


def _items(iterable, opaque, budget, depth):
    return [_encode(x, opaque, budget, depth + 1) for x in iterable]


def _pairs(pairs, opaque, budget, depth):
    return [[_encode(k, opaque, budget, depth + 1), _encode(v, opaque, budget, depth + 1)] for k, v in pairs]


def _encode(value, opaque, budget, depth):
    budget[0] -= 1
    if budget[0] < 0 or depth > MAX_DEPTH:
        raise Unsendable("a value too large or too deep")
    kind = type(value)
    if value is None:
        return ["n"]
    if kind is bool:
        return ["b", value]
    if issubclass(kind, int):
        return ["i", int.__format__(value, "x")]
    if issubclass(kind, float):
        return ["f", float.__repr__(value)]
    if issubclass(kind, complex):
        return ["c", float.__repr__(complex.real.__get__(value)), float.__repr__(complex.imag.__get__(value))]
    if issubclass(kind, str):
        budget[0] -= str.__len__(value) // 64
        return ["s", str.__str__(value)]
    if issubclass(kind, bytes):
        budget[0] -= bytes.__len__(value) // 32
        return ["y", bytes.hex(value)]
    if issubclass(kind, bytearray):
        budget[0] -= bytearray.__len__(value) // 32
        return ["ya", bytearray.hex(value)]
    if issubclass(kind, collections.Counter):
        return ["C", _pairs(dict.items(value), opaque, budget, depth)]
    if issubclass(kind, collections.OrderedDict):
        return ["O", _pairs(collections.OrderedDict.items(value), opaque, budget, depth)]
    if issubclass(kind, collections.defaultdict):
        return ["D", _pairs(dict.items(value), opaque, budget, depth)]
    if issubclass(kind, dict):
        return ["d", _pairs(dict.items(value), opaque, budget, depth)]
    if issubclass(kind, list):
        return ["l", _items(list.__iter__(value), opaque, budget, depth)]
    if issubclass(kind, tuple):
        return ["t", _items(tuple.__iter__(value), opaque, budget, depth)]
    if issubclass(kind, frozenset):
        return ["F", _items(frozenset.__iter__(value), opaque, budget, depth)]
    if issubclass(kind, set):
        return ["S", _items(set.__iter__(value), opaque, budget, depth)]
    if issubclass(kind, collections.deque):
        maxlen = collections.deque.maxlen.__get__(value)
        return ["q", _items(collections.deque.__iter__(value), opaque, budget, depth), maxlen]
    if kind is range:
        return ["r", *(int.__format__(x, "x") for x in (value.start, value.stop, value.step))]
    if kind is fractions.Fraction:
        return ["fr", int.__format__(value.numerator, "x"), int.__format__(value.denominator, "x")]
    if kind is decimal.Decimal:
        return ["dec", decimal.Decimal.__str__(value)]
    if opaque and _is_iterator(kind):
        items = []
        for item in value:
            items.append(_encode(item, opaque, budget, depth + 1))
        return ["it", items]
    name = type.__dict__["__name__"].__get__(kind)[:100]
    if opaque:
        return ["o", name]
    raise Unsendable("a %s" % name)


def _is_iterator(kind):
    return callable(getattr(kind, "__next__", None)) and callable(getattr(kind, "__iter__", None))


# ------------------------------------------------------------------------------------------------- decode

def decode(tree, budget=None):
    """A tagged tree (from anyone) -> a fresh plain value; FrameError for anything else."""
    try:
        return _decode(tree, budget if budget is not None else [MAX_ITEMS], 0)
    except FrameError:
        raise
    except (TypeError, ValueError, KeyError, IndexError, OverflowError, ArithmeticError, RecursionError,
            MemoryError) as exc:
        raise FrameError("malformed value: %s" % type(exc).__name__) from None


def _int(text):
    if type(text) is not str or not text or len(text) > MAX_FRAME:
        raise FrameError("malformed int")
    return int(text, 16)


def _float(text):
    if type(text) is not str or len(text) > 40:
        raise FrameError("malformed float")
    return float(text)


def _list(tree, budget, depth):
    if type(tree) is not list:
        raise FrameError("malformed container")
    return [_decode(x, budget, depth + 1) for x in tree]


def _dict_pairs(tree, budget, depth):
    if type(tree) is not list:
        raise FrameError("malformed mapping")
    pairs = []
    for pair in tree:
        if type(pair) is not list or len(pair) != 2:
            raise FrameError("malformed mapping item")
        pairs.append((_decode(pair[0], budget, depth + 1), _decode(pair[1], budget, depth + 1)))
    return pairs


def _decode(tree, budget, depth):
    budget[0] -= 1
    if budget[0] < 0 or depth > MAX_DEPTH:
        raise FrameError("value too large or too deep")
    if type(tree) is not list or not tree or type(tree[0]) is not str:
        raise FrameError("malformed value")
    tag, n = tree[0], len(tree)
    if tag == "n" and n == 1:
        return None
    if tag == "b" and n == 2 and type(tree[1]) is bool:
        return tree[1]
    if tag == "i" and n == 2:
        return _int(tree[1])
    if tag == "f" and n == 2:
        return _float(tree[1])
    if tag == "c" and n == 3:
        return complex(_float(tree[1]), _float(tree[2]))
    if tag == "s" and n == 2 and type(tree[1]) is str:
        return tree[1]
    if tag in ("y", "ya") and n == 2 and type(tree[1]) is str:
        return (bytes if tag == "y" else bytearray).fromhex(tree[1])
    if tag in ("l", "t", "S", "F", "it") and n == 2:
        items = _list(tree[1], budget, depth)
        return {"l": list, "t": tuple, "S": set, "F": frozenset, "it": iter}[tag](items)
    if tag in ("d", "C", "O", "D") and n == 2:
        pairs = _dict_pairs(tree[1], budget, depth)
        if tag == "D":
            return collections.defaultdict(None, pairs)
        if tag == "C":
            return collections.Counter(dict(pairs))
        return {"d": dict, "O": collections.OrderedDict}[tag](pairs)
    if tag == "q" and n == 3 and (tree[2] is None or type(tree[2]) is int and tree[2] >= 0):
        return collections.deque(_list(tree[1], budget, depth), tree[2])
    if tag == "r" and n == 4:
        return range(_int(tree[1]), _int(tree[2]), _int(tree[3]))
    if tag == "fr" and n == 3:
        return fractions.Fraction(_int(tree[1]), _int(tree[2]))
    if tag == "dec" and n == 2 and type(tree[1]) is str and len(tree[1]) <= 1000:
        return decimal.Decimal(tree[1])
    if tag == "o" and n == 2 and type(tree[1]) is str:
        return Opaque(tree[1][:100])
    raise FrameError("unknown or malformed tag")


# ------------------------------------------------------------------------------------------------- copy back

MUTABLE = (list, dict, set, bytearray, collections.deque)


def copy_into(target, new, depth=0):
    """Make the test's own `target` equal to `new` (decoded from the candidate's copy after a call) in place,
    keeping the identity of nested containers where the shapes allow. Objects of other types are left alone:
    what the candidate cannot have changed in place is not changed here."""
    if depth > MAX_DEPTH:
        return
    if isinstance(target, (list, bytearray)) and type(new) is (list if isinstance(target, list) else bytearray):
        if len(target) == len(new) and isinstance(target, list):
            for i, item in enumerate(new):
                target[i] = _merged(target[i], item, depth)
        else:
            target[:] = new
    elif isinstance(target, dict) and isinstance(new, dict):
        if list(target.keys()) == list(new.keys()):
            for key, item in new.items():
                target[key] = _merged(target[key], item, depth)
        else:
            target.clear()
            target.update(new)
    elif isinstance(target, set) and isinstance(new, (set, frozenset)):
        target.clear()
        target.update(new)
    elif isinstance(target, collections.deque) and isinstance(new, collections.deque):
        target.clear()
        target.extend(new)
    elif isinstance(target, tuple) and type(new) is tuple and len(target) == len(new):
        for old, item in zip(target, new):
            if isinstance(old, MUTABLE + (tuple,)):
                copy_into(old, item, depth + 1)


def _merged(old, new, depth):
    if isinstance(old, MUTABLE) and type(new) is type(old):
        copy_into(old, new, depth + 1)
        return old
    return new


# ------------------------------------------------------------------------------------------------- frames

def dumps(obj):
    return json.dumps(obj, separators=(",", ":")).encode()


def write_frame(fd, obj):
    """Write one frame (blocking)."""
    data = dumps(obj)
    view = memoryview(HEADER.pack(len(data)) + data)
    while view:
        view = view[os.write(fd, view):]


def read_exact(fd, n):
    chunks = []
    while n:
        chunk = os.read(fd, min(n, 1 << 20))
        if not chunk:
            raise EOFError("channel closed")
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def read_frame(fd, limit=MAX_FRAME):
    """One frame's JSON (blocking); EOFError when the writer is gone, FrameError when over `limit` or not
    JSON (nothing past an oversized header is read)."""
    (size,) = HEADER.unpack(read_exact(fd, HEADER.size))
    if size > limit:
        raise FrameError("frame of %d bytes over the cap of %d" % (size, limit))
    return loads(read_exact(fd, size))


def loads(data):
    try:
        return json.loads(data)
    except (ValueError, RecursionError, MemoryError) as exc:
        raise FrameError("not a JSON frame: %s" % type(exc).__name__) from None
