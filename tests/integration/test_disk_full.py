"""A full disk ends a build with one clear message and a state the next build resumes from.

The cube is written to a small tmpfs (mounted here: needs root and permission to mount; the
test skips with the reason otherwise), sized at a fraction of the reference cube, so the build
runs out of space midway. It must exit 2 with one line naming the cube and the fix, no
traceback; readers must see only rows equal to the reference's; and after the file system is
grown, the next build must end with exactly the reference cube and catalog rows.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from _build_helpers import (
    BuildSession,
    assert_same_cube,
    assert_same_rows,
    build_argv,
    catalog_rows,
    digest_cube,
    run_build_cli,
    shared_build_session,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="session")
def session(tiny_archive: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BuildSession]:
    with shared_build_session(tiny_archive, tmp_path_factory.mktemp("build-session")) as s:
        yield s


def _mount(point: Path, size: int) -> str | None:
    """Mount a tmpfs of ``size`` bytes at ``point``; the reason it failed, or None."""
    if os.geteuid() != 0:
        return "mounting a small tmpfs needs root"
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)],
        capture_output=True,
        text=True,
        check=False,
    )
    return None if proc.returncode == 0 else f"cannot mount a tmpfs here: {proc.stderr.strip()}"


@pytest.fixture
def small_disk(session: BuildSession, tmp_path: Path) -> Iterator[tuple[Path, int]]:
    point = tmp_path / "small-disk"
    point.mkdir()
    full_size = int(session.summary["bytes_on_disk"])
    reason = _mount(point, full_size * 2 // 5)
    if reason is not None:
        pytest.skip(reason)
    try:
        yield point, full_size
    finally:
        subprocess.run(["umount", "-l", str(point)], check=False)


def test_a_full_disk_is_one_message_and_the_rerun_resumes(
    session: BuildSession, small_disk: tuple[Path, int]
) -> None:
    point, full_size = small_disk
    recipe, _ = session.recipe("disk-full")
    cube = point / "cube.zarr"
    data = yaml.safe_load(recipe.read_text())
    data["output"]["path"] = str(cube)
    recipe.write_text(yaml.safe_dump(data, sort_keys=False))
    proc = subprocess.run(
        build_argv(recipe),
        cwd=session.work,
        env=session.env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-3000:]
    text = " ".join(proc.stderr[proc.stderr.index("error:") :].split())
    assert "the disk of the cube is full" in text and "it resumes" in text
    # Readers see only complete rows (the reference's), if anything was committed at all.
    if (cube / "catalog" / "parts").is_dir():
        by_id = {r["id"]: r for r in session.rows}
        got = sorted(catalog_rows(cube), key=lambda r: r["id"])
        assert_same_rows(got, [by_id[r["id"]] for r in got])
    # More space, the same command: the reference cube.
    subprocess.run(["mount", "-o", f"remount,size={full_size * 4}", str(point)], check=True)
    run_build_cli(recipe, session.env(), session.work)
    assert_same_rows(catalog_rows(cube), session.rows)
    assert_same_cube(digest_cube(cube), session.digest)
