"""The codec between a test process and a candidate process: plain values cross exactly and come out as fresh
objects of builtin (or a few standard) types; subclasses cross as their base; the decoder is total and bounded
whatever tree it is given; frames over the cap are refused unread; changed arguments are copied back in place."""

import collections
import decimal
import fractions
import math
import os
import random
import struct
from typing import NamedTuple

import pytest

from sandbox_workers.inside import codec


def roundtrip(value, opaque=True):
    return codec.decode(codec.loads(codec.dumps(codec.encode(value, opaque=opaque))))


PLAIN = [None, True, False, 0, -7, 10 ** 5000, -(2 ** 70), 1.5, float("inf"), -float("inf"), 1e-320, 3 + 4j, "",
         "h\u00e9llo \U0001f600 \udc80", b"\x00\xff", bytearray(b"ab"), [1, [2, [3]]], (1, (2,)), (), {1, "a", (2,)},
         frozenset({1}), {"a": [1], 2: {3: None}, (1, 2): b""}, collections.Counter("abca"),
         collections.OrderedDict([("b", 1), ("a", 2)]), collections.deque([1, 2], maxlen=3), range(2, 20, 3),
         fractions.Fraction(-3, 7), decimal.Decimal("1.10")]


@pytest.mark.parametrize("value", PLAIN, ids=[type(v).__name__ + str(i) for i, v in enumerate(PLAIN)])
def test_plain_values_cross_exactly_as_fresh_objects_of_their_type(value):
    back = roundtrip(value)
    assert type(back) is type(value) and back == value
    if isinstance(value, (list, dict, set, bytearray, collections.deque)):
        assert back is not value
    if isinstance(value, collections.deque):
        assert back.maxlen == value.maxlen
    if isinstance(value, (dict, collections.OrderedDict)):
        assert list(back) == list(value)


def test_nan_and_negative_zero_keep_what_makes_them_special():
    assert math.isnan(roundtrip(float("nan")))
    assert math.copysign(1.0, roundtrip(-0.0)) == -1.0


def test_a_defaultdict_crosses_as_a_mapping_without_its_factory():
    back = roundtrip(collections.defaultdict(list, {"a": [1]}))
    assert type(back) is collections.defaultdict and back == {"a": [1]} and back.default_factory is None


class Pair(NamedTuple):
    a: int
    b: int


class LyingStr(str):
    def __eq__(self, other):
        return True

    __hash__ = str.__hash__


class LyingList(list):
    def __iter__(self):
        return iter([99])

    def __len__(self):
        return 1


class Flag(int):
    def __repr__(self):
        return "boom"


@pytest.mark.parametrize("value, plain", [(Pair(1, 2), (1, 2)), (LyingStr("x"), "x"), (LyingList([1, 2, 3]), [1, 2, 3]),
                                          (Flag(5), 5), ({"k": LyingStr("v")}, {"k": "v"})])
def test_subclasses_cross_as_their_builtin_base_read_through_the_base_type(value, plain):
    back = roundtrip(value)
    assert type(back) is type(plain) and back == plain
    assert not (back == "anything else")


def test_iterators_and_generators_come_out_as_fresh_iterators_over_their_items():
    back = roundtrip(x * x for x in range(4))
    assert iter(back) is back and list(back) == [0, 1, 4, 9]
    assert list(roundtrip(map(str, [1, 2]))) == ["1", "2"]


def test_what_is_not_plain_data_is_opaque_in_a_reply_and_unsendable_in_a_call():
    back = roundtrip(lambda: 1)
    assert isinstance(back, codec.Opaque) and back == back and back != roundtrip(lambda: 1) and bool(back)
    with pytest.raises(codec.Unsendable):
        codec.encode([1, object()])
    with pytest.raises(codec.Unsendable):
        codec.encode(iter([1]))   # a test's iterator would be consumed by sending it


