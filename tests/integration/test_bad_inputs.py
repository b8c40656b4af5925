"""Bad input, table-driven: every case exits non-zero with one clear message and changes nothing.

Each case runs the real ``eoforge`` command (in-process through Typer's runner for the fast
verbs, as a subprocess for ``eoforge build`` against the session's Prefect server) and checks:
the exit code, a fragment of the one-line message (what, where, and a ``Fix:``), no traceback,
and that nothing was written: a build's output path does not appear, and a queried cube's files
keep their bytes and modification times.
"""

from __future__ import annotations

import http.server
import json
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from _build_helpers import BuildSession, build_argv, shared_build_session
from typer.testing import CliRunner

from flows.cli import app

pytestmark = [pytest.mark.integration, pytest.mark.slow]

runner = CliRunner()


@pytest.fixture(scope="session")
def session(tiny_archive: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BuildSession]:
    with shared_build_session(tiny_archive, tmp_path_factory.mktemp("build-session")) as s:
        yield s


# -- recipes -----------------------------------------------------------------------------------


def _base_recipe(session: BuildSession) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((session.work / "reference.yaml").read_text())
    return data


def _set(data: dict[str, Any], path: str, value: Any) -> None:
    keys: list[Any] = [int(k) if k.isdigit() else k for k in path.split(".")]
    node: Any = data
    for k in keys[:-1]:
        node = node[k]
    if value is _DELETE:
        del node[keys[-1]]
    else:
        node[keys[-1]] = value


_DELETE = object()

#: (case id, {dotted path: new value}, field named in the message, message fragment).
RECIPE_CASES: list[tuple[str, dict[str, Any], str, str]] = [
    ("unknown-key", {"colour": "blue"}, "colour", "unknown field"),
    ("empty-name", {"name": ""}, "name", ""),
    ("inverted-bbox", {"aoi.bbox": [12.02, 47.93, 11.98, 47.96]}, "aoi.bbox", ""),
    ("empty-bbox", {"aoi.bbox": [12.0, 47.9, 12.0, 47.9]}, "aoi", ""),
    ("huge-aoi", {"aoi.bbox": [0.0, 40.0, 20.0, 55.0]}, "aoi", "more than grid.max_tiles"),
    ("antimeridian", {"aoi.bbox": [179.5, 10.0, -179.5, 11.0]}, "aoi", "antimeridian"),
    ("inverted-time", {"time.end": "2024-05-01"}, "time.end", "is not after start"),
    ("empty-time", {"time.end": "2024-06-01"}, "time.end", "is not after start"),
    ("bad-periods", {"time.periods": "fortnightly"}, "time.periods", ""),
    ("unknown-sensor", {"sensors.0.id": "sentinel-3-olci"}, "sensors[0].id", ""),
    ("unknown-provider", {"sensors.0.provider": "copernicus-hub"}, "sensors[0].provider", ""),
    ("unknown-band", {"sensors.0.bands": ["B04", "B99"]}, "sensors[0].bands", "B99"),
    ("resolution-not-dividing", {"sensors.0.resolution": 35}, "sensors[0].resolution", ""),
    ("negative-cloud", {"sensors.0.max_cloud_cover": -5}, "sensors[0].max_cloud_cover", ""),
    ("bad-temporal-mode", {"sensors.0.temporal.mode": "latest"}, "sensors[0].temporal", ""),
    ("zero-tile", {"grid.tile_size": 0}, "grid.tile_size", ""),
    ("bad-label-kind", {"labels.0.kind": "dynamic-world"}, "labels[0]", ""),
    ("bad-split-fractions", {"split.fractions": {"train": 0.9, "val": 0.3}}, "split", ""),
    ("bad-codec", {"output.codec": "lzma"}, "output.codec", ""),
    (
        "bad-dask-address",
        {"execution.dask_address": "scheduler:8786"},
        "execution.dask_address",
        "",
    ),
    ("bad-notify-url", {"execution.notify_url": "ftp://x.test/h"}, "execution.notify_url", ""),
    ("no-sensors", {"sensors": []}, "sensors", ""),
    ("missing-time", {"time": _DELETE}, "time", ""),
]


