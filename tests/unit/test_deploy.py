"""What breaks deployments, checked without a cluster or a container engine.

The Dockerfile is linted with hadolint; every Kubernetes manifest is validated against the Kubernetes
schemas (kubernetes-validate) and cross-checked with the code: the commands exist in the image, the
ports match the probes and the metrics, the env names are settings, the Secret keys are the ones the
configuration names. The alert rules and the dashboard refer only to metrics the code exports, and
promtool checks and unit-tests the rules where scripts/bootstrap.sh could install it. The systemd
units are rated by `systemd-analyze security` where systemd is installed.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from prometheus_client import REGISTRY

import shared.metrics  # noqa: F401 - registers every metric
from shared.config_file import load_config
from shared.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
BASE = DEPLOY / "kubernetes" / "base"
OVERLAY = DEPLOY / "kubernetes" / "overlays" / "example"
DAEMONS = ("approval", "elevator", "reaper")
KEDA = "keda.sh/v1alpha1"
# Variables that are not settings but that the deployment sets on purpose.
NON_SETTINGS_ENV = {"CREDENTIALS_DIRECTORY"}


def documents(folder: Path) -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    docs: list[dict[str, Any]] = []
    for resource in kustomization["resources"]:
        path = folder / resource
        if path.is_dir():
            docs += documents(path)
        else:
            docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def by_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in documents(BASE) if d["kind"] == kind}


def pod_specs() -> dict[str, dict[str, Any]]:
    specs = {name: d["spec"]["template"]["spec"] for name, d in by_kind("Deployment").items()}
    specs.update({name: d["spec"]["template"]["spec"] for name, d in by_kind("Job").items()})
    return specs


def containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*spec.get("initContainers", []), *spec["containers"]]


def exported_metric_names() -> set[str]:
    names = set()
    for family in REGISTRY.collect():
        if family.name.startswith("jit_"):
            names.add(family.name)
            names |= {s.name for s in family.samples}
            if family.type == "histogram":
                names |= {f"{family.name}_{suffix}" for suffix in ("bucket", "count", "sum")}
            if family.type == "counter":
                names.add(f"{family.name}_total")
    return names


def metric_names_in(expr: str) -> set[str]:
    return set(re.findall(r"\b(jit_[a-z_]+)\b", expr))


def test_the_dockerfile_passes_hadolint() -> None:
    hadolint = Path(sys.executable).with_name("hadolint")
    done = subprocess.run([str(hadolint), "--failure-threshold", "info", str(DEPLOY / "Dockerfile")],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_image_runs_as_a_user_and_its_final_stage_has_no_build_tools() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    final = text.split("\nFROM ")[-1]
    assert re.search(r"^USER 10001", final, re.M)
    assert "slim" in final.splitlines()[0]
    for tool in ("gcc", "build-essential", "apt-get install"):
        assert tool not in final
    assert "COPY deploy/docker/jit-entrypoint" in final
    assert 'ENTRYPOINT ["/opt/jit/bin/jit-entrypoint"]' in final


@pytest.fixture(scope="module")
def stubs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Each console script of pyproject.toml as a stub printing its name and arguments."""
    folder = tmp_path_factory.mktemp("stubs")
    for script in console_scripts():
        stub = folder / script
        stub.write_text(f'#!/bin/sh\necho {script} "$@"\n')
        stub.chmod(0o755)
    return folder


