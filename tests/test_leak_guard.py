"""The session-wide log scan must be able to fail: it finds a planted credential."""

from __future__ import annotations

from pathlib import Path

from tests.support.proxy import LOG_DIR, find_leaks


def test_scan_finds_a_planted_value(tmp_path: Path) -> None:
    (tmp_path / "proxy-1.log").write_text('{"event":"request","detail":"Bearer planted-token-123456"}\n')
    (tmp_path / "in-process.log").write_text('{"event":"request","subject_fingerprint":"0123456789ab"}\n')
    assert find_leaks(tmp_path, {"planted-token-123456"}) == ["proxy-1.log: …plan"]
    assert find_leaks(tmp_path, {"never-logged-value-42"}) == []


def test_the_session_scan_watches_real_logs() -> None:
    """The in-process proxies of this session log into the directory the scan reads."""
    assert (LOG_DIR / "in-process.log").exists()
