"""Incremental builds, refused layout changes and two builds at once on one cube.

The oracle is the session's uninterrupted reference build (two monthly periods, 2024-06 and
2024-07, ``_build_helpers``):

* building the first period, then rerunning with the full time range, must end with exactly
  the reference cube and catalog rows, and the second run must write only the shards its
  manifest lists: every chunk file of the first run keeps its bytes and modification time,
  and version 1 of the catalog stays readable as it was;
* a recipe that changes what the cube's arrays hold (bands) is refused before anything is
  searched or written, with a message naming the parameter and how to get a new cube;
* two ``eoforge build`` processes started together on one new cube: one builds, the other waits
  for the lock and then finds nothing to do; the cube equals the reference.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from _build_helpers import (
    TILES_PER_SHARD,
    BuildSession,
    assert_same_cube,
    assert_same_rows,
    build_argv,
    catalog_rows,
    digest_cube,
    parse_summary,
    run_build_cli,
    shared_build_session,
)

from catalog import open_catalog
from catalog.stac import cube_stac
from pipelines.lock import LOCK_WAIT_ENV

pytestmark = [pytest.mark.integration, pytest.mark.slow]

N_TILES = 19
FIRST_HALF_END = "2024-07-01"  # the first of the reference's two monthly periods


@pytest.fixture(scope="session")
def session(tiny_archive: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BuildSession]:
    with shared_build_session(tiny_archive, tmp_path_factory.mktemp("build-session")) as s:
        yield s


def _chunk_files(cube: Path) -> dict[str, tuple[str, int]]:
    """``{path: (sha256, mtime_ns)}`` of every chunk file (``.../c/...``) of the cube."""
    out = {}
    for path in sorted(cube.rglob("*")):
        rel = path.relative_to(cube)
        if path.is_file() and "c" in rel.parts and rel.parts[0] not in ("catalog", "_eoforge"):
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            out[rel.as_posix()] = (digest, path.stat().st_mtime_ns)
    return out


def _tile_shard_of(chunk: str) -> int:
    """Index along the tile axis of a chunk file ``<group>/<array>/c/<tile shard>/...``."""
    parts = chunk.split("/")
    return int(parts[parts.index("c") + 1])


def _set_end(recipe: Path, end: str) -> None:
    data = yaml.safe_load(recipe.read_text())
    data["time"]["end"] = end
    recipe.write_text(yaml.safe_dump(data, sort_keys=False))


def test_first_half_then_full_range_equals_one_full_build(session: BuildSession) -> None:
    recipe, cube = session.recipe("incremental")
    full_end = yaml.safe_load(recipe.read_text())["time"]["end"]
    _set_end(recipe, FIRST_HALF_END)
    first = run_build_cli(recipe, session.env(), session.work)
    m1 = first["manifest"]
    assert m1["base_version"] is None and len(m1["added"]) == N_TILES
    assert all(rid.endswith("_2024-06") for rid in m1["added"])
    before = _chunk_files(cube)
    rows_v1 = catalog_rows(cube)
    # The run's structured log: JSON lines, one per shard finished among them.
    log = cube / "catalog" / "runs" / f"{first['run_id']}.log.jsonl"
    records = [json.loads(line) for line in log.read_text().splitlines()]
    done = [r["message"] for r in records if r["message"].startswith("shard ")]
    assert len(done) == len(m1["shards"]) and done[-1].startswith(f"shard {m1['shards'][-1]}")
    assert f"{first['run_id']}.log.jsonl" in (cube / "README.md").read_text()

    _set_end(recipe, full_end)
    second = run_build_cli(recipe, session.env(), session.work)
    m2 = second["manifest"]
    assert m2["base_version"] == 1
    assert m2["unchanged"] == N_TILES == second["rows_unchanged"]
    july = sorted(r["id"] for r in session.rows if r["period_id"] == "2024-07")
    assert sorted(m2["added"]) == july
    assert m2["rebuilt"] == {}
    assert second["shards_built"] == len(m2["shards"]) == second["shards_total"]

    # The result is the single full build: same arrays, files and catalog rows.
    assert_same_rows(catalog_rows(cube), session.rows)
    assert_same_cube(digest_cube(cube), session.digest)

    # The second run touched only what its manifest lists.
    after = _chunk_files(cube)
    assert all(after[path] == state for path, state in before.items())
    new = sorted(set(after) - set(before))
    listed = {start // TILES_PER_SHARD for start, _stop in m2["positions"]}
    assert new and {_tile_shard_of(p) for p in new} == listed
    run2_rows = [r for r in catalog_rows(cube) if r["id"] in set(m2["added"])]
    assert {r["shard_id"] for r in run2_rows} == set(m2["shards"])

    # Version 1 reads as it did; the latest version has both periods.
    v1 = open_catalog(cube, version=1).search().to_arrow()
    assert sorted(v1.column("id").to_pylist()) == sorted(r["id"] for r in rows_v1)
    assert open_catalog(cube).search().to_arrow().num_rows == 2 * N_TILES

    # The STAC Collection carries the dataset card's facts; one Item per current row.
    stac = cube_stac(cube)
    assert len({i["id"] for i in stac.items}) == len(stac.items) == 2 * N_TILES
    used: dict[str, set[str]] = {}
    for r in session.rows:
        for obs in r["sensors"]:
            used.setdefault(obs["sensor"], set()).update(obs["item_ids"])
    counts = {k: len(v) for k, v in sorted(used.items())}
    assert stac.collection["eoforge:source_items"] == counts
    card = (cube / "README.md").read_text()
    for sensor, n in counts.items():
        assert f"| {sensor} | {n} |" in card
    attribution = stac.collection["eoforge:attribution"]
    assert "OpenStreetMap contributors" in attribution["labels/osm"]
    assert "Copernicus Land Monitoring Service" in attribution["labels/corine"]
    assert "Copernicus Sentinel" in attribution["sentinel-2-l2a"]
    assert set(stac.collection["eoforge:statistics"]) == set(counts)
    assert {"card", "statistics"} <= set(stac.collection["assets"])

    # A third run with nothing new writes nothing and still records a version.
    third = run_build_cli(recipe, session.env(), session.work)
    assert third["shards_total"] == third["shards_built"] == 0
    assert third["manifest"]["unchanged"] == 2 * N_TILES
    assert _chunk_files(cube) == after
    assert [v.number for v in open_catalog(cube).versions()] == [1, 2, 3]


def test_a_recipe_that_changes_the_arrays_is_refused_and_changes_nothing(
    session: BuildSession, tmp_path: Path
) -> None:
    recipe = tmp_path / "bands.yaml"
    data = yaml.safe_load((session.work / "reference.yaml").read_text())
    data["sensors"][0]["bands"] = ["B02", "B03", "B04"]
    data["output"]["path"] = str(session.reference)
    recipe.write_text(yaml.safe_dump(data, sort_keys=False))
    before = _chunk_files(session.reference)
    parts = sorted((session.reference / "catalog").rglob("*"))
    proc = subprocess.run(
        build_argv(recipe),
        cwd=tmp_path,
        env=session.env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 4, proc.stderr[-3000:]
    text = " ".join(proc.stderr.split())
    assert "the existing cube was built with" in text and "bands" in text
    assert "--output NEW.zarr" in text
    assert "Traceback" not in proc.stderr
    assert _chunk_files(session.reference) == before
    assert sorted((session.reference / "catalog").rglob("*")) == parts


def test_two_builds_at_once_on_one_cube_do_not_interleave(session: BuildSession) -> None:
    recipe, cube = session.recipe("concurrent")
    env = {**session.env(), LOCK_WAIT_ENV: "600"}
    logs = [session.work / f"concurrent-{i}.err" for i in range(2)]
    procs: list[subprocess.Popen[str]] = []
    for log in logs:
        with log.open("w") as err:
            procs.append(
                subprocess.Popen(
                    build_argv(recipe),
                    cwd=session.work,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=err,
                    text=True,
                )
            )
    summaries: list[dict[str, Any]] = []
    for proc, log in zip(procs, logs, strict=True):
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, log.read_text()[-3000:]
        summaries.append(parse_summary(out))
    built = sorted(s["shards_built"] for s in summaries)
    assert built == [0, session.summary["shards_built"]]
    waiter = next(s for s in summaries if s["shards_built"] == 0)
    assert waiter["manifest"]["unchanged"] == len(session.rows)
    assert_same_rows(catalog_rows(cube), session.rows)
    assert_same_cube(digest_cube(cube), session.digest)
