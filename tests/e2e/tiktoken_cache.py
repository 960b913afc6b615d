"""Rebuild tiktoken's ``cl100k_base.tiktoken`` offline, from the ranks npm's ``js-tiktoken`` ships.

OGX's ``inline::sqlite-vec`` provider loads tiktoken's ``cl100k_base`` at start-up, which tiktoken
normally downloads. tiktoken first looks in ``$TIKTOKEN_CACHE_DIR/<sha1 of the download URL>``
and accepts the file only if its sha256 is the one it pins; so this writes exactly that file
and checks the same hash (tiktoken would otherwise discard it and try the network).

``js-tiktoken``'s ``dist/ranks/cl100k_base.js`` is ``export default {..., "bpe_ranks": S}``
where ``S`` is lines of ``<name> <first rank> <base64 token> <base64 token> ...`` (consecutive
ranks). The original file is ``<base64 token> <rank>\\n`` in rank order.

Standard library only: ``python tests/e2e/tiktoken_cache.py RANKS_JS OUT_DIR``.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

URL = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"
# tiktoken_ext.openai_public.cl100k_base's expected_hash.
SHA256 = "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"
N_RANKS = 100256


def cache_key() -> str:
    """The file name tiktoken looks for in ``TIKTOKEN_CACHE_DIR``."""
    return hashlib.sha1(URL.encode()).hexdigest()


def rebuild(ranks_js: str) -> bytes:
    start, end = ranks_js.index("{"), ranks_js.rindex("}") + 1
    data = json.loads(ranks_js[start:end])
    ranks: dict[int, str] = {}
    for line in str(data["bpe_ranks"]).split("\n"):
        if not line:
            continue
        fields = line.split(" ")
        first = int(fields[1])
        for i, token in enumerate(fields[2:]):
            ranks[first + i] = token
    if sorted(ranks) != list(range(N_RANKS)):
        raise ValueError(f"expected ranks 0..{N_RANKS - 1}, got {len(ranks)} ranks")
    return "".join(f"{ranks[r]} {r}\n" for r in range(N_RANKS)).encode()


def write_cache(ranks_js_path: Path, out_dir: Path) -> Path:
    content = rebuild(ranks_js_path.read_text(encoding="utf-8"))
    digest = hashlib.sha256(content).hexdigest()
    if digest != SHA256:
        raise ValueError(f"rebuilt cl100k_base has sha256 {digest}, expected {SHA256}")
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / cache_key()
    tmp = target.with_suffix(".tmp")
    tmp.write_bytes(content)
    tmp.replace(target)
    return target


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: tiktoken_cache.py RANKS_JS OUT_DIR", file=sys.stderr)
        return 2
    target = write_cache(Path(argv[0]), Path(argv[1]))
    print(f"tiktoken cl100k_base -> {target} (sha256 {SHA256})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
