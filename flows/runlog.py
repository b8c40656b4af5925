"""The structured log of one build run: JSON lines in ``<cube>/catalog/runs/<run_id>.log.jsonl``.

Every log record of the build process at INFO and above (eoforge's own, Prefect's, Dask's)
becomes one JSON object per line::

    {"time": "2026-11-23T13:41:00.123Z", "level": "INFO", "logger": "flows.build",
     "message": "shard s00003 done (4/10): 4 tiles", "run_id": "..."}

plus ``exception`` (type and message, no traceback) when the record carries one. The dataset
card links the file. Messages are what eoforge already logs: hrefs are redacted where they are
logged (``pipelines._warp.redact_href``), and the planted-secret test greps this file too.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

__all__ = ["RUN_LOG_SUFFIX", "run_log", "run_log_path"]

RUN_LOG_SUFFIX = ".log.jsonl"


def run_log_path(cube: str | Path, run_id: str) -> Path:
    """``<cube>/catalog/runs/<run_id>.log.jsonl``."""
    return Path(cube) / "catalog" / "runs" / f"{run_id}{RUN_LOG_SUFFIX}"


class _JsonLinesHandler(logging.Handler):
    def __init__(self, stream: IO[str], run_id: str) -> None:
        super().__init__(level=logging.INFO)
        self._stream = stream
        self._run_id = run_id
        self._write_lock = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            doc: dict[str, object] = {
                "time": datetime.fromtimestamp(record.created, UTC)
                .isoformat(timespec="milliseconds")
                .replace("+00:00", "Z"),
                "level": record.levelname,
                "logger": record.name,
                "message": record.getMessage(),
                "run_id": self._run_id,
            }
            if record.exc_info and record.exc_info[1] is not None:
                exc = record.exc_info[1]
                doc["exception"] = f"{type(exc).__name__}: {exc}"
            line = json.dumps(doc, ensure_ascii=False, default=str)
            with self._write_lock:
                self._stream.write(line + "\n")
                self._stream.flush()
        except Exception:  # a log line must never fail the build (nor print a traceback,
            pass  # e.g. on a full disk, which the build itself then reports in one line)


#: Loggers whose records go to the run log: eoforge's packages at INFO, Prefect's run loggers
#: (they do not propagate to the root logger) and Dask's.
_EOFORGE_LOGGERS = ("flows", "pipelines", "catalog")
_OTHER_LOGGERS = ("prefect.flow_runs", "prefect.task_runs", "distributed")


@contextlib.contextmanager
def run_log(cube: str | Path, run_id: str) -> Iterator[Path]:
    """Write the build's log records to the run's JSON-lines file while the block runs."""
    path = run_log_path(cube, run_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as stream:
        handler = _JsonLinesHandler(stream, run_id)
        levels: dict[str, int] = {}
        for name in (*_EOFORGE_LOGGERS, *_OTHER_LOGGERS):
            logger = logging.getLogger(name)
            logger.addHandler(handler)
            if name in _EOFORGE_LOGGERS and logger.level == logging.NOTSET:
                levels[name] = logger.level
                logger.setLevel(logging.INFO)
        try:
            yield path
        finally:
            for name in (*_EOFORGE_LOGGERS, *_OTHER_LOGGERS):
                logging.getLogger(name).removeHandler(handler)
            for name, level in levels.items():
                logging.getLogger(name).setLevel(level)
