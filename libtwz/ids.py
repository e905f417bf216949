"""Object IDs: 128-bit integers with Twizzler's `hi:lo` text form."""

from twzlinux.abi.structs import id_hi, id_lo, id_str

_MAX = 1 << 128


class ObjID(int):
    """A Twizzler object ID. It is an int, so it passes straight to the syscall stubs."""

    __slots__ = ()

    def __new__(cls, value: int = 0):
        value = int(value)
        if not 0 <= value < _MAX:
            raise ValueError(f"object ID {value:#x} does not fit in 128 bits")
        return super().__new__(cls, value)

    @property
    def lo(self) -> int:
        return id_lo(self)

    @property
    def hi(self) -> int:
        return id_hi(self)

    def __str__(self) -> str:
        return id_str(self)

    def __repr__(self) -> str:
        return f"ObjID('{self}')"

    @classmethod
    def parse(cls, text: str) -> "ObjID":
        """Read Twizzler's form back: 32 hex digits, optionally `hi:lo` and a `0x` prefix
        (as `objid_parse` accepts)."""
        s = text.strip().lower()
        if s.startswith("0x"):
            s = s[2:]
        digits = s.replace(":", "", 1) if s.count(":") == 1 and s.index(":") == 16 else s
        if len(digits) != 32 or any(ch not in "0123456789abcdef" for ch in digits):
            raise ValueError(f"not an object ID: {text!r} (want 32 hex digits, as hi:lo)")
        return cls(int(digits, 16))
