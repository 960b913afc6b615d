"""The compiled build: which modules it covers, how staleness is detected, and how it is reported."""

from __future__ import annotations

from pathlib import Path

from mcpproxy import native
from tests.test_config import run_cli

ROOT = Path(__file__).resolve().parent.parent


def test_every_listed_module_is_a_module_of_the_package() -> None:
    for name in native.COMPILED:
        assert (ROOT / (name.replace(".", "/") + ".py")).is_file(), name
    assert "mcpproxy.native" not in native.COMPILED  # read by setup.py as a plain file


def test_this_run_tests_the_build_it_says() -> None:
    compiled = native.compiled_modules()
    if native.pure_python_requested():
        assert compiled == []
        assert native.describe() == "pure Python"
    elif compiled:
        assert compiled == [*native.COMPILED, *native.C_MODULES]
        count = len(native.COMPILED)
        assert native.describe() == f"compiled with mypyc ({count} of {count} per-request modules) and C"


def test_every_c_module_has_its_source_and_python_twin() -> None:
    for name in native.C_MODULES:
        base = ROOT / name.replace(".", "/")
        assert base.with_suffix(".c").is_file(), name
        assert base.with_suffix(".py").is_file(), name


def test_version_names_the_build() -> None:
    result = run_cli("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith(f"({native.describe()})")


def test_source_digest_follows_every_module_and_setup(tmp_path: Path) -> None:
    (tmp_path / "mcpproxy" / "web").mkdir(parents=True)
    (tmp_path / "setup.py").write_text("setup()\n")
    (tmp_path / "mcpproxy" / "a.py").write_text("A = 1\n")
    first = native.source_digest(tmp_path)
    assert native.source_digest(tmp_path) == first
    seen = {first}
    for change in (
        lambda: (tmp_path / "mcpproxy" / "a.py").write_text("A = 2\n"),
        lambda: (tmp_path / "mcpproxy" / "_c.c").write_text("/* C */\n"),  # a module in C
        lambda: (tmp_path / "mcpproxy" / "_c.c").write_text("/* C, edited */\n"),
        lambda: (tmp_path / "mcpproxy" / "web" / "b.py").write_text(""),  # a new, empty module
        lambda: (tmp_path / "setup.py").write_text("setup(ext_modules=[])\n"),
        lambda: (tmp_path / "mcpproxy" / "web" / "b.py").rename(tmp_path / "mcpproxy" / "web" / "c.py"),
    ):
        change()
        digest = native.source_digest(tmp_path)
        assert digest not in seen
        seen.add(digest)


def test_pure_python_is_requested_by_any_value_but_empty_or_zero() -> None:
    assert not native.pure_python_requested({})
    assert not native.pure_python_requested({"MCPPROXY_PURE_PYTHON": ""})
    assert not native.pure_python_requested({"MCPPROXY_PURE_PYTHON": "0"})
    assert native.pure_python_requested({"MCPPROXY_PURE_PYTHON": "1"})
    assert native.pure_python_requested({"MCPPROXY_PURE_PYTHON": "yes"})
