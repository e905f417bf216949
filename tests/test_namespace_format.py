"""Twizzler's namespace object format (reference §4.8): layout and round trips."""

import struct

import pytest
from hypothesis import given, strategies as st

from twzlinux.abi import constants as c
from twzlinux.abi.namespace import (ENTRIES_OFFSET, encode_entry, header, is_namespace,
                                    iter_entries, namespace_bytes, record_length)

names = st.text(st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)),
                min_size=1, max_size=60)
ids = st.integers(0, (1 << 128) - 1)


@st.composite
def entries(draw):
    type = draw(st.sampled_from([c.NAME_ENT_REGULAR, c.NAME_ENT_NAMESPACE, c.NAME_ENT_SYMLINK]))
    target = draw(names) if type == c.NAME_ENT_SYMLINK else None
    return draw(names), draw(ids), type, target, draw(st.sampled_from([0, c.NAME_ENT_VALID]))


def test_entry_layout_is_twizzlers():
    rec = encode_entry("ab", 0x0102, c.NAME_ENT_NAMESPACE)
    # objid (16, LE), u32 flags, u16 resv0, u8 type, u8 resv1, u64 dlen, "ab\0", pad to 16
    assert rec[:16] == (0x0102).to_bytes(16, "little")
    assert struct.unpack_from("<IHBBQ", rec, 16) == (c.NAME_ENT_VALID, 0, c.NAME_ENT_NAMESPACE, 0, 3)
    assert rec[32:35] == b"ab\0"
    assert len(rec) == 48 == (32 + 3 + 15) & ~15


def test_symlink_target_follows_name():
    rec = encode_entry("l", 0, c.NAME_ENT_SYMLINK, target="/x/y")
    assert struct.unpack_from("<Q", rec, 24)[0] == len(b"l\0/x/y\0")
    assert rec[32:32 + 7] == b"l\0/x/y\0"


def test_header_and_new_namespace():
    assert header() == struct.pack("<QII", c.NAMESPACE_MAGIC, 0, 0)
    buf = namespace_bytes(5, 7)
    assert is_namespace(buf) and not is_namespace(bytes(16))
    ents = [(e.name, e.id, e.type, e.valid) for _, e in iter_entries(buf + bytes(64))]
    assert ents == [(".", 5, c.NAME_ENT_NAMESPACE, True), ("..", 7, c.NAME_ENT_NAMESPACE, True)]
    assert len(buf) == ENTRIES_OFFSET + 2 * 48


def test_list_ends_at_zero_dlen_and_at_buffer_end():
    buf = header() + encode_entry("a", 1, 0) + bytes(32) + encode_entry("b", 2, 0)
    assert [e.name for _, e in iter_entries(buf)] == ["a"]
    assert [e.name for _, e in iter_entries(header() + encode_entry("a", 1, 0))] == ["a"]


def test_truncated_record_is_an_error():
    with pytest.raises(ValueError):
        list(iter_entries(header() + encode_entry("abcdef", 1, 0)[:36]))


@pytest.mark.parametrize("args", [("", 1, 0), ("a\0b", 1, 0), ("l", 1, c.NAME_ENT_SYMLINK),
                                  ("r", 1, c.NAME_ENT_REGULAR, "t")])
def test_bad_entries_rejected(args):
    with pytest.raises(ValueError):
        encode_entry(*args)


@given(st.lists(entries(), max_size=12))
def test_round_trip(ents):
    buf = header() + b"".join(encode_entry(n, i, t, tg, f) for n, i, t, tg, f in ents) + bytes(32)
    got = list(iter_entries(buf))
    assert [(e.name, e.id, e.type, e.target, e.flags) for _, e in got] == list(ents)
    offs = [o for o, _ in got]
    assert offs == [ENTRIES_OFFSET + sum(e.reclen for _, e in got[:k]) for k in range(len(got))]
    assert all(e.reclen % 16 == 0 and e.reclen == record_length(
        len((e.name + "\0" + (e.target + "\0" if e.target is not None else "")).encode()))
        for _, e in got)