def entrypoint(stubs: Path, *args: str) -> list[str]:
    """What the image's entrypoint execs for `args`, run with a PATH of stubs in place of the console scripts."""
    done = subprocess.run(["sh", str(DEPLOY / "docker" / "jit-entrypoint"), *args], capture_output=True,
                          text=True, check=False, env={"PATH": f"{stubs}:/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def console_scripts() -> set[str]:
    return set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"])


def test_every_container_command_is_a_console_script_of_the_image(stubs: Path) -> None:
    for name, spec in pod_specs().items():
        for container in containers(spec):
            argv = entrypoint(stubs, *container["args"])
            assert argv[0] in console_scripts(), f"{name}/{container['name']}: {argv}"
            if name.startswith("jit-") and name.removeprefix("jit-") in DAEMONS:
                assert argv == [name], f"{name} runs {argv}"


def test_ports_probes_and_metrics_agree() -> None:
    env = by_kind("ConfigMap")["jit-env"]["data"]
    port = int(env["JIT_METRICS_PORT"])
    assert f"EXPOSE {port}" in (DEPLOY / "Dockerfile").read_text()
    for name, deployment in by_kind("Deployment").items():
        spec = deployment["spec"]["template"]["spec"]
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == str(port)
        (container,) = spec["containers"]
        assert container["ports"] == [{"name": "metrics", "containerPort": port}]
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
        assert container["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
        drain = Settings(shutdown_grace_seconds=float(env["JIT_SHUTDOWN_GRACE_SECONDS"])).shutdown_grace_seconds
        assert spec["terminationGracePeriodSeconds"] > max(drain, 30), f"{name} is killed before it drains"
        assert container["resources"]["requests"] and container["resources"]["limits"]


def test_env_names_are_settings_and_secret_keys_exist() -> None:
    fields = {f"JIT_{name.upper()}" for name in Settings.model_fields}
    env = by_kind("ConfigMap")["jit-env"]["data"]
    assert set(env) - fields <= NON_SETTINGS_ENV, set(env) - fields - NON_SETTINGS_ENV
    secrets = {s["name"]: {lit.split("=", 1)[0] for lit in s["literals"]}
               for s in yaml.safe_load((OVERLAY / "kustomization.yaml").read_text())["secretGenerator"]}
    for name, spec in pod_specs().items():
        for container in containers(spec):
            for var in container.get("env", []):
                assert var["name"] in fields, f"{name}: {var['name']} is not a setting"
                ref = var["valueFrom"]["secretKeyRef"]
                assert ref["key"] in secrets[ref["name"]], f"{name}: Secret {ref['name']} has no key {ref['key']}"
        for volume in spec.get("volumes", []):
            if "secret" in volume:
                assert volume["secret"]["secretName"] in secrets


def test_the_configuration_is_valid_and_its_password_files_are_the_mounted_secret_keys() -> None:
    config = load_config(by_kind("ConfigMap")["jit-config"]["data"]["config.yaml"])
    env = by_kind("ConfigMap")["jit-env"]["data"]
    secrets = {s["name"]: {lit.split("=", 1)[0] for lit in s["literals"]}
               for s in yaml.safe_load((OVERLAY / "kustomization.yaml").read_text())["secretGenerator"]}
    files = [p.password_file for p in config.credential_providers if p.password_file]
    assert files
    for daemon in ("elevator", "reaper"):
        spec = pod_specs()[f"jit-{daemon}"]
        (mount,) = spec["containers"][0]["volumeMounts"]
        assert mount["mountPath"] == env["CREDENTIALS_DIRECTORY"]
        (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
        keys = secrets[volume["secret"]["secretName"]]
        for path in files:
            assert path.startswith("${CREDENTIALS_DIRECTORY}/") and path.split("/", 1)[1] in keys
    assert "volumes" not in pod_specs()["jit-approval"], "jit-approval needs no WinRM password"


def test_keda_scales_each_daemon_on_its_own_queue() -> None:
    scaled = {d["spec"]["scaleTargetRef"]["name"]: d for d in documents(BASE) if d["kind"] == "ScaledObject"}
    auth = {d["metadata"]["name"]: d for d in documents(BASE) if d["kind"] == "TriggerAuthentication"}
    prefix = by_kind("ConfigMap")["jit-env"]["data"]["JIT_QUEUE_PREFIX"]
    secrets = {s["name"]: {lit.split("=", 1)[0] for lit in s["literals"]}
               for s in yaml.safe_load((OVERLAY / "kustomization.yaml").read_text())["secretGenerator"]}
    assert set(scaled) == {f"jit-{d}" for d in DAEMONS} == set(by_kind("Deployment"))
    for name, obj in scaled.items():
        assert obj["apiVersion"] == KEDA
        assert obj["spec"]["minReplicaCount"] >= 1, "the sweepers and the relay run inside the daemons"
        (trigger,) = obj["spec"]["triggers"]
        assert trigger["type"] == "rabbitmq" and trigger["metadata"]["mode"] == "QueueLength"
        assert trigger["metadata"]["queueName"] == Settings(queue_prefix=prefix).queue(name.removeprefix("jit-"))
        for ref in auth[trigger["authenticationRef"]["name"]]["spec"]["secretTargetRef"]:
            assert ref["key"] in secrets[ref["name"]]
    assert {d["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"]
            for d in documents(BASE) if d["kind"] == "PodDisruptionBudget"} == set(scaled)


def kubernetes_documents() -> list[dict[str, Any]]:
    docs = documents(BASE) + [yaml.safe_load((OVERLAY / f).read_text())
                              for f in ("namespace.yaml",)]
    kubectl = shutil.which("kubectl")
    if kubectl:  # the overlay as Kustomize renders it, Secrets and patches included
        rendered = subprocess.run([kubectl, "kustomize", str(OVERLAY)], capture_output=True, text=True, check=True)
        docs += [d for d in yaml.safe_load_all(rendered.stdout) if d]
    return [d for d in docs if d["apiVersion"] != KEDA]


def test_every_manifest_is_valid_against_the_kubernetes_schemas() -> None:
    docs = kubernetes_documents()
    assert {d["kind"] for d in docs} >= {"Deployment", "ConfigMap", "Job", "PodDisruptionBudget", "Namespace"}
    for doc in docs:
        kubernetes_validate.validate(doc, "1.30.0", strict=True)


def rules() -> list[dict[str, Any]]:
    return [r for g in yaml.safe_load((DEPLOY / "prometheus" / "jit-alerts.yaml").read_text())["groups"]
            for r in g["rules"]]


def test_alert_rules_use_exported_metrics_and_link_to_runbook_sections() -> None:
    exported = exported_metric_names()
    runbook = (ROOT / "docs" / "runbook.md").read_text()
    anchors = {re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-")
               for h in re.findall(r"^#+ (.+)$", runbook, re.M)}
    wanted = {"JitRevocationStalled", "JitRevocationPendingTooLong", "JitDeadLetters", "JitSweeperLagging",
              "JitDriftFound", "JitDaemonDown"}
    assert wanted <= {r["alert"] for r in rules()}
    for rule in rules():
        assert metric_names_in(rule["expr"]) <= exported, rule["alert"]
        anchor = rule["annotations"]["runbook_url"].split("#", 1)[1]
        assert anchor in anchors, f"{rule['alert']}: docs/runbook.md has no section #{anchor}"


def test_dashboard_queries_use_exported_metrics() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "jit-elevation.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert len(exprs) >= 10
    for expr in exprs:
        names = metric_names_in(expr)
        assert names and names <= exported_metric_names(), expr


def promtool() -> str:
    found = shutil.which("promtool") or str(ROOT / ".jit-tools" / "bin" / "promtool")
    if not Path(found).exists():
        pytest.skip("promtool is not installed (scripts/bootstrap.sh installs it from Debian's prometheus package)")
    return found


def test_promtool_checks_and_unit_tests_the_alert_rules() -> None:
    folder = DEPLOY / "prometheus"
    for args in (["check", "rules", "jit-alerts.yaml"], ["test", "rules", "jit-alerts.test.yaml"]):
        done = subprocess.run([promtool(), *args], cwd=folder, capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("daemon", DAEMONS)
def test_systemd_units_are_rated_ok_or_better(daemon: str) -> None:
    unit = DEPLOY / "systemd" / f"jit-{daemon}@.service"
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    done = subprocess.run([analyze, "security", "--offline=true", "--no-pager", str(unit)],
                          capture_output=True, text=True, check=False)
    score = re.search(r"Overall exposure level for \S+: ([0-9.]+) (\w+)", done.stdout)
    assert score, done.stdout + done.stderr
    assert float(score.group(1)) < 2.0 and score.group(2) in ("SAFE", "OK"), score.group(0)
    text = unit.read_text()
    assert ("LoadCredential=corp-admin:" in text) == (daemon != "approval")
    assert "Environment=PGPASSFILE=%d/pgpass" in text
