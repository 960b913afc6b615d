"""Builds mcpproxy; compiles its per-request modules with mypyc where it can.

The metadata is in pyproject.toml. Which modules are compiled, and why, is in mcpproxy/native.py,
as are the modules written in C that are built with them. Without a C compiler or Python's
headers, or with MCPPROXY_PURE_PYTHON=1, nothing is compiled and the package is pure Python.
When a compiler is there, a failed compile fails the build: half-built extensions would not
import.
"""

from __future__ import annotations

import runpy
import shutil
import sys
import sysconfig
from pathlib import Path
from typing import Any

from setuptools import Extension, setup

ROOT = Path(__file__).resolve().parent


def _can_compile() -> bool:
    compiler = (sysconfig.get_config_var("CC") or "cc").split()[0]
    headers = Path(sysconfig.get_paths()["include"]) / "Python.h"
    return shutil.which(compiler) is not None and headers.exists()


def _extensions() -> list[Any]:
    native = runpy.run_path(str(ROOT / "mcpproxy" / "native.py"))
    if native["pure_python_requested"]():
        return []
    if not _can_compile():
        print("mcpproxy: no C compiler or Python headers: building pure Python", file=sys.stderr)
        return []
    from mypyc.build import mypycify

    paths = [name.replace(".", "/") + ".py" for name in native["COMPILED"]]
    # One shared library, named for the project (mcpproxy__mypyc), beside one stub per module.
    compiled = list(mypycify(paths, opt_level="3", group_name="mcpproxy"))
    written_in_c = [Extension(name, [name.replace(".", "/") + ".c"]) for name in native["C_MODULES"]]
    return compiled + written_in_c


setup(ext_modules=_extensions())
