"""The build keeps Dask's benign heartbeat misses to one warning line (no traceback)."""

from __future__ import annotations

import io
import logging

import flows.build  # noqa: F401  (installs the filter)


class CommClosedError(OSError):
    """Stands in for ``distributed.comm.core.CommClosedError`` (matched by name)."""


def _emit(message: str, name: str = "distributed.worker", exc: Exception | None = None) -> str:
    logger = logging.getLogger(name)
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger.addHandler(handler)
    try:
        try:
            raise exc or OSError("Timed out during handshake")
        except OSError:
            logger.exception(message)
    finally:
        logger.removeHandler(handler)
    return buf.getvalue()


def test_heartbeat_miss_is_one_warning_line() -> None:
    out = _emit("Failed to communicate with scheduler during heartbeat.")
    assert out.startswith("WARNING a worker heartbeat missed the scheduler")
    assert "OSError" in out and "Traceback" not in out


def test_comm_closed_at_shutdown_is_one_warning_line() -> None:
    out = _emit("Batched Comm Closed <InProc ...>", "distributed.batched", CommClosedError())
    assert out.startswith("WARNING Batched Comm Closed <InProc ...> (connection closed while")
    assert "Traceback" not in out and out.count("\n") == 1


def test_other_worker_errors_keep_their_traceback() -> None:
    out = _emit("Unexpected exception during heartbeat. Closing worker.")
    assert out.startswith("ERROR Unexpected exception") and "Traceback" in out
