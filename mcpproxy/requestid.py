"""Request ids: a per-process random prefix and a counter.

Ids need to be unique, not secret; a counter avoids a ``getrandom`` system call per request.
The prefix is drawn again in every forked worker so that workers never share ids.
"""

from __future__ import annotations

import os
from typing import Final


class _Ids:
    """The prefix and the next count, as attributes of a compiled class (module globals, which
    the id used to live in, are dictionary lookups even compiled)."""

    __slots__ = ("next", "prefix")

    def __init__(self) -> None:
        self.prefix = ""
        self.next = 0
        self.reseed()

    def reseed(self) -> None:
        self.prefix = os.urandom(4).hex()
        self.next = int.from_bytes(os.urandom(3), "big")


_IDS: Final = _Ids()
os.register_at_fork(after_in_child=_IDS.reseed)


#: 0 to 255 as two hex digits.
_HEX: Final = tuple(f"{n:02x}" for n in range(256))


def new_request_id() -> str:
    """16 hex digits: 8 of the process's prefix, 8 of its counter (a byte at a time from the
    table: one string built, where ``hex()`` and a slice made three)."""
    ids = _IDS
    count = ids.next & 0xFFFF_FFFF
    ids.next = count + 1
    high, low = count >> 16, count & 0xFFFF
    return f"{ids.prefix}{_HEX[high >> 8]}{_HEX[high & 255]}{_HEX[low >> 8]}{_HEX[low & 255]}"
