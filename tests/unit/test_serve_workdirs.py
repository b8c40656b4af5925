"""Server workdirs left by killed processes are removed by the next server, and only those."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from pipelines.archive import serve

pytestmark = pytest.mark.skipif(
    not Path(f"/proc/{os.getpid()}/stat").exists(), reason="needs /proc (Linux)"
)


def _workdir(parent: Path, name: str, owner: dict[str, object] | None) -> Path:
    folder = parent / f"{serve.WORKDIR_PREFIX}{name}"
    (folder / "items").mkdir(parents=True)
    (folder / "items" / "x.ndjson").write_text("{}\n")
    if owner is not None:
        (folder / "owner.json").write_text(json.dumps(owner))
    return folder


def _exited_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_only_folders_of_exited_owners_are_removed(tmp_path: Path) -> None:
    me = os.getpid()
    start = serve._process_start(me)
    ns = serve._pid_namespace()
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        deadline = time.monotonic() + 30
        while serve._process_start(zombie.pid) != "zombie":  # exited, not reaped yet
            assert time.monotonic() < deadline
            time.sleep(0.01)
        # The zombie's own start time: only its state tells that it is gone.
        zombie_start = Path(f"/proc/{zombie.pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
        dead = _workdir(tmp_path, "dead", {"pid": _exited_pid(), "start": "1", "ns": ns})
        undead = _workdir(tmp_path, "zombie", {"pid": zombie.pid, "start": zombie_start, "ns": ns})
        reused = _workdir(tmp_path, "reused", {"pid": me, "start": "not-" + str(start), "ns": ns})
        mine = _workdir(tmp_path, "mine", {"pid": me, "start": start, "ns": ns})
        creating = _workdir(tmp_path, "creating", None)
        elsewhere = _workdir(tmp_path, "other-ns", {"pid": _exited_pid(), "ns": "pid:[1]"})
        (tmp_path / "eoforge-other-dead").mkdir()

        removed = serve.remove_stale_workdirs(tmp_path)

        assert sorted(removed) == sorted([dead, undead, reused])
        assert not dead.exists() and not undead.exists() and not reused.exists()
        assert mine.exists() and creating.exists() and elsewhere.exists()
        assert (tmp_path / "eoforge-other-dead").exists()
    finally:
        zombie.wait()


def test_a_new_workdir_records_its_owner_and_sweeps_stale_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    ns = serve._pid_namespace()
    stale = _workdir(tmp_path, "stale", {"pid": _exited_pid(), "start": "1", "ns": ns})
    workdir = serve.new_workdir()
    assert workdir.parent == tmp_path and workdir.name.startswith(serve.WORKDIR_PREFIX)
    owner = json.loads((workdir / "owner.json").read_text())
    assert owner == {"pid": os.getpid(), "start": serve._process_start(os.getpid()), "ns": ns}
    assert not stale.exists()
    assert serve.remove_stale_workdirs(tmp_path) == []  # its owner (this process) runs
    assert workdir.exists()
