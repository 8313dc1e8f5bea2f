"""Kubernetes manifests: each overlay rendered by `kubectl kustomize`, validated by
kubernetes-validate --strict (unknown fields fail), then the properties the deployment relies on,
checked on the rendered objects. Needs kubectl (Debian: kubernetes-client; .ci/run installs it);
fails with that reason when it is absent (a skip would let CI pass without validating anything)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from sonoaudit.settings import Settings

REPO = Path(__file__).resolve().parents[2]
OVERLAYS = REPO / "deploy" / "k8s" / "overlays"
APP_SERVICES = ("generator", "metrics", "classifier", "raters")
K8S_VERSION = "1.30.0"

Objects = list[dict[str, Any]]

KUBECTL = shutil.which("kubectl")


@pytest.fixture(autouse=True)
def _needs_kubectl() -> None:
    if KUBECTL is None:
        pytest.fail("kubectl not installed (Debian: apt-get install kubernetes-client; "
                    ".ci/run installs it)")


def render(overlay: Path) -> str:
    assert KUBECTL is not None
    result = subprocess.run([KUBECTL, "kustomize", str(overlay)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, f"kustomize {overlay.name} failed:\n{result.stderr}"
    return result.stdout


def validate(manifests: str, version: str = K8S_VERSION) -> subprocess.CompletedProcess[str]:
    tool = Path(sys.executable).parent / "kubernetes-validate"
    return subprocess.run(
        [str(tool) if tool.exists() else "kubernetes-validate", "--strict", "--quiet",
         "-k", version, "-"],
        input=manifests, capture_output=True, text=True, timeout=300,
    )


_rendered: dict[str, str] = {}


def rendered(name: str) -> str:
    if name not in _rendered:
        _rendered[name] = render(OVERLAYS / name)
    return _rendered[name]


def objects(name: str) -> Objects:
    return [d for d in yaml.safe_load_all(rendered(name)) if d]


def find(objs: Objects, kind: str, name: str) -> dict[str, Any]:
    matches = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind}/{name}, found {len(matches)}"
    return matches[0]


def container(workload: dict[str, Any]) -> dict[str, Any]:
    (c,) = workload["spec"]["template"]["spec"]["containers"]
    return c


def test_overlays_exist() -> None:
    assert sorted(p.name for p in OVERLAYS.iterdir() if p.is_dir()) == ["dev", "gpu"]




@pytest.mark.parametrize("version", [K8S_VERSION, "1.37.0"])
@pytest.mark.parametrize("overlay", ["dev", "gpu"])
def test_overlay_renders_and_validates_strictly(overlay: str, version: str) -> None:
    # The oldest API version we claim (1.30) and the newest the validator knows.
    result = validate(rendered(overlay), version)
    assert result.returncode == 0, result.stdout + result.stderr


def test_strict_validation_rejects_bad_manifests() -> None:
    # The validator must bite: a wrong type and an unknown field both fail.
    bad = rendered("dev").replace("replicas: 1", "replicas: one", 1)
    assert validate(bad).returncode != 0
    bad = rendered("dev").replace("enableServiceLinks: false", "enableServiceLinkz: false", 1)
    assert validate(bad).returncode != 0


@pytest.mark.parametrize("overlay", ["dev", "gpu"])
def test_service_deployments_have_all_three_probes(overlay: str) -> None:
    objs = objects(overlay)
    for name in APP_SERVICES:
        dep = find(objs, "Deployment", name)
        c = container(dep)
        assert c["args"] == ["sonoaudit", "serve", name, "--host", "0.0.0.0", "--port", "8000"]
        assert c["ports"] == [{"name": "http", "containerPort": 8000}]
        assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
        assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
        assert c["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
        pod = dep["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == 10001
        assert c["securityContext"]["allowPrivilegeEscalation"] is False


@pytest.mark.parametrize("overlay", ["dev", "gpu"])
def test_every_service_selects_existing_pods(overlay: str) -> None:
    """A Service whose selector matches no pod template is a silent outage; check each one."""
    objs = objects(overlay)
    templates = [o["spec"]["template"]["metadata"]["labels"] for o in objs
                 if o["kind"] in ("Deployment", "StatefulSet")]
    for svc in (o for o in objs if o["kind"] == "Service"):
        selector = svc["spec"]["selector"]
        assert any(selector.items() <= labels.items() for labels in templates), \
            svc["metadata"]["name"]


def test_gpu_overlay_schedules_the_generator_on_a_gpu() -> None:
    gen = find(objects("gpu"), "Deployment", "generator")
    pod = gen["spec"]["template"]["spec"]
    resources = container(gen)["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == 1
    assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in \
        pod["tolerations"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert container(gen)["image"].startswith("sonoaudit/generator:")
    assert any(v.get("emptyDir", {}).get("medium") == "Memory" for v in pod["volumes"])
    # Only the generator asks for a GPU.
    for name in ("metrics", "classifier", "raters"):
        dep = find(objects("gpu"), "Deployment", name)
        assert "nvidia.com/gpu" not in str(container(dep)["resources"])


def test_dev_overlay_runs_without_gpus() -> None:
    objs = objects("dev")
    assert "nvidia.com/gpu" not in rendered("dev")
    gen = find(objs, "Deployment", "generator")
    assert container(gen)["image"] == "sonoaudit/generator-cpu:dev"
    assert find(objs, "PersistentVolumeClaim", "sonoaudit-data")["spec"]["accessModes"] == \
        ["ReadWriteOnce"]


@pytest.mark.parametrize("overlay", ["dev", "gpu"])
def test_queue_workers_scale_horizontally(overlay: str) -> None:
    objs = objects(overlay)
    hpas = {o["spec"]["scaleTargetRef"]["name"]: o for o in objs
            if o["kind"] == "HorizontalPodAutoscaler"}
    assert set(hpas) == {"generator", "classifier"}
    for name, hpa in hpas.items():
        assert hpa["apiVersion"] == "autoscaling/v2"
        assert hpa["spec"]["scaleTargetRef"]["kind"] == "Deployment"
        assert 1 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
        # The HPA owns the replica count; a fixed one would be reset on every apply.
        assert "replicas" not in find(objs, "Deployment", name)["spec"]


@pytest.mark.parametrize("overlay", ["dev", "gpu"])
def test_settings_and_secrets_wiring(overlay: str) -> None:
    objs = objects(overlay)
    config = find(objs, "ConfigMap", "sonoaudit-config")
    fields = set(Settings.model_fields)
    for key in config["data"]:
        assert key.startswith("SONOAUDIT_") and key.removeprefix("SONOAUDIT_").lower() in fields
    assert config["data"]["SONOAUDIT_NATS_URL"] == "nats://nats:4222"
    for name in APP_SERVICES:
        env_from = container(find(objs, "Deployment", name))["envFrom"]
        assert env_from == [{"configMapRef": {"name": "sonoaudit-config"}},
                            {"secretRef": {"name": "sonoaudit-secrets"}}]
    secrets = [o for o in objs if o["kind"] == "Secret"]
    if overlay == "dev":
        (secret,) = secrets
        assert secret["metadata"]["name"] == "sonoaudit-secrets"
        assert set(secret["data"]) == {"POSTGRES_PASSWORD", "SONOAUDIT_DATABASE_URL",
                                       "GEMINI_API_KEY", "SONOAUDIT_STUDY_CREATOR_TOKEN"}
    else:
        assert secrets == [], "real secrets are created out of band, never rendered from git"


@pytest.mark.parametrize("overlay", ["dev", "gpu"])
def test_state_and_migration(overlay: str) -> None:
    objs = objects(overlay)
    nats = find(objs, "StatefulSet", "nats")
    assert "-js" in container(nats)["args"]
    assert nats["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    pg = find(objs, "StatefulSet", "postgres")
    assert pg["spec"]["volumeClaimTemplates"]
    job = find(objs, "Job", "sonoaudit-migrate")
    assert container(job)["command"] == ["sonoaudit", "migrate"]
    assert job["spec"]["backoffLimit"] >= 3
    # All objects land in one namespace, which the overlay also creates.
    find(objs, "Namespace", "sonoaudit")
    assert {o["metadata"].get("namespace") for o in objs if o["kind"] != "Namespace"} == \
        {"sonoaudit"}


@pytest.mark.parametrize("overlay", ["dev", "gpu"])
def test_store_volume_is_shared_by_every_service(overlay: str) -> None:
    objs = objects(overlay)
    for name in APP_SERVICES:
        pod = find(objs, "Deployment", name)["spec"]["template"]["spec"]
        claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]
                  if "persistentVolumeClaim" in v}
        mounts = {m["mountPath"]: m["name"] for m in container(find(objs, "Deployment", name))
                  ["volumeMounts"]}
        assert claims[mounts["/var/lib/sonoaudit"]] == "sonoaudit-data"
    find(objs, "PersistentVolumeClaim", "sonoaudit-data")


def _images(objs: Objects) -> set[str]:
    out: set[str] = set()
    for o in objs:
        if o["kind"] in ("Deployment", "StatefulSet", "Job"):
            out.update(c["image"] for c in o["spec"]["template"]["spec"]["containers"])
    return out


def test_gpu_overlay_pins_image_tags() -> None:
    for image in _images(objects("gpu")):
        assert ":" in image and not image.endswith(":latest"), image


@pytest.mark.parametrize("overlay", ["dev", "gpu"])
def test_services_wait_for_the_schema_before_starting(overlay: str) -> None:
    objs = objects(overlay)
    script = (REPO / "deploy/k8s/base/wait_for_schema.py").read_text()
    for name in APP_SERVICES:
        dep = find(objs, "Deployment", name)
        pod = dep["spec"]["template"]["spec"]
        (init,) = pod["initContainers"]
        assert init["image"] == container(dep)["image"]  # same code, same schema revision
        assert init["command"] == ["python", "/opt/sonoaudit-scripts/wait_for_schema.py"]
        assert init["envFrom"] == container(dep)["envFrom"]
        mounts = {m["name"]: m["mountPath"] for m in init["volumeMounts"]}
        volume = next(v for v in pod["volumes"] if v["name"] == "scripts")
        # The (hash-suffixed) ConfigMap the volume names exists and holds the script verbatim.
        config = find(objs, "ConfigMap", volume["configMap"]["name"])
        assert mounts["scripts"] == "/opt/sonoaudit-scripts"
        assert config["data"]["wait_for_schema.py"] == script
