"""eoforge preview on a small synthetic cube (_dataset_synth): PNGs, split colours, the page."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from _dataset_synth import LS, S2, build_cube, layout
from PIL import Image
from typer.testing import CliRunner

from catalog.writer import read_records
from flows.cli import app
from pipelines.preview import (
    HIST_SIZE_PX,
    MAP_SIZE_PX,
    SPLIT_COLORS,
    PreviewResult,
    display_bands,
    latest_rows,
    sample_tiles,
    stretch,
    tile_figure_size_px,
    write_preview,
)
from schemas.cube import SensorLayout
from schemas.errors import InvalidInputError, NotFoundError

N_TILES = 10


@pytest.fixture(scope="module")
def cube(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_cube(tmp_path_factory.mktemp("preview") / "cube.zarr", n_tiles=N_TILES)


@pytest.fixture(scope="module")
def preview(cube: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, PreviewResult]:
    out = tmp_path_factory.mktemp("out")
    return out, write_preview(cube, read_records(cube), out, tiles=3, seed=7)


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.imgs: list[str] = []
        self.spans: dict[str, str] = {}
        self._span: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        for key in ("src", "href"):
            if a.get(key):
                self.links.append(str(a[key]))
        if tag == "img":
            self.imgs.append(str(a["src"]))
        if tag == "span" and a.get("id"):
            self._span = a["id"]

    def handle_data(self, data: str) -> None:
        if self._span is not None:
            self.spans[self._span] = data
            self._span = None


def _pngs(out: Path) -> list[Path]:
    return sorted(out.glob("*.png"))


def test_pngs_decode_with_the_expected_sizes(preview: tuple[Path, PreviewResult]) -> None:
    out, result = preview
    names = {p.name for p in _pngs(out)}
    assert {"map_split.png", "map_cloud.png", "hist_corine.png"} <= names
    tiles = sorted(n for n in names if n.startswith("tile_"))
    assert len(tiles) == 3
    for path in _pngs(out):
        with Image.open(path) as img:
            img.load()  # decodes the whole image
            assert img.format == "PNG"
            if path.name.startswith("map_"):
                assert img.size == MAP_SIZE_PX
            elif path.name.startswith("hist_"):
                assert img.size == HIST_SIZE_PX
            else:
                assert img.size == tile_figure_size_px(layout())
    assert {p.name for p in result.images} == names


def test_split_map_has_one_colour_per_split_present(
    cube: Path, preview: tuple[Path, PreviewResult]
) -> None:
    out, _ = preview
    splits = {r["split"] or "unassigned" for r in read_records(cube).to_pylist()}
    assert splits == {"train", "val"}
    with Image.open(out / "map_split.png") as img:
        rgb = np.asarray(img.convert("RGB")).reshape(-1, 3)
    colours, counts = np.unique(rgb, axis=0, return_counts=True)
    found = {tuple(int(v) for v in c): int(n) for c, n in zip(colours, counts, strict=True)}
    for name, colour in SPLIT_COLORS.items():
        if name in splits:
            # Far more pixels than a legend patch: the footprints are filled with it.
            assert found.get(colour, 0) > 2000, name
        else:
            assert found.get(colour, 0) == 0, name


def test_page_links_only_files_that_exist(preview: tuple[Path, PreviewResult]) -> None:
    out, result = preview
    page = (out / "index.html").read_text(encoding="utf-8")
    parser = _Links()
    parser.feed(page)
    assert parser.imgs and len(parser.imgs) == len(_pngs(out))
    for link in parser.links:
        assert not re.match(r"^[a-z]+:|^/", link), link  # relative only: no http:, file:, /abs
        assert (out / link).is_file(), link
    assert "http://" not in page and "https://" not in page
    assert parser.spans["tile-count"] == str(N_TILES)
    assert parser.spans["sampled-count"] == "3"
    assert parser.spans["image-count"] == str(len(parser.imgs))
    assert result.n_tiles == N_TILES


def test_sample_is_deterministic_and_bounded(cube: Path) -> None:
    rows = latest_rows(read_records(cube))
    a = [t.id for t in sample_tiles(rows, 4, seed=3)]
    assert a == [t.id for t in sample_tiles(rows, 4, seed=3)]
    assert len(set(a)) == 4 and a == sorted(a)
    assert len(sample_tiles(rows, 50, seed=0)) == N_TILES
    assert sample_tiles(rows, 0, seed=0) == []
    with pytest.raises(InvalidInputError):
        sample_tiles(rows, -1, seed=0)


def test_latest_rows_keep_the_highest_cube_position(cube: Path) -> None:
    records = read_records(cube)
    row0 = records.slice(0, 1).to_pylist()[0]
    newer = pa.Table.from_pylist(
        [row0 | {"cube_position": 99, "split": "test"}], schema=records.schema
    )
    rows = latest_rows(pa.concat_tables([records, newer]))
    assert len(rows) == N_TILES
    row = next(r for r in rows if r.id == row0["id"])
    assert (row.position, row.split) == (99, "test")
    assert all(r.cloud_fraction == pytest.approx(0.15) for r in rows)


def test_stretch_uses_valid_pixels_only() -> None:
    values = np.linspace(0.0, 1.0, 100).reshape(10, 10)
    valid = np.ones((10, 10), dtype=bool)
    values[0, :5] = 1e6  # outliers, invalid
    valid[0, :5] = False
    out = stretch(values, valid)
    assert out.dtype == np.uint8 and out.shape == (10, 10)
    assert (out[0, :5] == 0).all()
    assert out[valid].min() == 0 and out[valid].max() == 255
    assert (stretch(values, np.zeros_like(valid)) == 0).all()


def test_display_bands_per_sensor_kind() -> None:
    lay = layout()
    s2 = next(s for s in lay.sensors if s.name == S2)  # B02, B03, B04
    assert display_bands(s2, {}) == ("rgb", [2, 1, 0])
    ls = next(s for s in lay.sensors if s.name == LS)  # red, nir08: no full RGB
    assert display_bands(ls, {})[0] == "bands"
    s1 = SensorLayout("sentinel-1-rtc", ("VV", "VH"), 10.0)
    assert display_bands(s1, {}) == ("vv-vh", [0, 1])
    bands = tuple(f"B{i:03d}" for i in range(1, 11))
    enmap = SensorLayout("enmap-l2a", bands, 30.0)
    wl = [420.0 + 30.0 * i for i in range(10)]  # 420..690 nm
    kind, picks = display_bands(enmap, {"wavelengths_nm": wl})
    assert kind == "true-colour"
    assert [wl[i] for i in picks] == [660.0, 540.0, 480.0]
    assert display_bands(enmap, {}) == ("bands", [9, 4, 0])


def test_missing_cube_and_bad_arguments(cube: Path, tmp_path: Path) -> None:
    with pytest.raises(NotFoundError):
        write_preview(tmp_path / "nope", read_records(cube), tmp_path / "out")
    with pytest.raises(InvalidInputError):
        write_preview(cube, read_records(cube), tmp_path / "out", tiles=-2)
    (tmp_path / "file").write_text("x")
    with pytest.raises(InvalidInputError):
        write_preview(cube, read_records(cube), tmp_path / "file")
    not_cube = tmp_path / "plain"
    not_cube.mkdir()
    with pytest.raises(InvalidInputError):
        write_preview(not_cube, read_records(cube), tmp_path / "out")


def test_cli(cube: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    ok = runner.invoke(app, ["preview", str(cube), "--out", str(tmp_path / "p"), "--tiles", "2"])
    assert ok.exit_code == 0, ok.output
    assert (tmp_path / "p" / "index.html").is_file()
    assert len(list((tmp_path / "p").glob("tile_*.png"))) == 2
    missing = runner.invoke(app, ["preview", str(tmp_path / "nope"), "--out", str(tmp_path)])
    assert missing.exit_code == 3
    bad = runner.invoke(app, ["preview", str(cube), "--out", str(tmp_path), "--tiles", "-1"])
    assert bad.exit_code == 2