def test_values_too_large_or_too_deep_are_refused_on_both_sides():
    deep = None
    for _ in range(codec.MAX_DEPTH + 5):
        deep = [deep]
    with pytest.raises(codec.Unsendable):
        codec.encode(deep)
    with pytest.raises(codec.Unsendable):
        codec.encode(list(range(codec.MAX_ITEMS + 1)))
    tree = ["n"]
    for _ in range(codec.MAX_DEPTH + 5):
        tree = ["l", [tree]]
    with pytest.raises(codec.FrameError):
        codec.decode(tree)
    with pytest.raises(codec.FrameError):
        codec.decode(["l", [["n"]] * 10], budget=[5])


@pytest.mark.parametrize("tree", [
    "n", [], ["n", 1], ["b", 1], ["i", 5], ["i", ""], ["i", "zz"], ["f", "1" * 50], ["f", 1.0], ["s", 3],
    ["y", "abc"], ["l", "x"], ["d", [[["l", []], ["n"]]]], ["d", [["n"]]], ["q", [], -1], ["q", [], "3"],
    ["r", ["i", "1"], ["i", "2"], ["i", "0"]], ["r", "1", "2", "0"], ["fr", "1", "0"], ["dec", "nonsense"],
    ["o", 5], ["pickle", "gASV"], [1, 2], ["l", [["n"], ["weird"]]], ["C", [["x"]]],
])
def test_the_decoder_refuses_every_malformed_tree_with_a_frame_error(tree):
    with pytest.raises(codec.FrameError):
        codec.decode(tree)


def test_the_decoder_is_total_on_random_trees():
    rng = random.Random(0)
    atoms = [None, True, 0, -1, 1.5, "", "x", "ff", "-1", "1e999", [], {}]
    tags = ["n", "b", "i", "f", "c", "s", "y", "ya", "l", "t", "S", "F", "d", "C", "O", "D", "q", "r", "fr", "dec",
            "o", "it", "zz"]

    def tree(depth):
        if depth > 4 or rng.random() < 0.3:
            return rng.choice(atoms)
        return [rng.choice(tags)] + [tree(depth + 1) if rng.random() < 0.5 else [tree(depth + 1)]
                                     for _ in range(rng.randint(0, 3))]

    for _ in range(5000):
        try:
            codec.decode(tree(0))
        except codec.FrameError:
            pass


def test_a_frame_over_the_cap_is_refused_before_its_body_is_read():
    r, w = os.pipe()
    try:
        os.write(w, struct.pack(">I", codec.MAX_FRAME + 1) + b"[" * 100)
        with pytest.raises(codec.FrameError, match="over the cap"):
            codec.read_frame(r)
        assert os.read(r, 100) == b"[" * 100   # nothing of the body was consumed
        os.write(w, struct.pack(">I", 4) + b"nope")
        with pytest.raises(codec.FrameError):
            codec.read_frame(r)
        os.write(w, struct.pack(">I", 10) + b"[1]")
        os.close(w)
        w = None
        with pytest.raises(EOFError):
            codec.read_frame(r)
    finally:
        os.close(r)
        if w is not None:
            os.close(w)


def test_changed_arguments_are_copied_back_in_place_keeping_nested_identity():
    inner = [3, 1]
    outer = [inner, "x"]
    codec.copy_into(outer, [[1, 3], "y"])
    assert outer == [[1, 3], "y"] and outer[0] is inner
    lst = [3, 1, 2]
    codec.copy_into(lst, [1, 2, 3, 4])
    assert lst == [1, 2, 3, 4]
    d, s, q = {"a": [1]}, {1, 2}, collections.deque([1])
    keep = d["a"]
    codec.copy_into(d, {"a": [1, 2]})
    codec.copy_into(s, {3})
    codec.copy_into(q, collections.deque([2, 3]))
    assert (d, d["a"] is keep, s, list(q)) == ({"a": [1, 2]}, True, {3}, [2, 3])
    pair = ([1], 5)
    codec.copy_into(pair, ([2], 6))
    assert pair == ([2], 5)   # the list inside changed; the tuple itself cannot
    text = "abc"
    codec.copy_into(text, "xyz")
    assert text == "abc"
