"""Dataset statistics (pipelines.stats, flows.stats) equal a numpy reference over valid pixels."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from _dataset_synth import CLASSES, LS, OUTLIER, S2, build_cube, layout

from catalog.writer import CatalogWriter, read_records
from flows.stats import current_positions, update_cube_stats
from pipelines.stats import ATTRS_KEY, PERCENTILES, STATS_FILE, cube_statistics
from pipelines.write import open_or_create_cube
from schemas.cube import MaskBit
from schemas.errors import InvalidInputError
from schemas.tile import TileRecord

N_TILES = 10
REBUILT_FROM, REBUILT_AT = 2, 12  # tile at position 2 rebuilt at position 12


@pytest.fixture(scope="module")
def cube(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic cube plus a second run that rebuilds the tile of position 2 at 12."""
    path = build_cube(tmp_path_factory.mktemp("stats") / "cube.zarr", n_tiles=N_TILES)
    group = open_or_create_cube(path, layout(), n_tiles_capacity=REBUILT_AT + 1)
    rng = np.random.default_rng(7)
    for name in (S2, LS):
        old = np.asarray(group[f"{name}/data"][REBUILT_FROM])
        # Different values, same masks: a superseded position would change every statistic.
        group[f"{name}/data"][REBUILT_AT] = np.where(
            old == (0 if name == LS else -32768), old, rng.integers(5000, 6000, old.shape)
        ).astype(old.dtype)
        group[f"{name}/mask"][REBUILT_AT] = np.asarray(group[f"{name}/mask"][REBUILT_FROM])
    labels = np.full((24, 24), 1, np.uint8)
    labels[0] = 255
    group["labels/corine"][REBUILT_AT] = labels
    rows = read_records(path).to_pylist()
    old_row = next(r for r in rows if r["cube_position"] == REBUILT_FROM)
    old = TileRecord.from_arrow_row(old_row)
    record = replace(old, cube_position=REBUILT_AT, shard_id="s00003", split="test")
    writer = CatalogWriter(path)
    writer.commit_shard("s00003", [record], run_id="run-2")
    writer.finish_run("run-2", {"synthetic": True})
    return path


def _reference(cube: Path, positions: dict[int, str]) -> dict[str, Any]:
    """Per sensor, split and band: the valid physical values, gathered whole (numpy)."""
    group = zarr.open_group(str(cube), mode="r")
    lay = layout()
    out: dict[str, Any] = {}
    for sensor in lay.sensors:
        per: dict[str, list[list[np.ndarray]]] = {}
        for position, split in positions.items():
            raw = np.asarray(group[f"{sensor.name}/data"][position])  # (T, B, H, W)
            mask = np.asarray(group[f"{sensor.name}/mask"][position])
            valid = ((mask & int(MaskBit.VALID)) != 0)[:, None] & (raw != sensor.nodata)
            phys = raw.astype(np.float64) * sensor.scale_factor + sensor.add_offset
            for s in ("all", split):
                bands = per.setdefault(s, [[] for _ in sensor.bands])
                for b in range(len(sensor.bands)):
                    bands[b].append(phys[:, b][valid[:, b]])
        out[sensor.name] = {s: [np.concatenate(v) for v in bands] for s, bands in per.items()}
    return out


def _check_against_reference(stats: dict[str, Any], cube: Path, positions: dict[int, str]) -> None:
    ref = _reference(cube, positions)
    for sensor, splits in ref.items():
        doc = stats["sensors"][sensor]
        assert set(doc["splits"]) == set(splits)
        for split, bands in splits.items():
            for b, values in enumerate(bands):
                got = doc["splits"][split][doc["bands"][b]]
                assert got["count"] == values.size
                assert got["mean"] == pytest.approx(values.mean(), rel=1e-9)
                assert got["std"] == pytest.approx(values.std(), rel=1e-9)
                assert got["min"] == pytest.approx(values.min(), rel=1e-12)
                assert got["max"] == pytest.approx(values.max(), rel=1e-12)
                width = got["percentile_tolerance"]
                assert 0 < width < 1e-3  # the overall range / 4096 bins
                for q in PERCENTILES:
                    assert abs(got[f"p{q:g}"] - np.percentile(values, q)) <= width


def test_current_positions_drop_the_superseded_row(cube: Path) -> None:
    positions = current_positions(cube)
    assert REBUILT_FROM not in positions
    assert positions[REBUILT_AT] == "test"
    assert len(positions) == N_TILES
    assert positions[0] == "val" and positions[1] == "train"


def test_statistics_equal_numpy_over_valid_pixels_per_split(cube: Path) -> None:
    positions = current_positions(cube)
    stats = cube_statistics(cube, positions)
    assert stats["splits"] == {"all": 10, "test": 1, "train": 5, "val": 4}
    _check_against_reference(stats, cube, positions)
    # Cloud pixels hold OUTLIER values and fills hold nodata: neither may reach min/max.
    for split_doc in stats["sensors"][S2]["splits"].values():
        for band in split_doc.values():
            assert band["min"] >= 1 * 1e-4 - 0.1 - 1e-12
            assert band["max"] < OUTLIER * 1e-4 - 0.1


def test_superseded_position_changes_nothing(cube: Path) -> None:
    positions = current_positions(cube)
    with_old = {**positions, REBUILT_FROM: "train"}
    a = cube_statistics(cube, positions)
    b = cube_statistics(cube, with_old)
    assert a["sensors"][S2]["splits"]["all"] != b["sensors"][S2]["splits"]["all"]
    _check_against_reference(b, cube, with_old)


