"""Builds through fault-injecting proxies: transient faults change nothing, broken scenes show.

The tiny archive is served (rustac STAC API + range server) and a :class:`FaultProxy` stands in
front of each server; the recipe names the proxied STAC API, whose answers point the asset
hrefs at the proxied range server. So every search page and every COG byte range of the build
may meet a fault.

* With 10 % (and 30 %) of requests failing (429, 500, 503, connection reset, stall then drop,
  truncated body, slow), the build completes with exactly the reference cube and catalog rows
  of a clean build (``_build_helpers``).
* A scene whose COG answers 404 every time is skipped, never fatal: the build completes and the
  summary (and the run record in ``catalog/runs``) names the item, asset and reason.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from _build_helpers import (
    EOFORGE,
    BuildSession,
    assert_same_cube,
    assert_same_rows,
    build_argv,
    catalog_rows,
    digest_cube,
    run_build_cli,
    shared_build_session,
)
from fault_proxy import FAULTS, FaultProxy

from pipelines.archive.serve import serve_archive

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="session")
def session(tiny_archive: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BuildSession]:
    with shared_build_session(tiny_archive, tmp_path_factory.mktemp("build-session")) as s:
        yield s


def _proxied_recipe(session: BuildSession, name: str, stac_url: str) -> tuple[Path, Path]:
    recipe, cube = session.recipe(name)
    data = yaml.safe_load(recipe.read_text())
    for sensor in data["sensors"]:
        sensor["catalog"] = stac_url
        sensor["provider"] = "archive"
    recipe.write_text(yaml.safe_dump(data, sort_keys=False))
    return recipe, cube


def _build_through_proxies(
    session: BuildSession, name: str, data_proxy: FaultProxy, stac_proxy: FaultProxy
) -> tuple[dict[str, object], Path]:
    with serve_archive(session.archive) as srv:
        data_proxy.upstream_port = int(srv.data_url.rsplit(":", 1)[1].split("/")[0])
        stac_proxy.upstream_port = int(srv.stac_url.rsplit(":", 1)[1].split("/")[0])
        with data_proxy.running(), stac_proxy.running():
            stac_proxy.rewrite = {
                srv.data_url.rstrip("/").encode(): data_proxy.url.encode(),
                srv.stac_url.rstrip("/").encode(): stac_proxy.url.encode(),
            }
            recipe, cube = _proxied_recipe(session, name, stac_proxy.url)
            summary = run_build_cli(recipe, session.env(), session.work)
    return summary, cube


@pytest.mark.parametrize(("fraction", "seed"), [(0.10, 11), (0.30, 5)])
def test_transient_faults_give_the_clean_build(
    session: BuildSession, fraction: float, seed: int
) -> None:
    data_proxy = FaultProxy("http://127.0.0.1:1", fraction=fraction, seed=seed)
    stac_proxy = FaultProxy(
        "http://127.0.0.1:1",
        fraction=fraction,
        seed=seed + 1,
        faults=("429", "500", "503", "reset", "truncated"),
    )
    summary, cube = _build_through_proxies(session, f"faults-{seed}", data_proxy, stac_proxy)
    assert summary["skipped_scenes"] == []
    assert_same_rows(catalog_rows(cube), session.rows)
    assert_same_cube(digest_cube(cube), session.digest)
    # Faults did happen (the tiny build reads its COGs in a few dozen merged range requests).
    data_faults = sum(data_proxy.counts[k] for k in FAULTS)
    assert data_proxy.counts["requests"] > 30 and data_faults >= 3, data_proxy.counts
    assert stac_proxy.counts["requests"] > 10, stac_proxy.counts
    if fraction >= 0.3:  # the heavier run meets every kind of fault on the data path
        assert all(data_proxy.counts[k] >= 1 for k in FAULTS), data_proxy.counts


@pytest.mark.parametrize(
    ("damage", "reason"),
    [("broken", "does not exist"), ("corrupt", "cannot be read")],
    ids=["missing-404", "corrupt-bytes"],
)
def test_a_permanently_broken_scene_is_skipped_and_reported(
    session: BuildSession, damage: str, reason: str
) -> None:
    used_before = sorted(
        {
            i
            for r in session.rows
            for s in r["sensors"]
            if s["sensor"] == "sentinel-2-l2a"
            for i in s["item_ids"]
        }
    )
    victim = used_before[0]  # a scene the clean build used
    data_proxy = FaultProxy("http://127.0.0.1:1", fraction=0.0, **{damage: (f"/{victim}/",)})
    stac_proxy = FaultProxy("http://127.0.0.1:1", fraction=0.0)
    summary, cube = _build_through_proxies(session, f"{damage}-scene", data_proxy, stac_proxy)
    assert data_proxy.counts["404" if damage == "broken" else "corrupt"] >= 1, data_proxy.counts
    skipped = summary["skipped_scenes"]
    assert isinstance(skipped, list) and skipped
    assert {s["item"] for s in skipped} == {victim}
    assert all(s["sensor"] == "sentinel-2-l2a" and reason in s["reason"] for s in skipped)
    # The run record in the catalog keeps the report; the scene is in no catalog row.
    (run_file,) = (cube / "catalog" / "runs").glob("*.json")
    recorded = json.loads(run_file.read_text())["summary"]["skipped_scenes"]
    assert recorded == skipped
    rows = catalog_rows(cube)
    assert len(rows) == len(session.rows)
    used = {i for r in rows for s in r["sensors"] for i in s["item_ids"]}
    assert victim not in used


def _archive_copy(session: BuildSession, tmp: Path, name: str) -> tuple[Path, Path, Path]:
    """A copy of the tiny archive, and the session's recipe reading it: archive, recipe, cube."""
    archive = tmp / f"archive-{name}"
    shutil.copytree(session.archive, archive)
    recipe, cube = session.recipe(name)
    recipe.write_text(recipe.read_text().replace(str(session.archive), str(archive)))
    return archive, recipe, cube


