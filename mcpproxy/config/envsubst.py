"""``${env.NAME}`` and ``${env.NAME:=default}`` substitution, the convention of Llama Stack's run.yaml.

Substitution happens on parsed YAML scalars (never on raw text), so a value from the
environment can never inject YAML structure. A missing variable without a default is an error
naming the YAML path where it was used.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from mcpproxy.config.errors import ConfigError

_PATTERN = re.compile(r"\$\{env\.([A-Za-z_][A-Za-z0-9_]*)(?::=([^}]*))?\}")


def substitute(node: Any, env: Mapping[str, str], path: str = "") -> Any:
    """Return a copy of ``node`` with every ``${env.…}`` reference in its strings replaced."""
    if isinstance(node, str):
        return _substitute_str(node, env, path)
    if isinstance(node, list):
        return [substitute(item, env, f"{path}[{i}]") for i, item in enumerate(node)]
    if isinstance(node, dict):
        return {key: substitute(value, env, _join(path, key)) for key, value in node.items()}
    return node


def _substitute_str(text: str, env: Mapping[str, str], path: str) -> str:
    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        value = env.get(name)
        if value is not None and value != "":
            return value
        if default is not None:
            return default
        raise ConfigError(path, f"environment variable {name} is not set (use ${{env.{name}:=default}})")

    return _PATTERN.sub(replace, text)


def _join(path: str, key: object) -> str:
    return f"{path}.{key}" if path else str(key)
