"""One long-lived pool per process: code rewards and the verl tool share ``shared_sandbox()``.

The batch test watches the process's children while it scores: a reward that started a pool of its own
(the old behaviour: one per call, sized by the CPU count) shows up as fork servers outside the shared pool.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading

import pytest

from cleaner.rewards import code_score, code_score_async
from cleaner.sandbox import Sandbox, shared_sandbox

STDIN_SPEC = json.dumps({"inputs": ["3\n1 2 3\n", "1\n10\n", "2\n5 5\n"], "outputs": ["6\n", "10\n", "10\n"]})
GOOD = "```python\nn = int(input())\nprint(sum(map(int, input().split())))\n```"
BAD = "```python\nprint(0)\n```"


def _fork_servers() -> set[int]:
    """Our children running the fork server (its bootstrap names cleaner.sandbox._server)."""
    found = set()
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as fh:
                stat = fh.read()
            with open(f"/proc/{name}/cmdline", "rb") as fh:
                cmdline = fh.read()
        except OSError:
            continue
        ppid = int(stat[stat.rfind(b")") + 2 :].split()[1])
        if ppid == os.getpid() and b"cleaner.sandbox._server" in cmdline:
            found.add(int(name))
    return found


class ServerWatch:
    """Samples the fork servers every few ms in a thread; ``seen`` is every one that existed."""

    def __init__(self) -> None:
        self.seen: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.seen |= _fork_servers()
            self._stop.wait(0.002)

    def __enter__(self) -> ServerWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        self.seen |= _fork_servers()


def _pool_pids(box: Sandbox) -> set[int]:
    return {w.proc.pid for w in box._workers + box._plain_workers if w.proc is not None}


def test_a_batch_of_code_rewards_uses_the_one_pool():
    box = shared_sandbox(2)
    assert shared_sandbox() is box and shared_sandbox(7) is box  # the first use sized it
    box.run_sync("1")
    answers = [GOOD, BAD] * 6
    with ServerWatch() as watch:
        scores = [code_score(a, STDIN_SPEC, timeout_s=5.0)["score"] for a in answers]

        async def batch() -> list[float]:
            results = await asyncio.gather(*(code_score_async(a, STDIN_SPEC, timeout_s=5.0) for a in answers))
            return [r["score"] for r in results]

        async_scores = asyncio.run(batch())
    assert scores == async_scores == [1.0, 0.0] * 6
    assert shared_sandbox() is box and not box.closed
    assert watch.seen == _pool_pids(box)  # no pool but the shared one was ever started
    assert len(watch.seen) == 2 * box.workers == 4  # a preloaded and a plain server per slot


def test_the_verl_tool_takes_the_shared_pool_and_leaves_it_open():
    tool_module = pytest.importorskip("cleaner.engines.verl.tool")
    tool = tool_module.CodeInterpreterTool({"workers": 3})
    box = shared_sandbox()
    assert tool.sandbox is box
    text, ok, status = asyncio.run(tool.run_code("print(6 * 7)"))
    assert (text.strip(), ok, status) == ("42", True, "ok")
    tool.close()
    assert not box.closed and shared_sandbox() is box


def test_a_closed_shared_pool_is_replaced_and_workers_come_from_the_environment(monkeypatch):
    old = shared_sandbox()
    old.close()
    monkeypatch.setenv("CLEANER_SANDBOX_WORKERS", "1")
    new = shared_sandbox()
    assert new is not old and new.workers == 1
    assert new.run_sync("2 + 2").stdout == "4\n"
    monkeypatch.setenv("CLEANER_SANDBOX_WORKERS", "zero")
    new.close()
    with pytest.raises(ValueError, match="CLEANER_SANDBOX_WORKERS"):
        shared_sandbox()
