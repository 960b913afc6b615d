"""The thin aiohttp layer: the proxy handler, the application and the server process."""
