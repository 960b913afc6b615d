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


def new_request_id() -> str:
    """16 hex digits: 8 of the process's prefix, 8 of its counter."""
    ids = _IDS
    count = ids.next & 0xFFFF_FFFF
    ids.next = count + 1
    # hex() of the counter with a 33rd bit set is "0x1" and the 8 digits, zero-padded: no
    # format string to parse on every request
    return ids.prefix + hex(0x1_0000_0000 | count)[3:]
