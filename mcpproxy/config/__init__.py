"""Configuration: load-time validation of the YAML route table."""

from mcpproxy.config.errors import ConfigError
from mcpproxy.config.loader import load_config, parse_config
from mcpproxy.config.model import Config, RouteSettings, ServerSettings

__all__ = ["Config", "ConfigError", "RouteSettings", "ServerSettings", "load_config", "parse_config"]
