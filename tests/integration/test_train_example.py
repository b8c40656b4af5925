"""examples/train_tiny_cnn.py runs on a small cube: the steps run and every loss is finite."""

from __future__ import annotations

import importlib.util
import math
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))

from _dataset_synth import build_cube

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "train_tiny_cnn.py"


@pytest.fixture(scope="module")
def cube(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_cube(tmp_path_factory.mktemp("train") / "cube.zarr", n_tiles=12)


def test_main_trains_for_the_steps(cube: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = importlib.util.spec_from_file_location("train_tiny_cnn", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    losses = module.main(str(cube), steps=5)
    assert len(losses) == 5
    assert all(math.isfinite(v) and v > 0 for v in losses)
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("step ")]
    assert len(printed) == 5 and printed[-1].startswith("step 5: loss ")


def test_runs_as_a_script(cube: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(EXAMPLE), str(cube), "2"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("loss") == 2
