"""A small typed reader over parsed YAML that tracks the path of every value it hands out.

Each parse function takes a :class:`Section`, reads the keys it knows, and calls
:meth:`Section.finish`, which refuses any key nobody read, so a typo is an error at load time
(``routes[1].upstrem: unknown key``) rather than a silently ignored setting.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from mcpproxy.config.errors import ConfigError
from mcpproxy.secrets import Secret

T = TypeVar("T")
_MISSING: Any = object()


class Section:
    def __init__(self, data: Mapping[str, Any], path: str) -> None:
        self._data = data
        self.path = path
        self._read: set[str] = set()

    @classmethod
    def of(cls, value: Any, path: str) -> Section:
        if not isinstance(value, Mapping):
            raise ConfigError(path, f"expected a mapping, got {_kind(value)}")
        for key in value:
            if not isinstance(key, str):
                raise ConfigError(path, f"keys must be strings, got {key!r}")
        return cls(value, path)

    def at(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def error(self, key: str, message: str) -> NoReturn:
        raise ConfigError(self.at(key), message)

    def has(self, key: str) -> bool:
        return key in self._data

    def raw(self, key: str, default: Any = _MISSING) -> Any:
        self._read.add(key)
        if key not in self._data or self._data[key] is None:
            if default is _MISSING:
                raise ConfigError(self.at(key), "is required")
            return default
        return self._data[key]

    def text(self, key: str, default: Any = _MISSING) -> Any:
        value = self.raw(key, default)
        if value is default and default is not _MISSING:
            return value
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            self.error(key, f"expected a string, got {_kind(value)}")
        text = str(value)
        if not text:
            self.error(key, "must not be empty")
        return text

    def choice(self, key: str, options: tuple[str, ...], default: Any = _MISSING) -> Any:
        value = self.text(key, default)
        if value is not default and value not in options:
            self.error(key, f"must be one of {', '.join(options)}; got {value!r}")
        return value

    def flag(self, key: str, default: bool) -> bool:
        value = self.raw(key, default)
        if not isinstance(value, bool):
            self.error(key, f"expected true or false, got {_kind(value)}")
        return value

    def number(
        self, key: str, default: Any = _MISSING, *, minimum: float = 0, maximum: float | None = None
    ) -> Any:
        value = self.raw(key, default)
        if value is default and default is not _MISSING:
            return value
        if isinstance(value, str):
            value = _parse_number(value, self.at(key))
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.error(key, f"expected a number, got {_kind(value)}")
        if value < minimum or (maximum is not None and value > maximum):
            bound = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
            self.error(key, f"must be {bound}; got {value}")
        return value

    def integer(
        self, key: str, default: Any = _MISSING, *, minimum: int = 0, maximum: int | None = None
    ) -> Any:
        value = self.number(key, default, minimum=minimum, maximum=maximum)
        if value is not default and int(value) != value:
            self.error(key, f"expected a whole number, got {value}")
        return value if value is default else int(value)

    def strings(self, key: str, default: Any = _MISSING, *, allow_scalar: bool = True) -> Any:
        value = self.raw(key, default)
        if value is default and default is not _MISSING:
            return value
        if allow_scalar and isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            self.error(key, f"expected a list of strings, got {_kind(value)}")
        out: list[str] = []
        for i, item in enumerate(value):
            if isinstance(item, bool) or not isinstance(item, str | int) or str(item) == "":
                raise ConfigError(f"{self.at(key)}[{i}]", "expected a non-empty string")
            out.append(str(item))
        return out

    def section(self, key: str, default: Any = _MISSING) -> Any:
        value = self.raw(key, default)
        if value is default and default is not _MISSING:
            return value
        return Section.of(value, self.at(key))

    def optional_section(self, key: str) -> Section | None:
        result: Section | None = self.section(key, None)
        return result

    def sections(self, key: str) -> Iterator[Section]:
        value = self.raw(key, [])
        if not isinstance(value, list):
            self.error(key, f"expected a list, got {_kind(value)}")
        for i, item in enumerate(value):
            yield Section.of(item, f"{self.at(key)}[{i}]")

    def secret(self, key: str, file_key: str | None = None, *, required: bool = True) -> Secret | None:
        """A credential given inline (usually ``${env.X}``) or, with ``file_key``, read from a file."""
        inline = self.raw(key, None)
        file_name = self.raw(file_key, None) if file_key else None
        if inline is not None and file_name is not None:
            self.error(key, f"give either {key} or {file_key}, not both")
        if file_name is not None:
            return Secret(_read_secret_file(str(file_name), self.at(file_key or key)))
        if inline is None:
            if required:
                either = f" (or {file_key})" if file_key else ""
                self.error(key, f"is required{either}")
            return None
        if not isinstance(inline, str) or not inline:
            self.error(key, "expected a non-empty string")
        return Secret(inline)

    def finish(self) -> None:
        unknown = [key for key in self._data if key not in self._read]
        if unknown:
            raise ConfigError(self.at(unknown[0]), "unknown key")


def _read_secret_file(name: str, path: str) -> str:
    try:
        text = Path(name).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(path, f"cannot read secret file {name}: {exc.strerror}") from None
    value = text.strip()
    if not value:
        raise ConfigError(path, f"secret file {name} is empty")
    return value


def _parse_number(text: str, path: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ConfigError(path, f"expected a number, got {text!r}") from None


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    return {dict: "a mapping", list: "a list", bool: "a boolean", str: "a string"}.get(
        type(value), type(value).__name__
    )
