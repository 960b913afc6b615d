"""``mcpproxy serve | check | --version``."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from mcpproxy import __version__, native
from mcpproxy.config import Config, ConfigError, RouteSettings, load_config


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    from mcpproxy import logs

    logs.configure(args.log_level)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"mcpproxy: invalid configuration: {exc}", file=sys.stderr)
        return 1
    if args.command == "check":
        _print_check(config)
        return 0
    from mcpproxy.web.server import serve

    for warning in config.warnings:
        print(f"mcpproxy: warning: {warning}", file=sys.stderr)
    return serve(args.config, config)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mcpproxy", description="Credential-injecting reverse proxy for MCP servers."
    )
    parser.add_argument(
        "--version", action="version", version=f"mcpproxy {__version__} ({native.describe()})"
    )
    sub = parser.add_subparsers(dest="command")
    for name, text in (("serve", "run the proxy"), ("check", "validate a config and list its routes")):
        cmd = sub.add_parser(name, help=text)
        default = os.environ.get("MCPPROXY_CONFIG")
        cmd.add_argument(
            "-c",
            "--config",
            default=default,
            required=default is None,
            help="the YAML route table (default: $MCPPROXY_CONFIG)",
        )
        cmd.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    return parser


def _print_check(config: Config) -> None:
    server = config.server
    count = len(config.routes)
    print(f"config {config.source}: OK — listening on {server.host}:{server.port}, {count} route(s)")
    for route in config.routes:
        upstream = route.auth.upstream
        subject = ", ".join(_source_label(s) for s in route.auth.subject) or "-"
        print(f"  {route.name:<16} {route.path:<28} -> {route.upstream}")
        print(f"  {'':<16} credential: {upstream.type}; subject from: {subject}")
        for line in _route_extras(route):
            print(f"  {'':<16} {line}")
    for warning in config.warnings:
        print(f"warning: {warning}")


def _route_extras(route: RouteSettings) -> list[str]:
    lines = []
    verify = route.auth.verify
    if verify is not None:
        lines.append(f"verify: issuer {verify.issuer}, audience {', '.join(verify.audience)}")
    if route.policy is not None:
        lines.append(f"policy: default {route.policy.default}, {len(route.policy.rules)} rule(s)")
    fallback = route.auth.fallback
    if fallback is not None:
        methods = ", ".join([*sorted(fallback.methods), "GET", "DELETE"])
        lines.append(f"fallback: {fallback.upstream.type} for {methods}")
    return lines


def _source_label(source: object) -> str:
    kind = getattr(source, "kind", "?")
    detail = getattr(source, "name", None) or getattr(source, "key", None)
    return f"{kind}:{detail}" if kind in ("header", "mcp_meta") and detail else str(kind)


if __name__ == "__main__":
    sys.exit(main())
