"""Shared by the build integration tests: servers in process groups, builds, cube digests.

* :func:`process_group` runs a server (``prefect server start``, ``dask scheduler``, ``dask
  worker``) in its own process group with its output in a log file, and stops the whole group.
* :func:`prefect_server` starts a real Prefect API on a free loopback port (SQLite in a temporary
  ``PREFECT_HOME``), so builds and Dask workers share one API instead of each starting an
  ephemeral one.
* :func:`write_recipe` derives the tests' recipe from the tiny archive's own: two monthly periods
  and 4 tiles per shard (10 shards), so a kill lands between commits and a build stays short.
* :func:`digest_cube` hashes every array's decoded values and every file of the cube outside
  ``catalog/`` and ``_eoforge/`` (whose names carry the run id); :func:`catalog_rows` reads the
  committed catalog rows. Two builds of the same recipe must agree on all three.
* :func:`shared_resource` lets a session fixture defined in two test modules build its value once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
import zarr

from catalog.writer import read_records
from pipelines.archive.processes import free_port
from schemas.cube import CubeLayout

EOFORGE = str(Path(sys.executable).parent / "eoforge")
DASK = str(Path(sys.executable).parent / "dask")
PREFECT = str(Path(sys.executable).parent / "prefect")
#: Directories of a cube whose file names or contents carry the run id (compared by rows), and
#: the dataset card (README.md: run id, size on disk). ``stats.json`` is compared byte for byte.
RUN_SPECIFIC = ("catalog", "_eoforge", "README.md")
TILES_PER_SHARD = 4
PERIOD_END = "2024-08-01"  # two monthly periods: 2024-06 and 2024-07
BUILD_TIMEOUT_S = 300.0


# -- processes ---------------------------------------------------------------------------------


@dataclass
class Group:
    """A process started in its own process group (session) with its output in ``log``."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def tail(self, n: int = 40) -> str:
        """The last ``n`` lines of the log."""
        text = self.log.read_text(encoding="utf-8", errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-n:])

    def check_running(self) -> None:
        """Fail with the log tail if the process has exited."""
        code = self.proc.poll()
        if code is not None:
            raise AssertionError(f"{self.name} exited with code {code}:\n{self.tail()}")


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def stop_group(group: Group, grace_s: float = 10.0) -> None:
    """SIGTERM the process group, wait up to ``grace_s``, then SIGKILL whatever is left."""
    pgid = group.proc.pid
    if group.proc.poll() is None:
        _signal_group(pgid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            group.proc.wait(timeout=grace_s)
    _signal_group(pgid, signal.SIGKILL)  # members that outlived the leader, or the leader
    group.proc.wait(timeout=30)


@contextlib.contextmanager
def process_group(
    name: str,
    argv: Sequence[str],
    log: Path,
    *,
    env: Mapping[str, str],
    cwd: Path,
) -> Iterator[Group]:
    """Run ``argv`` in a new session; stop its whole process group on exit, even on failure."""
    with log.open("ab") as fh:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=dict(env),
            cwd=cwd,
            start_new_session=True,
        )
    group = Group(name, proc, log)
    try:
        yield group
    finally:
        stop_group(group)


def wait_for(
    what: str, ready: Callable[[], bool], groups: Sequence[Group], timeout_s: float
) -> None:
    """Poll ``ready()`` until true; fail early if one of ``groups`` exits, or at the timeout."""
    deadline = time.monotonic() + timeout_s
    while not ready():
        for group in groups:
            group.check_running()
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {g.name}:\n{g.tail()}" for g in groups)
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}\n{tails}")
        time.sleep(0.05)


