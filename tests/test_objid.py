"""ObjID's text form is Twizzler's IDFMT, `%.16lx:%.16lx` of (hi, lo), and parses back."""

import pytest
from hypothesis import given, strategies as s

from libtwz.ids import ObjID


def test_format_is_hi_colon_lo():
    oid = ObjID((0x0123456789ABCDEF << 64) | 0xFEDCBA9876543210)
    assert str(oid) == "0123456789abcdef:fedcba9876543210"
    assert oid.hi == 0x0123456789ABCDEF and oid.lo == 0xFEDCBA9876543210


@given(s.integers(min_value=0, max_value=2**128 - 1))
def test_round_trip(v):
    oid = ObjID(v)
    assert ObjID.parse(str(oid)) == v
    assert ObjID.parse("0x" + str(oid).replace(":", "")) == v


@pytest.mark.parametrize("bad", ["", "xyz", "0123:4567", "g" * 32, "1" * 33, "12345678:" + "0" * 24])
def test_bad_text_is_refused(bad):
    with pytest.raises(ValueError, match="not an object ID"):
        ObjID.parse(bad)


def test_range():
    with pytest.raises(ValueError):
        ObjID(2**128)
    with pytest.raises(ValueError):
        ObjID(-1)
