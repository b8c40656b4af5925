"""Server child processes on loopback: free ports, readiness polling, clean stops.

Each server runs as a child process in its own session (so a Ctrl-C in a terminal reaches only
the parent, which stops the children in order) with its output in a log file whose tail goes into
error messages. A port picked by :func:`free_port` can be taken by someone else before the child
binds it, so :func:`start_with_port_retry` retries on "address already in use".

A child in its own session does not receive signals sent to the parent's process group, so on
Linux each child also asks the kernel for SIGTERM when its parent dies (``PR_SET_PDEATHSIG``):
a parent killed with SIGKILL (an OOM kill, a killed build) leaves no orphaned servers. The kernel
sends it when the parent *thread* that started the child ends, so start a child from a thread
that outlives it (the main thread, or the thread that also stops it).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from schemas.errors import TransientError

__all__ = [
    "ChildProcess",
    "free_port",
    "loopback_opener",
    "start_with_port_retry",
    "wait_until_ready",
]

logger = logging.getLogger(__name__)

_PORT_TRIES = 5
_LOG_TAIL_LINES = 15
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _prctl() -> Callable[..., int] | None:
    """The C library's ``prctl`` on Linux (resolved once, in the parent), else ``None``."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        func: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return func


_PRCTL = _prctl()


def _die_with_parent_preexec() -> Callable[[], None] | None:
    """A ``preexec_fn`` making the child get SIGTERM when this process (thread) dies."""
    prctl = _PRCTL
    if prctl is None:
        return None
    parent = os.getpid()

    def preexec() -> None:  # runs in the child between fork and exec: no locks, no imports
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free on ``host`` a moment ago (bind port 0, read it, release it).

    Another process may take it before the caller binds it; callers that hand the port to a child
    process retry with a new one when the child reports the address in use.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass
class ChildProcess:
    """A server child process whose output goes to a log file.

    Attributes:
        name: Short name for messages, e.g. ``"rustac serve"``.
        proc: The running process (its own session, so terminal signals do not reach it).
        log_path: File holding its stdout and stderr.
    """

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    @classmethod
    def start(
        cls,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> ChildProcess:
        """Start ``argv`` with stdout and stderr appended to ``log_path``."""
        with log_path.open("ab") as log:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                start_new_session=True,
                preexec_fn=_die_with_parent_preexec(),
            )
        logger.debug("started %s (pid %d): %s", name, proc.pid, " ".join(argv))
        return cls(name, proc, log_path)

    def tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        """The last ``lines`` lines of the log, joined with `` | `` for one-line messages."""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return " | ".join(line.strip() for line in text.splitlines()[-lines:] if line.strip())

    def stop(self, grace_s: float = 10.0) -> int:
        """Terminate (SIGTERM), wait up to ``grace_s``, then kill; returns the exit code."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                logger.warning("%s did not stop within %.0f s; killing it", self.name, grace_s)
                self.proc.kill()
                self.proc.wait()
        return int(self.proc.returncode)


def loopback_opener() -> urllib.request.OpenerDirector:
    """A urllib opener that ignores proxy settings (loopback requests must go direct)."""
    return urllib.request.build_opener(urllib.request.ProxyHandler({}))


def wait_until_ready(url: str, child: ChildProcess, timeout_s: float) -> None:
    """Poll ``url`` until it answers 200, the child exits, or ``timeout_s`` passes.

    Raises:
        TransientError: The child exited or did not answer in time; the message carries the tail
            of its log.
    """
    opener = loopback_opener()
    deadline = time.monotonic() + timeout_s
    while True:
        code = child.proc.poll()
        if code is not None:
            raise TransientError(
                f"{child.name} exited with code {code} before answering; its log: {child.tail()}",
                where=url,
                fix="check the log above; retry if the port was taken",
            )
        try:
            with opener.open(url, timeout=2.0) as response:
                if response.status == 200:
                    return
        except urllib.error.HTTPError as exc:
            exc.close()  # an error status: not ready yet
        except (OSError, urllib.error.URLError):
            pass  # not listening yet
        if time.monotonic() > deadline:
            raise TransientError(
                f"{child.name} did not answer within {timeout_s:.0f} s; its log: {child.tail()}",
                where=url,
                fix="retry, or raise the startup timeout on a loaded machine",
            )
        time.sleep(0.1)


def _address_in_use(child: ChildProcess) -> bool:
    text = child.tail(lines=40).lower()
    return "address already in use" in text or "os error 98" in text


def start_with_port_retry(
    name: str,
    make_argv: Callable[[int], Sequence[str]],
    *,
    host: str,
    port: int,
    log_path: Path,
    ready_path: str = "/",
    timeout_s: float,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> tuple[ChildProcess, str]:
    """Start a server child on ``port`` (0: a free one, retried if taken) and wait until ready.

    Args:
        name: Short name for messages.
        make_argv: Builds the command line for a given port.
        host: Host the server binds.
        port: Port to use; 0 picks free ones, retrying when a race takes the port.
        log_path: Where the child's output goes.
        ready_path: Path polled for a 200 answer.
        timeout_s: Startup timeout per try.
        env: Environment of the child (inherited when ``None``).
        cwd: Working folder of the child.

    Returns:
        The running child and its base URL (``http://host:port``).
    """
    tries = _PORT_TRIES if port == 0 else 1
    for attempt in range(1, tries + 1):
        chosen = port or free_port(host)
        url = f"http://{host}:{chosen}"
        child = ChildProcess.start(name, make_argv(chosen), log_path, env=env, cwd=cwd)
        try:
            wait_until_ready(url + ready_path, child, timeout_s)
        except TransientError:
            child.stop()
            if attempt < tries and _address_in_use(child):
                logger.info("%s: port %d was taken; retrying on another", name, chosen)
                continue
            raise
        except BaseException:
            child.stop()
            raise
        return child, url
    raise AssertionError("unreachable")  # pragma: no cover
