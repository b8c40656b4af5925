"""The run log: one JSON object per record, while the block runs only."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from flows.runlog import run_log, run_log_path


def test_records_become_json_lines_and_stop_after_the_block(tmp_path: Path) -> None:
    cube = tmp_path / "cube.zarr"
    log = logging.getLogger("pipelines.unit_test")
    with run_log(cube, "20260101T000000Z-abcdef") as path:
        log.info("shard %s done (%d/%d)", "s00001", 1, 2)
        log.debug("not at INFO")
        try:
            raise ValueError("bad value")
        except ValueError:
            log.warning("it failed", exc_info=True)
        logging.getLogger("distributed.unit_test").warning("flow says hi")
    log.info("after the block")
    assert path == run_log_path(cube, "20260101T000000Z-abcdef")
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [d["message"] for d in lines] == ["shard s00001 done (1/2)", "it failed", "flow says hi"]
    assert lines[1]["exception"] == "ValueError: bad value"
    assert {d["run_id"] for d in lines} == {"20260101T000000Z-abcdef"}
    assert lines[0]["level"] == "INFO" and lines[0]["time"].endswith("Z")
    assert logging.getLogger("pipelines").level == logging.NOTSET  # restored
