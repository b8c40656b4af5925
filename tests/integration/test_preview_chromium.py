"""The preview page renders in headless Chromium: the tile count shows and every image loads.

Needs the Debian ``chromium`` package (``make test`` installs it when missing and run as root);
skips with a reason where no ``chromium``/``chromium-browser`` binary is found. The cube is the
small synthetic one of ``tests/unit/_dataset_synth.py`` (a build would add ~40 s and test nothing
more about the page).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))

from _dataset_synth import build_cube

from catalog.writer import read_records
from pipelines.preview import PreviewResult, write_preview

pytestmark = pytest.mark.integration

N_TILES = 9
SAMPLED = 2
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _chromium(args: list[str], profile: Path) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    return subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--disable-gpu",
            "--no-sandbox",
            "--no-first-run",
            f"--user-data-dir={profile}",
            # Let the page's load handler run before the DOM is dumped.
            "--virtual-time-budget=10000",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> PreviewResult:
    if CHROMIUM is None:
        pytest.skip("no chromium binary on PATH (Debian package 'chromium'; make test installs it)")
    cube = build_cube(tmp_path_factory.mktemp("cube") / "cube.zarr", n_tiles=N_TILES)
    out = tmp_path_factory.mktemp("preview")
    return write_preview(cube, read_records(cube), out, tiles=SAMPLED, seed=1)


def test_dom_shows_the_tile_count_and_every_image_loaded(
    page: PreviewResult, tmp_path: Path
) -> None:
    done = _chromium(["--dump-dom", page.index_html.resolve().as_uri()], tmp_path / "profile")
    assert done.returncode == 0, done.stderr[-2000:]
    dom = done.stdout

    def span(name: str) -> str:
        found = re.search(rf'<span id="{name}">([^<]*)</span>', dom)
        assert found, f"no #{name} in the rendered DOM"
        return found.group(1)

    assert span("tile-count") == str(N_TILES)
    assert span("sampled-count") == str(SAMPLED)
    n_images = len(page.images)
    assert span("image-count") == str(n_images)
    # Written by the page's own load handler: images that decoded with a non-zero width.
    assert span("images-loaded") == str(n_images)
    widths = re.findall(r'<img [^>]*data-width="(\d+)"', dom)
    assert len(widths) == n_images and all(int(w) > 0 for w in widths), widths


def test_screenshot_is_not_blank(page: PreviewResult, tmp_path: Path) -> None:
    from PIL import Image

    shot = tmp_path / "shot.png"
    done = _chromium(
        [f"--screenshot={shot}", "--window-size=1280,2000", page.index_html.resolve().as_uri()],
        tmp_path / "profile",
    )
    assert done.returncode == 0 and shot.is_file(), done.stderr[-2000:]
    with Image.open(shot) as img:
        assert img.size == (1280, 2000)
        colours = img.convert("RGB").getcolors(maxcolors=1_000_000)
    assert colours is not None and len(colours) > 50  # text, maps and pictures, not a blank page
