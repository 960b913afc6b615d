"""Deployment artefacts: Containerfile, deploy/kubernetes, deploy/compose (issue "ships as a sidecar").

Everything runs offline. The Kubernetes manifests are validated against the JSON schemas shipped in
the `kubernetes-validate` wheel and compose.yaml against the compose-spec schema shipped in the
`check-jsonschema` wheel (both pinned in deploy/requirements-validate.txt; when the test
interpreter lacks them, scripts/validate-deploy.sh prepares .cache/deploy-venv from PyPI once).
The checks themselves live in deploy/validate.py, which scripts/validate-deploy.sh also runs.
"""

from __future__ import annotations

import copy
import http.server
import importlib.util
import json
import os
import re
import subprocess
import sys
import sysconfig
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from tests.support.net import free_port
from tests.support.verify import INIT

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "compose"


def _load_validate() -> ModuleType:
    spec = importlib.util.spec_from_file_location("mcpproxy_deploy_validate", DEPLOY / "validate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


V = _load_validate()

SCHEMA_MODULES = ("kubernetes_validate", "check_jsonschema")


def _have_schema_modules() -> bool:
    return all(importlib.util.find_spec(name) is not None for name in SCHEMA_MODULES)


@pytest.fixture(scope="session")
def schema_validators() -> None:
    """Makes kubernetes_validate and check_jsonschema importable.

    Prefer installing deploy/requirements-validate.txt into the project's venv; otherwise
    scripts/validate-deploy.sh builds .cache/deploy-venv with this very interpreter (same ABI), and
    its site-packages is appended to sys.path (the project's own packages keep precedence)."""
    if _have_schema_modules():
        return
    result = subprocess.run(
        ["bash", "scripts/validate-deploy.sh", "--print-python"],
        cwd=ROOT,
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, f"preparing the validators failed:\n{result.stdout}\n{result.stderr}"
    python = result.stdout.strip().splitlines()[-1]
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    ours = sysconfig.get_config_var("py_version_short")
    assert f"python{ours}" in purelib, f"validator venv {purelib} is not Python {ours}"
    sys.path.append(purelib)
    importlib.invalidate_caches()
    assert _have_schema_modules()


def _problems(problems: list[str]) -> str:
    return "\n".join(problems)


def _kustomization(name: str) -> Any:
    return next(k for k in V.kustomizations() if k.name == name)


def _deployment_with_proxy(name_or_kustomization: Any) -> Any:
    k = name_or_kustomization
    if isinstance(k, str):
        k = _kustomization(k)
    return next(o for o in k.of_kind("Deployment") if any(V.is_mcpproxy(c) for c in V.containers_of(o)))


def _container(obj: Any, name: str) -> dict[str, Any]:
    return next(c for c in V.containers_of(obj) if c["name"] == name)


# --- Kubernetes: schemas -------------------------------------------------------------------

K8S_OBJECTS = [(k.name, o) for k in V.kustomizations() for o in k.objects]


def test_both_layouts_exist() -> None:
    assert {name for name, _ in K8S_OBJECTS} == {"sidecar", "shared"}
    kinds = {(name, o.kind) for name, o in K8S_OBJECTS}
    for layout in ("sidecar", "shared"):
        for kind in ("Deployment", "Service", "ConfigMap", "Secret", "ServiceAccount", "NetworkPolicy"):
            assert (layout, kind) in kinds, f"{layout} has no {kind}"
    assert ("shared", "PodDisruptionBudget") in kinds


@pytest.mark.timeout(600)
@pytest.mark.parametrize(
    ("layout", "obj"), K8S_OBJECTS, ids=[f"{n}-{o.kind}-{o.name}" for n, o in K8S_OBJECTS]
)
def test_kubernetes_object_matches_schema(schema_validators: None, layout: str, obj: Any) -> None:
    assert _problems(V.k8s_object_problems(obj, V.K8S_VERSIONS)) == ""


@pytest.mark.timeout(600)
def test_schema_validation_rejects_unknown_and_mistyped_fields(schema_validators: None) -> None:
    deployment = _deployment_with_proxy("sidecar")
    bad = copy.deepcopy(deployment)
    bad.body["spec"]["template"]["spec"]["containers"][0]["livenessProbes"] = {}
    assert any("livenessProbes" in p for p in V.k8s_object_problems(bad, ("1.37",)))
    bad = copy.deepcopy(deployment)
    bad.body["spec"]["replicas"] = "two"
    assert any("spec.replicas" in p for p in V.k8s_object_problems(bad, ("1.37",)))
    unknown = V.Obj("test", {"apiVersion": "example.com/v1", "kind": "Gadget", "metadata": {"name": "x"}})
    assert V.k8s_object_problems(unknown, ("1.37",)), "an object without a schema must not pass"


@pytest.mark.timeout(600)
def test_validated_kubernetes_versions_are_shipped(schema_validators: None) -> None:
    import kubernetes_validate

    shipped = {".".join(v.split(".")[:2]) for v in kubernetes_validate.utils.all_versions()}
    assert set(V.K8S_VERSIONS) <= shipped


# --- Kubernetes: kustomize, references, security --------------------------------------------


@pytest.mark.parametrize("group", ["kustomize", "security"])
def test_kubernetes_group_passes(group: str) -> None:
    assert _problems(V.CHECKS[group]()) == ""


def test_kustomize_references_are_checked() -> None:
    k = _kustomization("sidecar")
    pod = _deployment_with_proxy(k)
    pod.body["spec"]["template"]["spec"]["volumes"].append(
        {"name": "ghost", "configMap": {"name": "does-not-exist"}}
    )
    _container(pod, "mcpproxy")["env"].append(
        {"name": "X", "valueFrom": {"secretKeyRef": {"name": "mcpproxy-credentials", "key": "nope"}}}
    )
    problems = _problems(V._check_workload_references(k))
    assert "does-not-exist" in problems
    assert "mcpproxy-credentials/nope" in problems


def test_proxy_env_and_secret_files_must_be_provided() -> None:
    k = _kustomization("shared")
    pod = _deployment_with_proxy(k)
    proxy = _container(pod, "mcpproxy")
    proxy["env"] = [e for e in proxy["env"] if e["name"] != "MCPPROXY_CACHE_KEY"]
    volumes = {v["name"]: v for v in pod.body["spec"]["template"]["spec"]["volumes"]}
    volumes["credentials"]["secret"]["items"] = []
    problems = _problems(V._check_proxy_container_config(k, pod, proxy, volumes))
    assert "MCPPROXY_CACHE_KEY" in problems
    assert "/run/secrets/mcpproxy/weather-api-key" in problems


@pytest.mark.parametrize("layout", ["sidecar", "shared"])
def test_proxy_container_is_restricted(layout: str) -> None:
    pod = _deployment_with_proxy(layout)
    proxy = _container(pod, "mcpproxy")
    pod_sc = pod.body["spec"]["template"]["spec"]["securityContext"]
    sc = proxy["securityContext"]
    assert pod_sc["runAsNonRoot"] is True and sc["runAsNonRoot"] is True
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert sc["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod_sc["seccompProfile"]["type"] == "RuntimeDefault"
    assert {"cpu", "memory"} <= set(proxy["resources"]["requests"])
    assert {"cpu", "memory"} <= set(proxy["resources"]["limits"])
    assert proxy["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert proxy["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert {"name": "proxy", "containerPort": 8081, "protocol": "TCP"} in proxy["ports"]
    assert proxy["args"] == ["serve", "--config", "/etc/mcpproxy/config.yaml"]
    assert pod.body["spec"]["template"]["spec"]["automountServiceAccountToken"] is False


def test_security_check_catches_a_writable_root_filesystem() -> None:
    pod = _deployment_with_proxy("sidecar")
    proxy = _container(pod, "mcpproxy")
    assert V._container_security(pod, proxy) == []
    proxy["securityContext"]["readOnlyRootFilesystem"] = False
    proxy["securityContext"]["capabilities"] = {"add": ["NET_ADMIN"]}
    problems = _problems(V._container_security(pod, proxy))
    assert "readOnlyRootFilesystem" in problems and "capabilities" in problems


def test_sidecar_ogx_reaches_the_proxy_on_loopback() -> None:
    k = _kustomization("sidecar")
    pod = _deployment_with_proxy(k)
    assert [c["name"] for c in V.containers_of(pod)] == ["ogx", "mcpproxy"]
    run = yaml.safe_load(k.get("ConfigMap", "ogx-config").body["data"]["run.yaml"])
    proxy_config = yaml.safe_load(k.get("ConfigMap", "mcpproxy-config").body["data"]["config.yaml"])
    paths = {r["path"] for r in proxy_config["routes"]}
    assert run["connectors"], "the sidecar's OGX registers at least one connector"
    for connector in run["connectors"]:
        url = connector["url"]
        assert url.startswith("http://127.0.0.1:8081/")
        assert url.removeprefix("http://127.0.0.1:8081") in paths
    # The Service exposes OGX only, never the proxy.
    service = k.get("Service", "ogx")
    assert [p["port"] for p in service.body["spec"]["ports"]] == [8321]
    # The client secret comes from a Secret as env, the API key as a mounted file.
    env = {e["name"]: e for e in _container(pod, "mcpproxy")["env"]}
    assert env["PROXY_CLIENT_SECRET"]["valueFrom"]["secretKeyRef"]["name"] == "mcpproxy-credentials"
    assert "weather-api-key" in V._secret_keys(k.get("Secret", "mcpproxy-credentials"))


def test_shared_layout_has_replicas_pdb_and_encrypted_redis_cache() -> None:
    k = _kustomization("shared")
    deployment = _deployment_with_proxy(k)
    assert deployment.body["spec"]["replicas"] >= 2
    pdb = k.of_kind("PodDisruptionBudget")[0]
    assert pdb.body["spec"]["minAvailable"] == 1
    config = yaml.safe_load(k.get("ConfigMap", "mcpproxy-config").body["data"]["config.yaml"])
    assert config["cache"]["backend"] == "redis"
    assert config["cache"]["encryption_key"] == "${env.MCPPROXY_CACHE_KEY}"
    assert config["cache"]["url"] == "${env.MCPPROXY_REDIS_URL}"
    secret = k.get("Secret", "mcpproxy-credentials")
    assert {"client-secret", "redis-url", "cache-key", "weather-api-key"} <= V._secret_keys(secret)


# --- compose ----------------------------------------------------------------------------------


@pytest.mark.timeout(600)
def test_compose_file_matches_compose_spec(schema_validators: None) -> None:
    assert _problems(V.check_compose()) == ""


@pytest.mark.timeout(600)
def test_compose_schema_rejects_unknown_keys(schema_validators: None) -> None:
    doc = V.load_yaml(COMPOSE / "compose.yaml")
    doc["services"]["mcpproxy"]["restart_policy"] = "always"
    doc["services"]["ogx"]["ports"] = "8321"
    problems = _problems(V.compose_schema_problems(doc))
    assert "restart_policy" in problems
    assert "services.ogx.ports" in problems


def test_compose_services_are_wired_for_seed_000() -> None:
    doc = V.load_yaml(COMPOSE / "compose.yaml")
    services = doc["services"]
    assert set(services) == {"keycloak", "my-external-tool", "mcpproxy", "ogx"}
    assert services["mcpproxy"]["build"] == {"context": "../..", "dockerfile": "Containerfile"}
    assert "./mcpproxy.yaml:/etc/mcpproxy/config.yaml:ro,Z" in services["mcpproxy"]["volumes"]
    assert services["keycloak"]["command"] == ["start-dev", "--import-realm"]
    config = V.load_yaml(COMPOSE / "mcpproxy.yaml")
    (route,) = config["routes"]
    assert route["upstream"] == "http://my-external-tool:8000/mcp"
    assert route["auth"]["upstream"]["audience"] == ["my-external-tool"]
    run = V.load_yaml(COMPOSE / "ogx" / "run.yaml")
    assert "remote::model-context-protocol" in {p["provider_type"] for p in run["providers"]["tool_runtime"]}
    readme = (COMPOSE / "README.md").read_text(encoding="utf-8")
    assert f"http://mcpproxy:8081{route['path']}" in readme
    assert "/v1/responses" in readme




class _Canned(http.server.BaseHTTPRequestHandler):
    routes: dict[str, tuple[int, bytes]] = {}

    def do_GET(self) -> None:
        status, body = self.routes.get(self.path, (404, b"not found"))
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def canned_server() -> Iterator[tuple[int, dict[str, tuple[int, bytes]]]]:
    """A local HTTP server answering GETs from a {path: (status, body)} table."""
    routes: dict[str, tuple[int, bytes]] = {}
    handler = type("Handler", (_Canned,), {"routes": routes})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1]), routes
    finally:
        server.shutdown()
        server.server_close()


def test_keycloak_healthcheck_command_works(canned_server: tuple[int, dict[str, tuple[int, bytes]]]) -> None:
    port, routes = canned_server
    test = V.load_yaml(COMPOSE / "compose.yaml")["services"]["keycloak"]["healthcheck"]["test"]
    assert test[:3] == ["CMD", "bash", "-c"]
    script = test[3].replace("/dev/tcp/127.0.0.1/9000", f"/dev/tcp/127.0.0.1/{port}")
    assert script != test[3]
    routes["/health/ready"] = (200, b'{"status": "UP", "checks": []}')
    assert subprocess.run(["bash", "-c", script], timeout=10, check=False).returncode == 0
    routes["/health/ready"] = (503, b'{"status": "DOWN", "checks": []}')
    assert subprocess.run(["bash", "-c", script], timeout=10, check=False).returncode != 0


# --- Keycloak realm ---------------------------------------------------------------------------


def _realm() -> dict[str, Any]:
    realm: dict[str, Any] = json.loads(V.REALM.read_text(encoding="utf-8"))
    return realm


def test_realm_group_passes() -> None:
    assert _problems(V.check_realm()) == ""


def test_realm_reproduces_seed_000() -> None:
    realm = _realm()
    assert realm["realm"] == "demo"
    clients = {c["clientId"]: c for c in realm["clients"]}
    assert {"llama-stack", "my-external-tool", "mcp-proxy"} <= set(clients)
    llama = clients["llama-stack"]
    assert llama["publicClient"] and llama["standardFlowEnabled"] and llama["directAccessGrantsEnabled"]
    assert "my-external-tool-aud" in llama["optionalClientScopes"]
    proxy = clients["mcp-proxy"]
    assert proxy["publicClient"] is False
    assert proxy["attributes"]["standard.token.exchange.enabled"] == "true"
    scope = next(s for s in realm["clientScopes"] if s["name"] == "my-external-tool-aud")
    (mapper,) = scope["protocolMappers"]
    assert mapper["name"] == "my-external-tool-aud"
    assert mapper["protocolMapper"] == "oidc-audience-mapper"
    assert mapper["config"]["included.client.audience"] == "my-external-tool"
    user = realm["users"][0]
    assert user["enabled"] and user["credentials"][0]["temporary"] is False


@pytest.mark.parametrize(
    "breakage",
    ["no-exchange", "temporary-password", "no-audience-mapper", "undefined-scope", "no-proxy-aud"],
)
def test_realm_check_catches(breakage: str) -> None:
    realm = _realm()
    clients = {c["clientId"]: c for c in realm["clients"]}
    scopes = {s["name"]: s for s in realm["clientScopes"]}
    if breakage == "no-exchange":
        clients["mcp-proxy"]["attributes"] = {}
    elif breakage == "temporary-password":
        realm["users"][0]["credentials"][0]["temporary"] = True
    elif breakage == "no-audience-mapper":
        scopes["my-external-tool-aud"]["protocolMappers"] = []
    elif breakage == "undefined-scope":
        clients["llama-stack"]["optionalClientScopes"].append("nonexistent")
    elif breakage == "no-proxy-aud":
        clients["llama-stack"]["defaultClientScopes"].remove("mcp-proxy-aud")
    assert V.realm_problems(realm), f"{breakage} went unnoticed"


# --- Containerfile ----------------------------------------------------------------------------


def test_containerfile_group_passes() -> None:
    assert _problems(V.check_containerfile()) == ""


def _final_stage() -> list[Any]:
    stage: list[Any] = V._final_stage(V.parse_containerfile(ROOT / "Containerfile"))
    return stage


def test_containerfile_runs_as_numeric_non_root_user() -> None:
    users = [i.args for i in _final_stage() if i.keyword == "USER"]
    assert users, "no USER in the final stage"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0


def test_containerfile_shape() -> None:
    instructions = V.parse_containerfile(ROOT / "Containerfile")
    final = V._final_stage(instructions)
    froms = [i.args for i in instructions if i.keyword == "FROM"]
    assert len(froms) == 2, "multi-stage build expected"
    # The build stage has a C compiler for mypyc (the full image); the runtime stage is slim.
    assert re.fullmatch(r"docker\.io/library/python:\$\{PYTHON_VERSION\} AS build", froms[0])
    assert re.fullmatch(r"docker\.io/library/python:\$\{PYTHON_VERSION\}-slim", froms[1])
    assert any(i.keyword == "ARG" and i.args == "PYTHON_VERSION=3.11" for i in instructions)
    assert [i.args for i in final if i.keyword == "EXPOSE"] == ["8081"]
    assert [json.loads(i.args) for i in final if i.keyword == "ENTRYPOINT"] == [["mcpproxy"]]
    assert [json.loads(i.args) for i in final if i.keyword == "CMD"] == [
        ["serve", "--config", "/etc/mcpproxy/config.yaml"]
    ]
    runs = " ".join(i.args for i in instructions if i.keyword == "RUN")
    assert 'pip install --no-cache-dir ".[fast,redis]"' in runs
    assert 'grep -q "compiled with mypyc"' in runs  # a build without the compiled modules fails
    env = " ".join(i.args for i in final if i.keyword == "ENV")
    assert "MCPPROXY_CONFIG=/etc/mcpproxy/config.yaml" in env
    assert not any(i.keyword == "RUN" and re.search(r"\b(curl|wget|apt-get)\b", i.args) for i in final)


def _healthcheck_command() -> list[str]:
    (hc,) = [i for i in _final_stage() if i.keyword == "HEALTHCHECK"]
    assert "--interval=" in hc.args and "--timeout=" in hc.args
    return list(json.loads(hc.args.split(" CMD ", 1)[1]))


def test_healthcheck_probes_healthz_without_curl(
    canned_server: tuple[int, dict[str, tuple[int, bytes]]],
) -> None:
    command = _healthcheck_command()
    assert command[:2] == ["python", "-c"]
    assert "/healthz" in command[2] and "curl" not in command[2]
    port, routes = canned_server
    run = [sys.executable, "-c", command[2]]

    def probe() -> int:
        env = {**os.environ, "MCPPROXY_HEALTH_URL": f"http://127.0.0.1:{port}/healthz"}
        return subprocess.run(run, env=env, capture_output=True, timeout=10, check=False).returncode

    routes["/healthz"] = (200, b"ok")
    assert probe() == 0
    routes["/healthz"] = (503, b"down")
    assert probe() != 0
    env = {**os.environ, "MCPPROXY_HEALTH_URL": f"http://127.0.0.1:{free_port()}/healthz"}
    assert subprocess.run(run, env=env, capture_output=True, timeout=10, check=False).returncode != 0


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda s: s.replace("USER 10001:0", "USER root"), "USER must be a numeric non-root UID"),
        (lambda s: re.sub(r"\nUSER 10001:0\n", "\n", s), "sets no USER"),
        (lambda s: re.sub(r"HEALTHCHECK[^\n]*\\\n[^\n]*\n", "", s), "no HEALTHCHECK"),
        (lambda s: s.replace('CMD ["python", "-c"', 'CMD ["curl", "-f"'), "curl"),
        (lambda s: s.replace("pip install --no-cache-dir", "pip install"), None),
    ],
    ids=["root", "no-user", "no-healthcheck", "curl", "pip-cache"],
)
def test_containerfile_lint_catches(tmp_path: Path, edit: Any, expected: str | None) -> None:
    original = (ROOT / "Containerfile").read_text(encoding="utf-8")
    changed = edit(original)
    assert changed != original
    if expected is None:  # pip without --no-cache-dir is fine only while PIP_NO_CACHE_DIR is set
        changed = changed.replace("PIP_NO_CACHE_DIR=1", "PIP_X=1")
        expected = "--no-cache-dir"
    path = tmp_path / "Containerfile"
    path.write_text(changed, encoding="utf-8")
    assert expected in _problems(V.containerfile_problems(path, expect_port=8081))


