"""Helpers shared by the deploy and Prometheus tests: promtool, exported names, metric names in PromQL."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
PROMETHEUS_DIR = DEPLOY / "prometheus"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "tagger.json"
#: Series Prometheus makes itself; a dashboard may use them.
PROMETHEUS_OWN = {"up"}

_SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
             "summary": ("", "_sum", "_count", "_created"), "info": ("_info",), "gauge": ("",)}
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
             "offset", "inf", "nan"}


def binary(name: str) -> str:
    """Path of a Prometheus binary; skip the test with the reason if it is not installed."""
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} not installed (Debian: apt-get install prometheus; .ci/run installs it)")
    return path


def promtool(*args: str, stdin: bytes | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run promtool; the caller asserts on returncode and output."""
    return subprocess.run([binary("promtool"), *args], input=stdin.decode() if stdin is not None else None,
                          capture_output=True, text=True, cwd=cwd, timeout=60, check=False)


def exported_names(exposition: str) -> set[str]:
    """Every series name a /metrics text declares (families with no samples yet included)."""
    names: set[str] = set()
    for family in text_string_to_metric_families(exposition):
        names.update(family.name + suffix for suffix in _SUFFIXES.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names


def promql_metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (not functions, keywords, labels or durations)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    text = _GROUPING.sub("", text)
    names = set()
    for match in re.finditer(r"(?<![\w.$])[A-Za-z_:][A-Za-z0-9_:]*", text):
        if text[match.end():].lstrip().startswith("(") or match.group(0).lower() in _KEYWORDS:
            continue
        names.add(match.group(0))
    return names


def dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def dashboard_exprs() -> list[str]:
    """Every query of the dashboard (rows nest panels)."""
    exprs: list[str] = []
    stack = list(dashboard()["panels"])
    while stack:
        panel = stack.pop()
        stack.extend(panel.get("panels", []))
        exprs.extend(t["expr"] for t in panel.get("targets", []))
    return exprs


def as_prometheus_query(expr: str, rate_interval: str = "1m") -> str:
    """A dashboard query with Grafana's variables replaced, ready for Prometheus's API."""
    return expr.replace("$__rate_interval", rate_interval)


def alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


# -- docker compose, the image and Kubernetes (issue 9) ------------------------------------------

COMPOSE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
K8S_DIR = DEPLOY / "k8s"


def compose() -> dict[str, Any]:
    """docker-compose.yml as YAML (anchors and ``<<`` merges resolved), without interpolation."""
    return dict(yaml.safe_load(COMPOSE.read_text()))


def tagger_workers(services: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The compose services that run ``tagger worker`` (they have a web port and a data directory)."""
    return {name: s for name, s in services.items()
            if "TAGGER_WEB_PORT" in (s.get("environment") or {}) and "TAGGER_DATADIR" in s["environment"]}


def tool(name: str, hint: str) -> str:
    """Path of a command-line tool, from the virtualenv or PATH; skip the test with ``hint`` if missing."""
    local = REPO / ".venv" / "bin" / name
    path = str(local) if local.exists() else shutil.which(name)
    if path is None:
        pytest.skip(f"{name} not installed ({hint})")
    return path


def run(*args: str, cwd: Path = REPO, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, cwd=cwd, timeout=timeout, check=False)


def docker_compose(*args: str) -> subprocess.CompletedProcess[str]:
    """Run Debian's ``docker-compose`` (v1, Python; validates without a Docker engine)."""
    return run(tool("docker-compose", "Debian: apt-get install docker-compose; .ci/run installs it"),
               "--project-directory", str(REPO), "-f", str(COMPOSE), *args)


def k8s_docs(name: str = "tagger.yaml") -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((K8S_DIR / name).read_text()) if d]


def k8s_kind(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    return next(d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name))


def dockerfile_stages() -> list[list[str]]:
    """The Dockerfile's instructions (continuation lines joined, comments dropped), one list per stage;
    stage 0 holds what comes before the first FROM (global ARGs)."""
    lines, current = [], ""
    for raw in DOCKERFILE.read_text().splitlines():
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        current += stripped[:-1] + " " if stripped.endswith("\\") else stripped
        if not stripped.endswith("\\"):
            lines.append(current)
            current = ""
    stages: list[list[str]] = [[]]
    for line in lines:
        if line.upper().startswith("FROM "):
            stages.append([])
        stages[-1].append(line)
    return stages
