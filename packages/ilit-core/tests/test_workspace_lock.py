"""Issue 17 §3: one run per workspace (ilit.lock), and workspace files safe against concurrent writers."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading

import pytest

import ilit
from ilit.history import write_json_atomic
from ilit.lock import LOCK_FILE, WorkspaceLock
from ilit.workspace import prepare_workspace

HOLD = textwrap.dedent("""
    import sys, time
    from ilit.lock import WorkspaceLock
    lock = WorkspaceLock(sys.argv[1]).acquire()
    print("held", flush=True)
    time.sleep(120)
""")


def _holder(ws):
    """A child process holding the lock on ``ws`` until killed."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(ws)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_holder_fails_at_once_naming_the_first(tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    proc = _holder(ws)
    try:
        with pytest.raises(ilit.WorkspaceBusyError) as info:
            WorkspaceLock(str(ws)).acquire()
        message = str(info.value)
        assert f"pid {proc.pid}" in message and "started" in message and str(ws) in message
        assert info.value.holder["pid"] == proc.pid and info.value.workspace == str(ws)
    finally:
        proc.kill()
        proc.wait()


def test_a_lock_left_by_a_killed_process_does_not_block(tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    proc = _holder(ws)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert json.loads((ws / LOCK_FILE).read_text())["pid"] == proc.pid  # its record is still there
    with WorkspaceLock(str(ws)) as lock:
        assert lock.held
        assert json.loads((ws / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert not lock.held and (ws / LOCK_FILE).read_text() == ""  # released: no stale holder left


def test_two_holders_in_one_process_exclude_each_other_and_release_hands_over(tmp_path):
    first = WorkspaceLock(str(tmp_path)).acquire()
    with pytest.raises(ilit.WorkspaceBusyError, match=f"pid {os.getpid()}"):
        WorkspaceLock(str(tmp_path)).acquire()
    first.release()
    second = WorkspaceLock(str(tmp_path)).acquire()
    assert second.held
    second.release()


def test_a_symlinked_lock_file_is_refused_not_followed(tmp_path):
    target = tmp_path / "elsewhere"
    target.write_text("keep")
    (tmp_path / "ws").mkdir()
    os.symlink(target, tmp_path / "ws" / LOCK_FILE)
    with pytest.raises(ilit.WorkspaceBusyError, match="symlink"):
        WorkspaceLock(str(tmp_path / "ws")).acquire()
    assert target.read_text() == "keep"


def test_concurrent_atomic_writes_and_workspace_tidying_never_fail(tmp_path):
    """The issue's race: writers of history.json beside prepare_workspace calls (87 of 577 writes failed)."""
    ws = str(tmp_path / "ws")
    prepare_workspace(ws)
    errors, stop = [], threading.Event()

    def write(n):
        for i in range(150):
            try:
                write_json_atomic(os.path.join(ws, "history.json"), {"writer": n, "i": i})
            except Exception as exc:  # noqa: BLE001 - collected and asserted below
                errors.append(exc)

    def tidy():
        while not stop.is_set():
            try:
                prepare_workspace(ws)
            except Exception as exc:  # noqa: BLE001
                errors.append(exc)

    code = ("import os, sys\nfrom ilit.history import write_json_atomic\n"
            "for i in range(150): write_json_atomic(os.path.join(sys.argv[1], 'history.json'), {'proc': i})\n")
    procs = [subprocess.Popen([sys.executable, "-c", code, ws], stderr=subprocess.PIPE, text=True) for _ in range(2)]
    threads = [threading.Thread(target=write, args=(n,)) for n in range(2)] + [threading.Thread(target=tidy)]
    for t in threads:
        t.start()
    for t in threads[:2]:
        t.join()
    outs = [p.communicate()[1] for p in procs]
    stop.set()
    threads[2].join()
    assert errors == [] and all(p.returncode == 0 for p in procs), (errors[:3], outs)
    with open(os.path.join(ws, "history.json")) as f:
        assert set(json.load(f)) in ({"writer", "i"}, {"proc"})
    assert not [n for n in os.listdir(ws) if n.endswith(".tmp")]