def test_containerignore_keeps_the_context_small() -> None:
    patterns = {
        line.strip()
        for line in (ROOT / ".containerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }
    for excluded in (".venv", "node_modules", ".pytest_cache", ".mypy_cache", ".ruff_cache", ".git", "tests"):
        assert excluded in patterns or f"**/{excluded}" in patterns, excluded
    for needed in ("mcpproxy", "pyproject.toml", "README.md"):
        assert needed not in patterns


# --- route tables: mcpproxy check -------------------------------------------------------------


def _cli_importable() -> bool:
    try:
        return importlib.util.find_spec("mcpproxy.cli") is not None
    except ModuleNotFoundError:
        return False


PROXY_CONFIGS = V.proxy_configs()


def test_every_route_table_is_found() -> None:
    names = {str(p.relative_to(ROOT)) for p in PROXY_CONFIGS}
    assert names == {
        "deploy/compose/mcpproxy.yaml",
        "deploy/kubernetes/sidecar/mcpproxy.yaml",
        "deploy/kubernetes/shared/mcpproxy.yaml",
    }


@pytest.mark.parametrize("config", PROXY_CONFIGS, ids=[str(p.relative_to(DEPLOY)) for p in PROXY_CONFIGS])
def test_route_table_passes_mcpproxy_check(config: Path) -> None:
    if not _cli_importable():
        pytest.fail("mcpproxy.cli is not importable")
    # The env vars the configs reference are set by run_mcpproxy_check (V.CHECK_ENV), and the
    # secret files (container paths) are replaced by stand-ins in a temporary copy.
    assert set(V.CHECK_ENV) >= set().union(*(V._configured_env_refs(p.read_text()) for p in PROXY_CONFIGS))
    result = V.run_mcpproxy_check(config, python=sys.executable)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    assert "OK" in result.stdout


def test_prepare_for_check_replaces_only_secret_file_paths(tmp_path: Path) -> None:
    source = DEPLOY / "kubernetes" / "shared" / "mcpproxy.yaml"
    prepared = V.prepare_for_check(source, tmp_path)
    before = yaml.safe_load(source.read_text())
    after = yaml.safe_load(prepared.read_text())
    path = after["routes"][1]["auth"]["upstream"]["secret_file"]
    assert Path(path).parent == tmp_path and Path(path).read_text().strip()
    after["routes"][1]["auth"]["upstream"]["secret_file"] = before["routes"][1]["auth"]["upstream"][
        "secret_file"
    ]
    assert after == before


# --- OGX configurations -----------------------------------------------------------------------

OGX_CONFIGS = [COMPOSE / "ogx" / "run.yaml", DEPLOY / "kubernetes" / "sidecar" / "ogx-run.yaml"]


@pytest.mark.ogx
@pytest.mark.parametrize("config", OGX_CONFIGS, ids=["compose", "sidecar"])
def test_ogx_accepts_its_config(config: Path, tmp_path: Path) -> None:
    ogx = ROOT / ".ogx-venv" / "bin" / "ogx"
    if not ogx.is_file():
        pytest.fail("OGX not installed: run bash scripts/ogx-env.sh ogx")
    env = {
        **os.environ,
        "OGX_DATA_DIR": str(tmp_path),
        "VLLM_URL": "http://127.0.0.1:9/v1",
        "INFERENCE_MODEL": "test-model",
    }
    result = subprocess.run(
        [str(ogx), "run", str(config), "--insecure", "--dry-run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Config validation passed" in result.stdout + result.stderr


# --- examples: Llama Stack toolgroups, lightspeed-stack mcp_servers -------------------------


def test_examples_group_passes() -> None:
    assert _problems(V.check_examples()) == ""


def test_examples_check_catches_a_url_that_bypasses_the_proxy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("llamastack-run.yaml", "lightspeed-stack.yaml"):
        text = (DEPLOY / "examples" / name).read_text(encoding="utf-8")
        (tmp_path / name).write_text(text.replace("http://127.0.0.1:8081/tool/mcp", "http://tool:8000/mcp"))
    monkeypatch.setattr(V, "EXAMPLES", tmp_path)
    problems = _problems(V.check_examples())
    assert "mcp_endpoint is not a proxy route" in problems
    assert "my-external-tool: url is not a proxy route" in problems


@pytest.mark.ogx
def test_llamastack_accepts_the_toolgroup_example() -> None:
    python = ROOT / ".llamastack-venv" / "bin" / "python"
    if not python.is_file():
        pytest.fail("Llama Stack not installed: run bash scripts/ogx-env.sh llamastack")
    code = (
        "import sys, yaml\n"
        "from llama_stack.core.datatypes import StackConfig\n"
        "from llama_stack.core.stack import replace_env_vars\n"
        "config = StackConfig(**replace_env_vars(yaml.safe_load(open(sys.argv[1]))))\n"
        "print(' '.join(g.mcp_endpoint.uri for g in config.registered_resources.tool_groups))\n"
    )
    result = subprocess.run(
        [str(python), "-c", code, str(DEPLOY / "examples" / "llamastack-run.yaml")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["http://127.0.0.1:8081/tool/mcp", "http://127.0.0.1:8081/weather/mcp"]


# --- the example MCP server -------------------------------------------------------------------


@pytest.fixture
def example_mcp_server(
    canned_server: tuple[int, dict[str, tuple[int, bytes]]],
) -> Iterator[tuple[str, Any]]:
    """deploy/compose/mcp-server/server.py on a free port, trusting a local JWKS. Yields its
    URL and a function minting RS256 tokens `mint(aud)` signed by that JWKS's key."""
    import jwt
    import mcp.server.mcpserver  # noqa: F401  (a test dependency; its absence is a failure)
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update(kid="test-key", use="sig", alg="RS256")
    jwks_port, routes = canned_server
    routes["/certs"] = (200, json.dumps({"keys": [jwk]}).encode())
    issuer = "http://keycloak:8080/realms/demo"
    port = free_port()
    env = {
        **os.environ,
        "MCP_ISSUER": issuer,
        "MCP_JWKS_URL": f"http://127.0.0.1:{jwks_port}/certs",
        "MCP_HOST": "127.0.0.1",
        "MCP_PORT": str(port),
        "MCP_RESOURCE_URL": f"http://127.0.0.1:{port}/mcp",
    }
    proc = subprocess.Popen(
        [sys.executable, str(COMPOSE / "mcp-server" / "server.py")],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/mcp"

    def mint(aud: Any, **claims: Any) -> str:
        body = {"iss": issuer, "aud": aud, "sub": "u-1", "preferred_username": "demo", "azp": "mcp-proxy"}
        body["exp"] = int(time.time()) + 300
        body.update(claims)
        return jwt.encode(body, key, algorithm="RS256", headers={"kid": "test-key"})

    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{port}/.well-known/oauth-protected-resource/mcp"
                ):
                    break
            except (urllib.error.URLError, ConnectionError):
                assert proc.poll() is None, "the example MCP server exited"
                assert time.monotonic() < deadline, "the example MCP server did not start"
                time.sleep(0.1)
        yield url, mint
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _mcp_post(
    url: str, token: str | None, message: dict[str, Any], session: str | None = None
) -> tuple[int, Any, Any]:
    headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if session:
        headers["Mcp-Session-Id"] = session
        headers["MCP-Protocol-Version"] = "2025-11-25"
    request = urllib.request.Request(url, data=json.dumps(message).encode(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            body = response.read().decode()
            data = [line[5:].strip() for line in body.splitlines() if line.startswith("data:")]
            return response.status, response.headers, json.loads(data[-1]) if data else None
    except urllib.error.HTTPError as e:
        return e.code, e.headers, None




def test_example_mcp_server_accepts_only_its_audience(example_mcp_server: tuple[str, Any]) -> None:
    url, mint = example_mcp_server
    status, headers, _ = _mcp_post(url, None, INIT)
    assert status == 401 and "resource_metadata=" in headers["WWW-Authenticate"]
    # a user token minted for the proxy / OGX (seed 000's problem) is refused
    assert _mcp_post(url, mint(["mcp-proxy"]), INIT)[0] == 401
    assert _mcp_post(url, mint("my-external-tool", iss="http://elsewhere/realms/demo"), INIT)[0] == 401
    assert _mcp_post(url, mint("my-external-tool", exp=int(time.time()) - 3600), INIT)[0] == 401

    token = mint(["my-external-tool"])
    status, headers, body = _mcp_post(url, token, INIT)
    assert status == 200 and body["result"]["serverInfo"]["name"] == "my-external-tool"
    session = headers.get("Mcp-Session-Id")
    notified = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    assert _mcp_post(url, token, notified, session)[0] == 202
    call = {
        "jsonrpc": "2.0",
        "id": 2,
        "method": "tools/call",
        "params": {"name": "get_orchestrator_instances", "arguments": {"session_id": "s-1"}},
    }
    status, _, body = _mcp_post(url, token, call, session)
    assert status == 200, body
    result = body["result"]["structuredContent"]
    assert result["total"] == 5 and len(result["data"]) == 5
    assert result["requested_by"] == "demo"
    assert result["token_audience"] == ["my-external-tool"]


# --- the script -------------------------------------------------------------------------------


def test_validate_script_is_executable_and_strict() -> None:
    script = ROOT / "scripts" / "validate-deploy.sh"
    assert os.access(script, os.X_OK)
    text = script.read_text(encoding="utf-8")
    assert "set -euo pipefail" in text
    assert "deploy/requirements-validate.txt" in text
    pins = [
        line
        for line in (DEPLOY / "requirements-validate.txt").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert pins and all(re.fullmatch(r"[A-Za-z0-9_.\-\[\]]+==[0-9][^\s]*", p) for p in pins), pins
