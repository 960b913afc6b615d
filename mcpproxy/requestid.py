"""Request ids: a per-process random prefix and a counter.

Ids need to be unique, not secret; a counter avoids a ``getrandom`` system call per request.
The prefix is drawn again in every forked worker so that workers never share ids.
"""

from __future__ import annotations

import itertools
import os


def _reseed() -> None:
    global _prefix, _counter
    _prefix = os.urandom(4).hex()
    _counter = itertools.count(int.from_bytes(os.urandom(3), "big"))


_prefix = ""
_counter = itertools.count()
_reseed()
os.register_at_fork(after_in_child=_reseed)


def new_request_id() -> str:
    """16 hex digits: 8 of the process's prefix, 8 of its counter."""
    # hex() of the counter with a 33rd bit set is "0x1" and the 8 digits, zero-padded: no
    # format string to parse on every request
    return _prefix + hex(0x1_0000_0000 | (next(_counter) & 0xFFFF_FFFF))[3:]