def descendants(pid: int) -> list[int]:
    """Pids of every living descendant of ``pid`` (read from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def is_alive(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def command_line(pid: int) -> str:
    """The command line of ``pid`` ("" once it is gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def base_env(prefect_home: Path, api_url: str | None) -> dict[str, str]:
    """This environment with a private ``PREFECT_HOME`` and the given API (None: ephemeral)."""
    env = {
        **os.environ,
        "PREFECT_HOME": str(prefect_home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_UI_ENABLED": "false",
    }
    env.pop("PREFECT_API_URL", None)
    env.pop("PREFECT_PROFILE", None)
    if api_url is not None:
        env["PREFECT_API_URL"] = api_url
    return env


def _http_get(url: str, timeout_s: float = 2.0) -> bytes | None:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout_s) as response:
            body: bytes = response.read()
            return body if response.status == 200 else None
    except urllib.error.HTTPError as exc:
        exc.close()
        return None
    except OSError:
        return None


def http_post_json(url: str, payload: Mapping[str, Any], timeout_s: float = 10.0) -> Any:
    """POST ``payload`` as JSON to a loopback URL; returns the decoded answer."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(
        url,
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with opener.open(request, timeout=timeout_s) as response:
        return json.load(response)


@contextlib.contextmanager
def prefect_server(home: Path, log: Path, timeout_s: float = 120.0) -> Iterator[str]:
    """``prefect server start`` on a free loopback port; yields its API URL (``.../api``)."""
    env = base_env(home, None)
    for attempt in range(3):
        port = free_port()
        argv = [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)]
        with process_group("prefect server", [*argv, "--no-ui"], log, env=env, cwd=home) as grp:
            health = f"http://127.0.0.1:{port}/api/health"

            def answers(url: str = health) -> bool:
                return _http_get(url) == b"true"

            try:
                wait_for("the Prefect API", answers, [grp], timeout_s)
            except AssertionError:
                if attempt < 2 and "address already in use" in grp.tail().lower():
                    continue  # the free port was taken meanwhile: try another
                raise
            yield f"http://127.0.0.1:{port}/api"
            return
    raise AssertionError("unreachable")  # pragma: no cover


# -- builds ------------------------------------------------------------------------------------


def write_recipe(archive: Path, path: Path, cube: Path) -> Path:
    """The tiny archive's recipe with two periods, 4 tiles per shard and ``cube`` as output."""
    recipe = yaml.safe_load((archive / "recipes" / "tiny.yaml").read_text())
    recipe["time"]["end"] = PERIOD_END
    recipe["output"]["path"] = str(cube)
    recipe["output"]["tiles_per_shard"] = TILES_PER_SHARD
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def build_argv(recipe: Path, *extra: str) -> list[str]:
    """``eoforge build RECIPE --json [extra]``."""
    return [EOFORGE, "build", str(recipe), "--json", *extra]


def parse_summary(stdout: str) -> dict[str, Any]:
    """The JSON summary ``eoforge build --json`` prints."""
    summary: dict[str, Any] = json.loads(stdout[stdout.index("{") :])
    return summary


def run_build_cli(recipe: Path, env: Mapping[str, str], cwd: Path, *extra: str) -> dict[str, Any]:
    """Run ``eoforge build`` to completion; returns its summary (fails with its stderr)."""
    proc = subprocess.run(
        build_argv(recipe, *extra),
        cwd=cwd,
        env=dict(env),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-4000:]
    return parse_summary(proc.stdout)


# -- digests -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class CubeDigest:
    """Hashes of a cube: decoded values per array, raw bytes per file (run-specific dirs out)."""

    arrays: dict[str, str]
    files: dict[str, str]


def _hash_values(values: np.ndarray[Any, Any]) -> str:
    h = hashlib.sha256(f"{values.dtype}|{values.shape}|".encode())
    if values.dtype.kind in "OTU":  # strings: hash their UTF-8 text, NUL-separated
        h.update("\0".join(str(v) for v in values.ravel()).encode())
    else:
        h.update(np.ascontiguousarray(values).tobytes())
    return h.hexdigest()


def array_paths(cube: Path) -> list[str]:
    """Paths of every array in the cube (``sentinel-2-l2a/data``, ``tiles/id``, ...).

    Read from the ``zarr.json`` files on disk, not by walking the Zarr hierarchy (which warns
    about the cube's non-Zarr folders ``catalog/`` and ``_eoforge/``).
    """
    found = []
    for meta in cube.rglob("zarr.json"):
        if json.loads(meta.read_text())["node_type"] == "array":
            found.append(meta.parent.relative_to(cube).as_posix())
    return sorted(found)


def digest_cube(cube: Path) -> CubeDigest:
    """Hash every array's decoded values and every file outside ``RUN_SPECIFIC``."""
    group = zarr.open_group(str(cube), mode="r", use_consolidated=False)
    arrays = {}
    for path in array_paths(cube):
        arr = group[path]
        assert isinstance(arr, zarr.Array)
        arrays[path] = _hash_values(np.asarray(arr[...]))
    files = {}
    for file in sorted(cube.rglob("*")):
        rel = file.relative_to(cube)
        if file.is_file() and rel.parts[0] not in RUN_SPECIFIC:
            files[rel.as_posix()] = hashlib.sha256(file.read_bytes()).hexdigest()
    return CubeDigest(arrays, files)


def differences(got: Mapping[str, str], want: Mapping[str, str]) -> list[str]:
    """Keys missing on either side or with different hashes, for assertion messages."""
    keys = sorted(set(got) | set(want))
    return [k for k in keys if got.get(k) != want.get(k)]


def assert_same_cube(got: CubeDigest, want: CubeDigest) -> None:
    """Same arrays with the same decoded values, and the same files with the same bytes."""
    assert len(want.arrays) > 20 and len(want.files) > 40  # the reference is a whole cube
    assert differences(got.arrays, want.arrays) == []
    assert differences(got.files, want.files) == []


def catalog_rows(cube: Path) -> list[dict[str, Any]]:
    """The committed catalog rows (every column; none is run-specific), sorted by position."""
    rows: list[dict[str, Any]] = read_records(cube).to_pylist()
    return rows


def assert_same_rows(got: Sequence[dict[str, Any]], want: Sequence[dict[str, Any]]) -> None:
    """Equal rows, reporting the first differing row and columns."""
    assert [r["id"] for r in got] == [r["id"] for r in want]
    for a, b in zip(got, want, strict=True):
        diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        assert diff == [], (a["id"], diff, {k: (a.get(k), b.get(k)) for k in diff})


def tile_axis_arrays(cube: Path) -> list[str]:
    """Paths of the arrays with a tile axis (from the cube's own layout)."""
    group = zarr.open_group(str(cube), mode="r", use_consolidated=False)
    layout = CubeLayout.from_root_attrs(dict(group.attrs))
    return sorted(spec.path for spec in layout.arrays if spec.has_tile_axis)


def assert_same_positions(cube: Path, reference: Path, positions: Sequence[int]) -> None:
    """Every tile-axis array holds the reference's values at ``positions``."""
    got = zarr.open_group(str(cube), mode="r", use_consolidated=False)
    want = zarr.open_group(str(reference), mode="r", use_consolidated=False)
    paths = tile_axis_arrays(reference)
    assert len(paths) >= 10
    for path in paths:
        a, b = got[path], want[path]
        assert isinstance(a, zarr.Array) and isinstance(b, zarr.Array)
        for pos in positions:
            assert _hash_values(np.asarray(a[pos])) == _hash_values(np.asarray(b[pos])), (path, pos)


# -- one value per session across test modules -------------------------------------------------

_SHARED: dict[str, Any] = {}


@contextlib.contextmanager
def shared_resource(
    key: str, factory: Callable[[], contextlib.AbstractContextManager[Any]]
) -> Iterator[Any]:
    """Enter ``factory()`` once per process under ``key``; later callers get the same value.

    A session fixture defined in two modules is two fixtures; through this, the first one to
    run builds the value and owns its teardown, the second reuses it. A failed setup is
    remembered and raised again rather than retried.
    """
    if key in _SHARED:
        value = _SHARED[key]
        if isinstance(value, BaseException):
            raise value
        yield value
        return
    with contextlib.ExitStack() as stack:
        try:
            value = stack.enter_context(factory())
        except Exception as exc:
            _SHARED[key] = exc
            raise
        _SHARED[key] = value
        try:
            yield value
        finally:
            del _SHARED[key]


@dataclass(frozen=True)
class BuildSession:
    """What the build tests share: a Prefect server and one uninterrupted reference build."""

    archive: Path
    work: Path
    prefect_home: Path
    api_url: str
    reference: Path
    summary: dict[str, Any]
    digest: CubeDigest
    rows: list[dict[str, Any]]
    seconds: float

    def env(self, *, api: bool = True) -> dict[str, str]:
        """Environment of a build: the session's Prefect server, or an ephemeral API."""
        return base_env(self.prefect_home, self.api_url if api else None)

    def recipe(self, name: str) -> tuple[Path, Path]:
        """A fresh recipe ``<name>.yaml`` writing to ``<name>.zarr``; returns both paths."""
        cube = self.work / f"{name}.zarr"
        assert not cube.exists(), cube
        return write_recipe(self.archive, self.work / f"{name}.yaml", cube), cube


@contextlib.contextmanager
def _build_session(archive: Path, work: Path) -> Iterator[BuildSession]:
    home = work / "prefect-home"
    home.mkdir()
    with prefect_server(home, work / "prefect-server.log") as api_url:
        recipe = write_recipe(archive, work / "reference.yaml", work / "reference.zarr")
        t0 = time.monotonic()
        summary = run_build_cli(recipe, base_env(home, api_url), work)
        seconds = time.monotonic() - t0
        cube = work / "reference.zarr"
        yield BuildSession(
            archive=archive,
            work=work,
            prefect_home=home,
            api_url=api_url,
            reference=cube,
            summary=summary,
            digest=digest_cube(cube),
            rows=catalog_rows(cube),
            seconds=seconds,
        )


@contextlib.contextmanager
def shared_build_session(archive: Path, work: Path) -> Iterator[BuildSession]:
    """The session's :class:`BuildSession`, set up by the first fixture that asks for it."""
    with shared_resource("build-session", lambda: _build_session(archive, work)) as session:
        yield session
