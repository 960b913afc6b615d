"""OAuth token acquisition for upstreams: one module per protocol, no web framework.

The web layer supplies a :class:`~mcpproxy.oauth.transport.TokenHttp` (see
``mcpproxy.web.oauth_http``); :class:`~mcpproxy.oauth.runtime.ExchangeRuntime` builds one
:class:`~mcpproxy.oauth.tokens.TokenSource` per route from the validated configuration.
"""
