"""The error a configuration is refused with: always names the YAML path it is about."""

from __future__ import annotations


class ConfigError(Exception):
    def __init__(self, path: str, message: str) -> None:
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}" if path else message)