@pytest.mark.parametrize(
    ("changes", "field", "fragment"),
    [pytest.param(c, f, m, id=i) for i, c, f, m in RECIPE_CASES],
)
def test_bad_recipe(
    session: BuildSession, tmp_path: Path, changes: dict[str, Any], field: str, fragment: str
) -> None:
    data = _base_recipe(session)
    for path, value in changes.items():
        _set(data, path, value)
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(yaml.safe_dump(data, sort_keys=False))
    result = runner.invoke(app, ["recipe", "validate", str(recipe)])
    _assert_one_clear_error(result.exit_code, result.output, 2, [field, fragment])


YAML_CASES = [
    ("python-tag", "!!python/object/apply:os.system ['true']\n", "constructor"),
    ("duplicate-key", "name: a\nname: b\n", "duplicate"),
    ("alias", "a: &x 1\nb: *x\n", "aliases"),
    ("not-a-mapping", "- 1\n- 2\n", ""),
    ("syntax", "name: [unclosed\n", ""),
]


@pytest.mark.parametrize(("text", "fragment"), [pytest.param(t, f, id=i) for i, t, f in YAML_CASES])
def test_bad_yaml(tmp_path: Path, text: str, fragment: str) -> None:
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(text)
    result = runner.invoke(app, ["recipe", "validate", str(recipe)])
    _assert_one_clear_error(result.exit_code, result.output, 2, [fragment])


def test_missing_recipe_file(tmp_path: Path) -> None:
    result = runner.invoke(app, ["recipe", "validate", str(tmp_path / "nope.yaml")])
    assert result.exit_code != 0
    assert "nope.yaml" in result.output and "Traceback" not in result.output


# -- catalog queries ---------------------------------------------------------------------------

QUERY_CASES: list[tuple[str, list[str], str]] = [
    ("inverted-bbox", ["--bbox", "12.02,47.93,11.98,47.96"], "bbox"),
    ("bbox-three-numbers", ["--bbox", "12,47,13"], "bbox"),
    ("inverted-datetime", ["--datetime", "2024-08-01/2024-06-01"], "datetime"),
    ("bad-datetime", ["--datetime", "yesterday"], "datetime"),
    ("cloud-above-one", ["--max-cloud", "1.5"], "cloud"),
    ("unknown-class", ["--label", "unobtainium"], "unobtainium"),
    ("unknown-split", ["--split", "holdout"], "holdout"),
    ("unknown-sensor", ["--sensor", "sentinel-3-olci"], "sentinel-3-olci"),
    ("missing-version", ["--version", "99"], "version 99"),
    ("bad-sortby", ["--sortby", "colour"], "colour"),
]


@pytest.mark.parametrize(
    ("args", "fragment"), [pytest.param(a, f, id=i) for i, a, f in QUERY_CASES]
)
def test_impossible_query(session: BuildSession, args: list[str], fragment: str) -> None:
    before = _files(session.reference)
    result = runner.invoke(app, ["tiles", "search", str(session.reference), *args])
    _assert_one_clear_error(result.exit_code, result.output, None, [fragment])
    assert _files(session.reference) == before


def test_query_of_a_folder_that_is_no_cube(tmp_path: Path) -> None:
    result = runner.invoke(app, ["tiles", "search", str(tmp_path)])
    _assert_one_clear_error(
        result.exit_code, result.output, None, [str(tmp_path), "has no tile catalog"]
    )
    assert list(tmp_path.iterdir()) == []


# -- builds ------------------------------------------------------------------------------------


@dataclass
class BuildCase:
    """A bad build: ``prepare(session, tmp)`` edits the recipe dict (and writes files)."""

    prepare: Callable[[BuildSession, Path, dict[str, Any]], None]
    fragments: list[str]


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _unreachable(session: BuildSession, tmp: Path, data: dict[str, Any]) -> None:
    data["sensors"] = [data["sensors"][0]]
    data["sensors"][0].update(catalog=f"http://127.0.0.1:{_closed_port()}/", provider="archive")


def _serve_json(tmp: Path, doc: Any) -> str:
    body = json.dumps(doc).encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}/"


