pytest_plugins = [
    "tests.support.proxy",
    "tests.support.mcp_servers",
    "tests.support.oauth",
    "tests.support.redis_server",
]
