"""agent.protocol.canonical against the rfc8785 package (Trail of Bits) as an independent oracle."""

from __future__ import annotations

import enum
import json

import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.protocol.canonical import MAX_SAFE_INTEGER, _plain, _reference, canonical, canonical_string

ints = st.integers(min_value=-MAX_SAFE_INTEGER, max_value=MAX_SAFE_INTEGER)
# Hypothesis text() never yields lone surrogates, so every string is valid UTF-8. Bias towards
# the characters where escaping and key order go wrong.
tricky = st.sampled_from(
    ['"', "\\", "\b", "\f", "\n", "\r", "\t", "\x00", "\x1f", "\x7f", "\u2028", "\u2029",
     "é", "€", "\ufb33", "\U0001f600", "\U00010000", "\ue000", "\uffff", "/"]
)
texts = st.one_of(st.text(), st.lists(tricky, max_size=6).map("".join))
values = st.recursive(
    st.one_of(ints, texts),
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(texts, children, max_size=5),
    ),
    max_leaves=30,
)


@settings(max_examples=400, deadline=None)
@given(values)
def test_matches_rfc8785_oracle(value: object) -> None:
    expected = rfc8785.dumps(value)
    # Both writers: canonical() takes the stdlib fast path for most values, and the reference
    # writer for non-BMP keys and anything it must refuse.
    assert canonical(value) == expected
    assert _reference(value) == expected


@settings(max_examples=300, deadline=None)
@given(texts)
def test_canonical_string_is_the_jcs_form_of_a_string(s: str) -> None:
    assert canonical_string(s).encode("utf-8") == rfc8785.dumps(s)


def test_fast_path_is_taken_for_envelope_shaped_values() -> None:
    body = {"samples": [["m", "p", 1763777700000, "12.50", 0]], "é": ["\u2028"]}
    assert _plain(body)
    assert not _plain({"\U0001f600": 1}) and not _plain([True]) and not _plain([2**53])


@settings(max_examples=200, deadline=None)
@given(values)
def test_canonical_is_valid_json_that_round_trips(value: object) -> None:
    out = canonical(value)
    assert json.loads(out) == value
    assert canonical(json.loads(out)) == out


def test_keys_sort_by_utf16_code_units_not_code_points() -> None:
    # By code point U+FB33 < U+1F600, but in UTF-16 U+1F600 is D83D DE00 and D83D < FB33.
    obj = {"\ufb33": 2, "\U0001f600": 1, "a": 3, "": 4}
    assert canonical(obj) == '{"":4,"a":3,"\U0001f600":1,"\ufb33":2}'.encode()
    assert sorted(obj) == ["", "a", "\ufb33", "\U0001f600"]  # what a naive sort would do


def test_string_escapes_like_ecmascript() -> None:
    s = '"\\\b\f\n\r\t\x00\x01\x1f\x7f\u2028\u2029é\U0001f600/'
    expected = '"\\"\\\\\\b\\f\\n\\r\\t\\u0000\\u0001\\u001f\x7f\u2028\u2029é\U0001f600/"'
    assert canonical(s) == expected.encode("utf-8")


def test_rfc8785_example_structure() -> None:
    obj = {"numbers": [333333333, -4, 0], "string": "€$\x0f\nA'B\"\\\\\"/", "literals": []}
    assert canonical(obj) == rfc8785.dumps(obj)
    assert canonical(obj).startswith(b'{"literals":[],"numbers":[333333333,-4,0],')


def test_tuples_are_arrays_and_int_enums_are_numbers() -> None:
    class Q(enum.IntEnum):
        GOOD = 0

    assert canonical({"s": ("a", 1, Q.GOOD)}) == b'{"s":["a",1,0]}'


def test_integer_limits() -> None:
    edge = [MAX_SAFE_INTEGER, -MAX_SAFE_INTEGER]
    assert canonical(edge) == b"[9007199254740991,-9007199254740991]"
    with pytest.raises(ValueError, match=r"^seq: integer 9007199254740992 is outside"):
        canonical({"seq": 2**53})
    with pytest.raises(ValueError, match=r"^\[0\]: integer"):
        canonical([-(2**60)])


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        ({"body": {"samples": [[], [], [], ["m", "p", 1, 12.5, 0]]}},
         "body.samples[3][3]: floats are not allowed in signed messages; use a decimal string"),
        ({"ok": True}, "ok: booleans are not allowed"),
        ({"a": [None]}, "a[0]: null are not allowed"),
        (1.0, "(top level): floats are not allowed"),
        ({"a": {1: "x"}}, "a: object key 1 is not a string"),
        ({"b": b"raw"}, "b: bytes is not allowed"),
    ],
)
def test_refused_types_name_the_key_path(obj: object, message: str) -> None:
    with pytest.raises(TypeError) as e:
        canonical(obj)
    assert str(e.value).startswith(message)


def test_lone_surrogates_are_refused() -> None:
    with pytest.raises(ValueError, match=r"^x\[1\]: string .* lone surrogate"):
        canonical({"x": ["ok", "a\ud800"]})
    with pytest.raises(ValueError, match=r"object key .* lone surrogate"):
        canonical({"\udc00": 1})