def _not_stac(session: BuildSession, tmp: Path, data: dict[str, Any]) -> None:
    data["sensors"] = [data["sensors"][0]]
    url = _serve_json(tmp, {"hello": "this is not a STAC API"})
    data["sensors"][0].update(catalog=url, provider="archive")


def _unwritable_output(session: BuildSession, tmp: Path, data: dict[str, Any]) -> None:
    blocker = tmp / "a-file"
    blocker.write_text("not a directory")
    data["output"]["path"] = str(blocker / "cube.zarr")


def _vector_without_class(session: BuildSession, tmp: Path, data: dict[str, Any]) -> None:
    import geopandas as gpd

    src = gpd.read_file(session.archive / "labels" / "corine.gpkg")
    path = tmp / "no-code.gpkg"
    src.drop(columns=["Code_18"]).to_file(path)
    data["labels"][0]["path"] = str(path)


def _vector_without_crs(session: BuildSession, tmp: Path, data: dict[str, Any]) -> None:
    import geopandas as gpd

    src = gpd.read_file(session.archive / "labels" / "corine.gpkg")
    path = tmp / "no-crs.shp"
    src.to_file(path)
    path.with_suffix(".prj").unlink()  # a shapefile without its .prj has no CRS
    data["labels"][0]["path"] = str(path)


def _malformed_osm(session: BuildSession, tmp: Path, data: dict[str, Any]) -> None:
    path = tmp / "broken.osm"
    text = (session.archive / "labels" / "osm.osm").read_text()
    path.write_text(text[: len(text) // 2])
    data["labels"][1]["path"] = str(path)


def _other_recipe_cube(session: BuildSession, tmp: Path, data: dict[str, Any]) -> None:
    data["sensors"][0]["bands"] = ["B02", "B03", "B04"]
    data["output"]["path"] = str(session.reference)


BUILD_CASES = {
    "unreachable-stac": BuildCase(_unreachable, ["could not reach the STAC API", "Fix:"]),
    "non-stac-json": BuildCase(_not_stac, ["is not a STAC API", "Fix:"]),
    "unwritable-output": BuildCase(_unwritable_output, ["is a file, not a folder", "Fix:"]),
    "vector-without-class": BuildCase(_vector_without_class, ["Code_18", "Fix:"]),
    "vector-without-crs": BuildCase(_vector_without_crs, ["CRS", "Fix:"]),
    "malformed-osm": BuildCase(_malformed_osm, ["broken.osm", "truncated", "Fix:"]),
    "cube-of-another-recipe": BuildCase(_other_recipe_cube, ["existing cube", "Fix:"]),
}


@pytest.mark.parametrize("case", sorted(BUILD_CASES))
def test_bad_build(session: BuildSession, tmp_path: Path, case: str) -> None:
    spec = BUILD_CASES[case]
    data = _base_recipe(session)
    data["output"]["path"] = str(tmp_path / "out.zarr")
    spec.prepare(session, tmp_path, data)
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(yaml.safe_dump(data, sort_keys=False))
    output = Path(data["output"]["path"])
    before = _files(output) if output.exists() else None
    proc = subprocess.run(
        build_argv(recipe),
        cwd=tmp_path,
        env=session.env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
    )
    _assert_one_clear_error(proc.returncode, proc.stderr, None, spec.fragments)
    if before is None:
        assert not output.exists(), sorted(p.name for p in output.rglob("*"))[:10]
    else:
        assert _files(output) == before


# -- helpers -----------------------------------------------------------------------------------


def _files(root: Path) -> dict[str, tuple[int, int]]:
    return {
        p.relative_to(root).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in root.rglob("*")
        if p.is_file()
    }


def _assert_one_clear_error(
    code: int, output: str, want_code: int | None, fragments: list[str]
) -> None:
    assert code != 0, output[-2000:]
    if want_code is not None:
        assert code == want_code, (code, output[-2000:])
    assert "Traceback" not in output, output[-3000:]
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, output[-3000:]
    text = " ".join(output[output.index("error:") :].split())
    for fragment in fragments:
        assert fragment in text, (fragment, text)