def test_items_without_projection_metadata_give_the_same_cube(
    session: BuildSession, tmp_path: Path
) -> None:
    """Many catalogs leave proj:* out: eoforge then reads each COG's own georeferencing."""
    archive, recipe, cube = _archive_copy(session, tmp_path, "no-proj")
    removed = 0
    for path in (archive / "stac" / "items").glob("*.ndjson"):
        items = []
        for line in path.read_text().splitlines():
            item = json.loads(line)
            for holder in (item["properties"], *item["assets"].values()):
                for key in [k for k in holder if k.startswith("proj:")]:
                    del holder[key]
                    removed += 1
            items.append(json.dumps(item))
        path.write_text("\n".join(items) + "\n")
    assert removed > 50
    summary = run_build_cli(recipe, session.env(), session.work)
    assert summary["skipped_scenes"] == []
    assert_same_rows(catalog_rows(cube), session.rows)
    assert_same_cube(digest_cube(cube), session.digest)


def test_a_cog_without_crs_is_skipped_and_reported(session: BuildSession, tmp_path: Path) -> None:
    import rasterio

    archive, recipe, cube = _archive_copy(session, tmp_path, "no-crs")
    victim = sorted(
        {
            i
            for r in session.rows
            for s in r["sensors"]
            if s["sensor"] == "landsat-c2-l2"
            for i in s["item_ids"]
        }
    )[0]
    (tif,) = sorted((archive / "data" / "landsat-c2-l2" / victim).glob("*_SR_B4.TIF"))
    with rasterio.open(tif) as src:
        profile, pixels = src.profile.copy(), src.read()
    profile.pop("crs", None)
    tif.unlink()
    with rasterio.open(tif, "w", **{**profile, "driver": "GTiff"}) as dst:
        dst.write(pixels)
    summary = run_build_cli(recipe, session.env(), session.work)
    skipped = summary["skipped_scenes"]
    assert skipped and {s["item"] for s in skipped} == {victim}
    assert all("has no CRS" in s["reason"] and "Fix:" in s["reason"] for s in skipped)
    used = {i for r in catalog_rows(cube) for s in r["sensors"] for i in s["item_ids"]}
    assert victim not in used


#: Planted credentials: a signed-URL signature, a webhook token, S3 and Planetary Computer keys.
SECRETS = ("PLANTEDSIG0001", "PLANTEDHOOK0002", "PLANTEDKEY0003", "PLANTEDKEY0004")


def test_planted_secrets_never_reach_logs_catalog_or_stac(session: BuildSession) -> None:
    data_proxy = FaultProxy("http://127.0.0.1:1", fraction=0.0)
    stac_proxy = FaultProxy("http://127.0.0.1:1", fraction=0.0)
    env = {
        **session.env(),
        "AWS_SECRET_ACCESS_KEY": SECRETS[2],
        "PC_SDK_SUBSCRIPTION_KEY": SECRETS[3],
    }
    with serve_archive(session.archive) as srv:
        data_proxy.upstream_port = int(srv.data_url.rsplit(":", 1)[1].split("/")[0])
        stac_proxy.upstream_port = int(srv.stac_url.rsplit(":", 1)[1].split("/")[0])
        with data_proxy.running(), stac_proxy.running():
            stac_proxy.rewrite = {
                srv.data_url.rstrip("/").encode(): data_proxy.url.encode(),
                srv.stac_url.rstrip("/").encode(): stac_proxy.url.encode(),
                # Every asset href becomes a signed URL, as Planetary Computer hands them out.
                b'.tif"': f'.tif?se=2099-01-01&X-Amz-Signature={SECRETS[0]}"'.encode(),
            }
            recipe, cube = _proxied_recipe(session, "secrets", stac_proxy.url)
            data = yaml.safe_load(recipe.read_text())
            data["execution"]["notify_url"] = f"http://127.0.0.1:9/hooks/{SECRETS[1]}"
            recipe.write_text(yaml.safe_dump(data, sort_keys=False))
            proc = subprocess.run(
                build_argv(recipe),
                cwd=session.work,
                env=env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=600,
            )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert data_proxy.counts["requests"] > 10  # the signed hrefs were used to read pixels
    stac_out = session.work / "secrets-stac"
    stac_out.mkdir()
    export = subprocess.run(
        [
            EOFORGE,
            "tiles",
            "export-stac",
            str(cube),
            str(stac_out / "items.parquet"),
            "--ndjson",
            str(stac_out / "items.ndjson"),
        ],
        cwd=session.work,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert export.returncode == 0, export.stderr[-3000:]
    texts = {
        "build stdout": proc.stdout,
        "build stderr": proc.stderr,
        "export output": export.stdout + export.stderr,
    }
    for path in [*cube.rglob("*"), *stac_out.rglob("*")]:
        if path.is_file():
            texts[str(path)] = path.read_bytes().decode("latin-1")
    leaks = sorted(f"{where}: {s}" for where, text in texts.items() for s in SECRETS if s in text)
    assert leaks == []
