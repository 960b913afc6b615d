"""Load-time validation of auth.verify, routes[].policy and audit: refusals name the YAML path."""

from __future__ import annotations

import pytest

from mcpproxy.config import ConfigError, parse_config
from mcpproxy.config.inbound import ASYMMETRIC_ALGORITHMS, ClaimRequirement

HEAD = """
routes:
  - name: a
    path: /a/mcp
    upstream: http://127.0.0.1:8000/mcp
"""


def load(block: str, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return parse_config(HEAD + block, env or {})


def refused(block: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load(block)
    return info.value


def test_issue_example_loads() -> None:
    config = load(
        """
    auth:
      verify:
        issuer: http://127.0.0.1:9400
        audience: [mcpproxy]
        algorithms: [RS256, ES256]
        required_scopes: [mcp]
        leeway_s: 30
    policy:
      default: allow
      rules:
        - tools: ["delete_*", "drop_table"]
          require_scopes: [admin]
        - tools: ["*"]
          require_claims: {tenant: acme}
"""
    )
    route = config.routes[0]
    verify = route.auth.verify
    assert verify is not None
    assert (verify.issuer, verify.audience, verify.algorithms) == (
        "http://127.0.0.1:9400",
        ("mcpproxy",),
        ("RS256", "ES256"),
    )
    assert verify.required_scopes == ("mcp",) and verify.leeway_s == 30
    assert verify.jwks_refresh_min_s == 30 and verify.cache_s == 60
    assert [s.kind for s in route.auth.subject] == ["authorization"]  # the token verified by default
    assert route.policy is not None and route.policy.default == "allow"
    first, second = route.policy.rules
    assert first.tools == ("delete_*", "drop_table") and first.require_scopes == ("admin",)
    assert second.require_claims == (ClaimRequirement(("tenant",), ("acme",)),)


def test_defaults() -> None:
    config = load("    auth: {verify: {issuer: 'https://idp.example/realms/x', audience: api}}\n")
    verify = config.routes[0].auth.verify
    assert verify is not None and verify.algorithms == ASYMMETRIC_ALGORITHMS and verify.audience == ("api",)
    assert "HS256" not in verify.algorithms and "none" not in verify.algorithms


@pytest.mark.parametrize(
    ("block", "path", "words"),
    [
        ("    auth: {verify: {audience: [x]}}\n", "routes[0].auth.verify.issuer", "required"),
        (
            "    auth: {verify: {issuer: 'http://idp.example', audience: [x]}}\n",
            "routes[0].auth.verify.issuer",
            "https",
        ),
        (
            "    auth: {verify: {issuer: 'ftp://127.0.0.1', audience: [x]}}\n",
            "routes[0].auth.verify.issuer",
            "https:// URL",
        ),
        (
            "    auth: {verify: {issuer: 'https://u:p@idp', audience: [x]}}\n",
            "routes[0].auth.verify.issuer",
            "credentials",
        ),
        (
            "    auth: {verify: {issuer: 'https://idp?x=1', audience: [x]}}\n",
            "routes[0].auth.verify.issuer",
            "query",
        ),
        ("    auth: {verify: {issuer: 'https://idp'}}\n", "routes[0].auth.verify.audience", "required"),
        (
            "    auth: {verify: {issuer: 'https://idp', audience: []}}\n",
            "routes[0].auth.verify.audience",
            "at least one",
        ),
        (
            "    auth: {verify: {issuer: 'https://idp', audience: [x], algorithms: [none]}}\n",
            "routes[0].auth.verify.algorithms[0]",
            "never accepted",
        ),
        (
            "    auth: {verify: {issuer: 'https://idp', audience: [x], algorithms: [RS256, HS256]}}\n",
            "routes[0].auth.verify.algorithms[1]",
            "never accepted",
        ),
        (
            "    auth: {verify: {issuer: 'https://idp', audience: [x], algorithms: [hs512]}}\n",
            "routes[0].auth.verify.algorithms[0]",
            "never accepted",
        ),
        (
            "    auth: {verify: {issuer: 'https://idp', audience: [x], algorithms: [RS257]}}\n",
            "routes[0].auth.verify.algorithms[0]",
            "unknown algorithm",
        ),
        (
            "    auth: {verify: {issuer: 'https://idp', audience: [x], algorithms: []}}\n",
            "routes[0].auth.verify.algorithms",
            "at least one",
        ),
        (
            "    auth: {verify: {issuer: 'https://idp', audience: [x], required_scopes: ['a b']}}\n",
            "routes[0].auth.verify.required_scopes[0]",
            "not a valid scope",
        ),
        (
            "    auth: {verify: {issuer: 'https://idp', audience: [x], leeway: 5}}\n",
            "routes[0].auth.verify.leeway",
            "unknown key",
        ),
        (
            "    auth: {verify: {issuer: 'https://idp', audience: [x], leeway_s: -1}}\n",
            "routes[0].auth.verify.leeway_s",
            "between 0",
        ),
        (
            "    auth: {verify: {issuer: 'https://idp', audience: [x], jwks_uri: 'http://keys.example/jwks'}}\n",
            "routes[0].auth.verify.jwks_uri",
            "https",
        ),
        (
            "    auth: {verify: {issuer: 'https://idp', audience: [x]}, subject: []}\n",
            "routes[0].auth.subject",
            "verify",
        ),
        ("    policy: {default: maybe, rules: []}\n", "routes[0].policy.default", "allow, deny"),
        ("    policy: {default: allow}\n", "routes[0].policy.rules", "unless default is deny"),
        (
            "    policy: {rules: [{require_scopes: [a]}]}\n",
            "routes[0].policy.rules[0]",
            "tools, resources or prompts",
        ),
        (
            "    policy: {rules: [{tools: ['a b'], deny: true}]}\n",
            "routes[0].policy.rules[0].tools[0]",
            "not a valid glob",
        ),
        (
            "    policy: {rules: [{tools: ['del[ete'], deny: true}]}\n",
            "routes[0].policy.rules[0].tools[0]",
            "unclosed",
        ),
        (
            "    policy: {rules: [{tools: [x], require_scopes: [admin]}]}\n",
            "routes[0].policy.rules[0].require_scopes",
            "needs auth.verify",
        ),
        (
            "    policy: {rules: [{tools: [x], require_claims: {tenant: acme}}]}\n",
            "routes[0].policy.rules[0].require_claims",
            "needs auth.verify",
        ),
        (
            "    policy: {rules: [{tools: [x], deny: true, require_scopes: [a]}]}\n",
            "routes[0].policy.rules[0].deny",
            "refuses outright",
        ),
        ("    policy: {rules: [{tools: [x], tool: [y]}]}\n", "routes[0].policy.rules[0].tool", "unknown key"),
        ("    policy: {rulez: []}\n", "routes[0].policy.rulez", "unknown key"),
    ],
)
def test_refusals(block: str, path: str, words: str) -> None:
    error = refused(block)
    assert error.path == path, error
    assert words in error.message, error


def test_claim_requirements_validated() -> None:
    verify = "    auth: {verify: {issuer: 'https://idp', audience: [x]}}\n"
    ok = load(
        verify
        + "    policy: {rules: [{tools: ['*'], require_claims: {realm_access.roles: [admin, ops], active: true}}]}\n"
    )
    assert ok.routes[0].policy is not None
    [rule] = ok.routes[0].policy.rules
    assert rule.require_claims == (
        ClaimRequirement(("realm_access", "roles"), ("admin", "ops")),
        ClaimRequirement(("active",), (True,)),
    )
    for claims, path in (
        ("{'bad name': x}", "routes[0].policy.rules[0].require_claims.bad name"),
        ("{tenant: {nested: x}}", "routes[0].policy.rules[0].require_claims.tenant"),
        ("{tenant: []}", "routes[0].policy.rules[0].require_claims.tenant"),
    ):
        with pytest.raises(ConfigError) as info:
            load(verify + f"    policy: {{rules: [{{tools: ['*'], require_claims: {claims}}}]}}\n")
        assert info.value.path == path


def test_insecure_issuer_allowed_when_said_so() -> None:
    config = load(
        "    auth: {verify: {issuer: 'http://idp.internal:8080/realms/x', audience: [x], allow_insecure: true}}\n"
    )
    assert config.routes[0].auth.verify is not None


def test_policy_with_default_deny_needs_no_rules() -> None:
    config = load("    policy: {default: deny}\n")
    assert config.routes[0].policy is not None and config.routes[0].policy.rules == ()