def test_class_frequencies_are_exact(cube: Path) -> None:
    positions = current_positions(cube)
    stats = cube_statistics(cube, positions)
    labels = np.asarray(zarr.open_group(str(cube), mode="r")["labels/corine"])
    for split in ("all", "train", "val", "test"):
        chosen = [p for p, s in positions.items() if split in ("all", s)]
        doc = stats["labels"]["corine"][split]
        assert doc["tiles"] == len(chosen)
        total = sum(int(np.count_nonzero(labels[p] != 255)) for p in chosen)
        assert doc["labelled_pixels"] == total
        for i, name in enumerate(CLASSES):
            pixels = sum(int(np.count_nonzero(labels[p] == i)) for p in chosen)
            tiles = sum(1 for p in chosen if np.any(labels[p] == i))
            assert doc["classes"][name] == {
                "pixels": pixels,
                "fraction": pytest.approx(pixels / total),
                "tiles": tiles,
            }


def test_fraction_histograms_count_every_observed_plane(cube: Path) -> None:
    positions = current_positions(cube)
    stats = cube_statistics(cube, positions)
    group = zarr.open_group(str(cube), mode="r")
    for sensor in layout().sensors:
        mask = np.asarray(group[f"{sensor.name}/mask"])[list(positions)]
        frac = stats["sensors"][sensor.name]["fractions"]["all"]
        planes = mask.shape[0] * mask.shape[1]
        assert frac["planes"] == planes
        assert sum(frac["valid_fraction"]) == sum(frac["cloud_fraction"]) == planes
        vf = ((mask & int(MaskBit.VALID)) != 0).mean(axis=(2, 3)).ravel()
        expected = np.histogram(vf, bins=10, range=(0.0, 1.0))[0]
        assert frac["valid_fraction"] == [int(v) for v in expected]


def test_update_cube_stats_writes_the_file_and_the_attribute(cube: Path) -> None:
    stats = update_cube_stats(cube)
    on_disk = json.loads((cube / STATS_FILE).read_text())
    assert on_disk["sensors"][LS]["splits"]["all"] == stats["sensors"][LS]["splits"]["all"]
    attrs = dict(zarr.open_group(str(cube), mode="r", use_consolidated=False).attrs)[ATTRS_KEY]
    assert attrs["sensors"][S2]["mean"] == [
        stats["sensors"][S2]["splits"]["all"][b]["mean"] for b in ("B02", "B03", "B04")
    ]
    assert not list(cube.glob(".stats-*"))


def test_bad_arguments_are_refused(cube: Path) -> None:
    with pytest.raises(InvalidInputError):
        cube_statistics(cube, {0: "train"}, n_bins=0)
    with pytest.raises(InvalidInputError):
        cube_statistics(cube, {-1: "train"})


def test_cube_stats_prefers_the_builds_full_statistics(tmp_path: Path) -> None:
    from catalog.dataset import STATS_PATH, cube_stats

    cube = build_cube(tmp_path / "cube.zarr", n_tiles=6, seed=3)
    sampled = cube_stats(cube, max_tiles=2, refresh=True)  # a sample of 2 tiles, cached
    assert (cube / STATS_PATH).exists()
    full = update_cube_stats(cube)
    got = cube_stats(cube)
    assert got["source"] == STATS_FILE
    for name in (S2, LS):
        bands = full["sensors"][name]["bands"]
        want = [full["sensors"][name]["splits"]["all"][b]["mean"] for b in bands]
        assert got["sensors"][name]["mean"] == want
        assert sum(got["sensors"][name]["count"]) > sum(sampled["sensors"][name]["count"])
    # Without the build's file, the sampled cache is used again.
    (cube / STATS_FILE).unlink()
    assert cube_stats(cube)["sensors"] == sampled["sensors"]


def test_cli_stats_writes_and_prints(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from flows.cli import app

    cube = build_cube(tmp_path / "cube.zarr", n_tiles=4, seed=5)
    result = CliRunner().invoke(app, ["stats", str(cube)])
    assert result.exit_code == 0, result.output
    assert "sentinel-2-l2a" in result.output and "forest" in result.output
    doc = json.loads((cube / STATS_FILE).read_text())
    assert doc["splits"]["all"] == 4
    # The consolidated metadata carries the new root attribute.
    assert ATTRS_KEY in zarr.open_group(str(cube), mode="r", use_consolidated=True).attrs
    missing = CliRunner().invoke(app, ["stats", str(tmp_path / "nope")])
    assert missing.exit_code != 0 and "not a cube" in missing.output


def test_no_positions_give_empty_but_valid_statistics(cube: Path, tmp_path: Path) -> None:
    from pipelines.stats import write_stats

    stats = cube_statistics(cube, {})
    assert stats["splits"] == {"all": 0}
    band = stats["sensors"][S2]["splits"]["all"]["B02"]
    assert band["count"] == 0 and band["mean"] is None and band["p50"] is None
    assert stats["labels"]["corine"]["all"]["labelled_pixels"] == 0
    write_stats(tmp_path, stats)  # JSON without NaN or infinity
    assert json.loads((tmp_path / STATS_FILE).read_text())["n_positions"] == 0


def test_a_cube_with_statistics_reopens_for_the_next_build(tmp_path: Path) -> None:
    from pipelines.write import check_cube_layout

    cube = build_cube(tmp_path / "cube.zarr", n_tiles=3, seed=9)
    update_cube_stats(cube)
    check_cube_layout(cube, layout())  # the stats attribute is no layout change
    group = open_or_create_cube(cube, layout(), n_tiles_capacity=8)
    assert ATTRS_KEY in group.attrs
