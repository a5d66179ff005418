"""Functional tests of ``cleaner.sandbox``: interpreter semantics, statuses, the pool and its lifecycle."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from cleaner.sandbox import STATUSES, ExecResult, Sandbox, SandboxConfig, run_python

IS_ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not IS_ROOT, reason="namespaces, cgroups and the uid drop need root")


@pytest.fixture(scope="module")
def box():
    with Sandbox(workers=2, config=SandboxConfig(preload=("numpy",))) as sandbox:
        yield sandbox


def _cgroup_dirs(owner_pid: int) -> list[str]:
    found = []
    for root, dirs, _ in os.walk("/sys/fs/cgroup"):
        found += [os.path.join(root, d) for d in dirs if d == f"cleaner-sandbox-{owner_pid}"]
    return found


# ---- interpreter semantics ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "stdout"),
    [
        ("1+1", "2\n"),
        ("x = 3", ""),
        ("x = 3\nx * 2", "6\n"),
        ("print('hi')", "hi\n"),  # a call returning None shows nothing more
        ("'a'", "'a'\n"),  # repr, like the REPL
        ("None", ""),
        ("import math\nmath.factorial(5)", "120\n"),
        ("for i in range(2):\n    i", ""),  # only a top-level bare expression is shown
        ("", ""),
    ],
)
def test_bare_last_expression_is_printed_like_the_repl(box, code, stdout):
    result = box.run_sync(code, timeout_s=5)
    assert result.status == "ok", result.stderr
    assert result.stdout == stdout


def test_result_fields_and_reference_semantics(box):
    result = box.run_sync("import sys\nprint(sys.argv, sys.path[0] == '', __name__)", timeout_s=5)
    assert isinstance(result, ExecResult)
    assert (result.ok, result.status, result.exit_code, result.error_type) == (True, "ok", 0, None)
    assert result.stdout == "['-c'] True __main__\n"
    assert 0 < result.duration_s < 5
    assert "process" in result.isolation


@pytest.mark.parametrize(
    ("code", "error_type", "needle"),
    [
        ("print(undefined_name)", "NameError", "NameError: name 'undefined_name' is not defined"),
        ("x = (", "SyntaxError", "SyntaxError"),
        ("1/0", "ZeroDivisionError", "ZeroDivisionError: division by zero"),
        ("def f():\n    raise KeyError('k')\nf()", "KeyError", 'line 2, in f'),
        ("import no_such_module_xyz", "ModuleNotFoundError", "No module named 'no_such_module_xyz'"),
        ("raise SystemExit(3)", "SystemExit", ""),
    ],
)
def test_errors_report_the_exception_class_and_traceback(box, code, error_type, needle):
    result = box.run_sync(code, timeout_s=5)
    assert result.status == "error"
    assert not result.ok
    assert result.error_type == error_type
    assert needle in result.stderr
    if error_type not in ("SystemExit", "SyntaxError"):
        assert result.stderr.startswith("Traceback (most recent call last):\n")
        assert "_child.py" not in result.stderr  # the wrapper's frames are hidden like python -c
    assert result.exit_code == (3 if error_type == "SystemExit" else 1)


def test_std_streams_are_like_python_c_with_pipes(box):
    code = (
        "import sys\nprint(sys.stdin.seekable(), sys.stdout.seekable(), sys.stderr.seekable(),"
        " [s.fileno() for s in (sys.stdin, sys.stdout, sys.stderr)], sys.stdout.line_buffering)"
    )
    result = box.run_sync(code, timeout_s=5)
    assert result.stdout == "True False False [0, 1, 2] True\n"  # stdin /dev/null, stdout/stderr pipes


def test_exit_zero_with_stderr_is_ok_and_sys_exit_message(box):
    warn = box.run_sync("import sys\nprint('careful', file=sys.stderr)\nprint('done')", timeout_s=5)
    assert (warn.status, warn.stdout, warn.stderr) == ("ok", "done\n", "careful\n")
    clean_exit = box.run_sync("import sys\nprint('a')\nsys.exit(0)", timeout_s=5)
    assert (clean_exit.status, clean_exit.stdout) == ("ok", "a\n")
    message = box.run_sync("import sys\nsys.exit('bad input')", timeout_s=5)
    assert (message.status, message.exit_code, message.stderr) == ("error", 1, "bad input\n")
    raw = box.run_sync("import os\nos._exit(7)", timeout_s=5)
    assert (raw.status, raw.exit_code, raw.error_type) == ("error", 7, "NonZeroExit")


def test_stdin_str_bytes_and_none(box):
    code = "import sys\ndata = sys.stdin.read()\nprint(len(data), data.split())"
    assert box.run_sync(code, stdin="3 4\n5\n", timeout_s=5).stdout == "6 ['3', '4', '5']\n"
    assert box.run_sync(code, stdin=b"\xce\xbb x", timeout_s=5).stdout == "3 ['λ', 'x']\n"
    empty = box.run_sync("input()", timeout_s=5)
    assert (empty.status, empty.error_type) == ("error", "EOFError")
    big = "\n".join(str(i) for i in range(100_000)) + "\n"  # larger than a pipe buffer
    summed = box.run_sync("import sys\nprint(sum(map(int, sys.stdin)))", stdin=big, timeout_s=10)
    assert summed.stdout == f"{sum(range(100_000))}\n"


def test_output_limit_truncates_to_the_byte_budget(box):
    result = box.run_sync("print('x' * 5000)\nprint('never')", max_output_bytes=1000, timeout_s=5)
    assert result.status == "output_limit"
    assert result.truncated
    assert result.stdout == "x" * 1000
    exact = box.run_sync("print('y' * 9)", max_output_bytes=10, timeout_s=5)
    assert (exact.status, exact.stdout, exact.truncated) == ("ok", "y" * 9 + "\n", False)


def test_timeout_kills_at_the_wall_clock_limit(box):
    start = time.monotonic()
    result = box.run_sync("print('started')\nimport time\ntime.sleep(60)", timeout_s=0.5)
    elapsed = time.monotonic() - start
    assert result.status == "timeout"
    assert result.stdout == "started\n"  # output printed before the kill reaches the model
    assert result.duration_s >= 0.5
    assert elapsed < 15  # killed at the limit, not after the program's 60 s (a loaded machine delays the kill)


def test_memory_limits(box):
    alloc = box.run_sync("x = bytearray(8 * 2**30)", memory_mb=256, timeout_s=10)
    assert (alloc.status, alloc.error_type) == ("memory", "MemoryError")
    grow = box.run_sync("a = []\nwhile True:\n    a.append(' ' * 10**6)", memory_mb=128, timeout_s=10)
    assert grow.status == "memory"
    assert grow.duration_s < 5
    fits = box.run_sync("x = bytearray(50 * 2**20)\nprint(len(x))", memory_mb=256, timeout_s=10)
    assert (fits.status, fits.stdout) == ("ok", f"{50 * 2**20}\n")


def test_scientific_stack_imports(box):
    code = (
        "import math, itertools, fractions, numpy as np, sympy\n"
        "x = sympy.symbols('x')\n"
        "print(sympy.solve(x**2 - 4, x), np.arange(4).sum(), fractions.Fraction(1, 3) * 3,"
        " len(list(itertools.permutations(range(4)))), math.comb(5, 2))"
    )
    result = box.run_sync(code, timeout_s=60, memory_mb=1024)
    assert result.status == "ok", result.stderr
    assert result.stdout == "[-2, 2] 6 1 24 10\n"


def test_no_state_survives_a_call(box):
    first = box.run_sync(
        "import math, os, random, numpy as np\nmath.pi = 3\nopen('left.txt', 'w').write('x')\n"
        "print(os.getcwd(), random.random(), np.random.rand())",
        timeout_s=10,
    )
    assert first.status == "ok", first.stderr
    workdir, *first_random = first.stdout.split()
    second = box.run_sync(
        f"import math, os, random, numpy as np\nprint(math.pi, os.path.exists('left.txt'), os.path.exists({workdir!r}))\n"
        "print(random.random(), np.random.rand())",
        timeout_s=10,
    )
    assert second.status == "ok", second.stderr
    pi_line, random_line = second.stdout.splitlines()
    assert pi_line == "3.141592653589793 False False"  # module state, files and the work dir are gone
    assert random_line.split() != first_random  # generators are reseeded per call


def test_argument_validation():
    with pytest.raises(ValueError, match="timeout_s"):
        run_python("1", timeout_s=-1)
    with pytest.raises(ValueError, match="timeout_s"):
        run_python("1", timeout_s=float("nan"))
    with pytest.raises(ValueError, match="memory_mb"):
        run_python("1", memory_mb=1)
    with pytest.raises(ValueError, match="max_output_bytes"):
        run_python("1", max_output_bytes=-5)
    with pytest.raises(TypeError, match="stdin"):
        run_python("1", stdin=5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="code"):
        run_python(b"1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="workers"):
        Sandbox(workers=0)
    with pytest.raises(ValueError, match="max_processes"):
        SandboxConfig(max_processes=0)
    with pytest.raises(ValueError, match="absolute"):
        SandboxConfig(readable_paths=("relative/dir",))


def test_run_python_one_shot():
    result = run_python("import sys\nprint(sys.stdin.read().upper())\n6 * 7", stdin="abc", timeout_s=10)
    assert (result.status, result.stdout) == ("ok", "ABC\n42\n")
    assert set(result.isolation) >= {"process", "rlimits", "env_cleared", "private_workdir"}
    if IS_ROOT:
        assert {"pid_namespace", "net_namespace", "mount_namespace", "readonly_fs", "uid_drop"} <= set(
            result.isolation
        )
    assert result.status in STATUSES


# ---- the pool ------------------------------------------------------------------------------------------


async def test_concurrent_calls_queue_beyond_the_worker_count():
    """4 calls of 1 s on 2 workers: read from the calls' own start/end times, at most 2 ever run at once and 2 do
    overlap (the pool is parallel). Counted from the intervals, not the wall time, so load cannot fail it."""
    program = "import time\nstart = time.time()\ntime.sleep(1.0)\nprint(start, time.time())"
    async with Sandbox(workers=2, config=SandboxConfig(preload=())) as sandbox:
        await asyncio.gather(sandbox.run("pass"), sandbox.run("pass"))  # both workers started
        results = await asyncio.gather(*(sandbox.run(program, timeout_s=30) for _ in range(4)))
    intervals = [tuple(map(float, r.stdout.split())) for r in results]
    events = sorted([(t0, 1) for t0, _ in intervals] + [(t1, -1) for _, t1 in intervals], key=lambda e: (e[0], e[1]))
    running, most = 0, 0
    for _, change in events:
        running += change
        most = max(most, running)
    assert most == 2
    assert sandbox.closed


async def test_many_concurrent_tasks(box):
    results = await asyncio.gather(*(box.run(f"{i} ** 2", timeout_s=10) for i in range(40)))
    assert [r.stdout for r in results] == [f"{i * i}\n" for i in range(40)]


def test_close_is_idempotent_and_leaves_nothing_behind():
    sandbox = Sandbox(workers=2, config=SandboxConfig(preload=()))
    assert sandbox.run_sync("1").stdout == "1\n"
    servers = [w.proc for w in sandbox._workers]
    owner_pids = [p.pid for p in servers if p is not None]
    sandbox.close()
    sandbox.close()
    assert all(p is not None and p.poll() is not None for p in servers)
    for pid in owner_pids:
        assert not os.path.exists(f"/proc/{pid}")
        assert _cgroup_dirs(pid) == []
    with pytest.raises(RuntimeError, match="closed"):
        sandbox.run_sync("1")


def test_a_dead_worker_is_replaced(box):
    assert box.run_sync("1").status == "ok"
    for worker in box._workers + box._plain_workers:
        if worker.proc is not None:
            os.kill(worker.proc.pid, signal.SIGKILL)
            worker.proc.wait()
    results = [box.run_sync(f"{i}", timeout_s=10) for i in range(4)]
    results += [box.run_sync(f"import numpy\n{i}", timeout_s=10) for i in range(4)]
    assert [r.status for r in results] == ["ok"] * 8


def test_unclosed_sandbox_is_cleaned_at_interpreter_exit(tmp_path: Path):
    script = (
        "import json, sys\n"
        "from cleaner.sandbox import Sandbox, SandboxConfig\n"
        "box = Sandbox(workers=1, config=SandboxConfig(preload=()))\n"
        "box.run_sync('1')\n"
        "print(json.dumps([w.proc.pid for w in box._workers]))\n"
    )
    import subprocess

    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    for pid in json.loads(done.stdout):
        assert not os.path.exists(f"/proc/{pid}")
        assert _cgroup_dirs(pid) == []


# ---- isolation layers and degraded modes -----------------------------------------------------------------


@needs_root
def test_full_isolation_layers_as_root(box):
    expected = {
        "pid_namespace", "net_namespace", "mount_namespace", "ipc_namespace", "uts_namespace",
        "readonly_fs", "private_root", "minimal_dev", "private_tmp", "seccomp", "uid_drop", "cgroup_memory", "cgroup_pids",
        "no_new_privs", "rlimits", "env_cleared", "private_workdir",
    }  # fmt: skip
    result = box.run_sync("import os, socket\nprint(os.getpid(), os.getuid(), socket.gethostname())")
    assert expected <= set(result.isolation)
    pid, uid, host = result.stdout.split()
    assert int(pid) > 1 and int(uid) in box.sandbox_uids and host == "sandbox"


def test_degraded_mode_without_namespaces_or_cgroups():
    config = SandboxConfig(namespaces=False, cgroups=False, preload=())
    with Sandbox(workers=1, config=config) as sandbox:
        result = sandbox.run_sync("import os\nprint(sorted(os.environ))\nos.getcwd()", timeout_s=10)
        assert result.status == "ok"
        assert not {"pid_namespace", "net_namespace", "cgroup_memory"} & set(result.isolation)
        assert "subreaper" in result.isolation
        keys, cwd = result.stdout.splitlines()
        assert "PATH" in keys and "CLEANER" not in keys
        workdir = cwd.strip("'")
        assert not os.path.exists(workdir)  # the host work dir was removed after the call
        daemon = sandbox.run_sync(
            "import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
            "        time.sleep(30)\n    os._exit(0)\nprint('parent')",
            timeout_s=10,
        )
        assert (daemon.status, daemon.stdout) == ("ok", "parent\n")
        assert daemon.duration_s < 5
        slow = sandbox.run_sync("while True: pass", timeout_s=0.5)
        assert slow.status == "timeout"
        assert sandbox.run_sync("6*7").stdout == "42\n"


@needs_root
def test_unprivileged_fallback_runs_inside_the_sandbox():
    """Run the pool as the sandbox's unprivileged uid: the no-root fallback, exercised for real.

    The outer sandbox shows this checkout's ``src`` (``readable_paths``) so that the inner one can start.
    """
    inner = (
        "import json, os\n"
        "from cleaner.sandbox import Sandbox, SandboxConfig\n"
        "assert os.geteuid() != 0\n"
        "out = {}\n"
        "with Sandbox(workers=1, config=SandboxConfig(preload=())) as box:\n"
        "    r = box.run_sync('1+1', timeout_s=20)\n"
        "    out['ok'] = [r.status, r.stdout, list(r.isolation)]\n"
        "    r = box.run_sync('while True: pass', timeout_s=0.5)\n"
        "    out['timeout'] = r.status\n"
        "    r = box.run_sync('import os, time\\nif os.fork() == 0:\\n    os.setsid()\\n'\n"
        "                     '    if os.fork() == 0:\\n        time.sleep(30)\\n    os._exit(0)\\nprint(1)', timeout_s=20)\n"
        "    out['daemon'] = [r.status, r.duration_s]\n"
        "    r = box.run_sync('undefined', timeout_s=20)\n"
        "    out['error'] = r.error_type\n"
        "print(json.dumps(out))\n"
    )
    src = str(Path(__file__).resolve().parents[1] / "src")
    with Sandbox(workers=1, config=SandboxConfig(preload=(), readable_paths=(src,))) as outer:
        result = outer.run_sync(inner, timeout_s=120, memory_mb=2048)
    assert result.status == "ok", result.stderr
    out = json.loads(result.stdout)
    status, stdout, isolation = out["ok"]
    assert (status, stdout) == ("ok", "2\n")
    assert "uid_drop" not in isolation and "pid_namespace" not in isolation and "subreaper" in isolation
    assert "seccomp" in isolation  # no privilege needed with no_new_privs
    assert out["timeout"] == "timeout"
    assert out["daemon"][0] == "ok" and out["daemon"][1] < 10
    assert out["error"] == "NameError"


@pytest.mark.parametrize(
    ("code", "plain"),
    [
        ("print(1)", True),
        ("import math, itertools\nfrom collections import Counter\nimport os.path as p", True),
        ("import numpy as np", False),
        ("from sympy import symbols", False),
        ("import math, numpy", False),
        ("x = __import__('numpy')", False),
        ("import importlib\nimportlib.import_module('sympy')", False),
        ("  import json  # indented", True),
    ],
)
def test_stdlib_only_calls_go_to_the_plain_template(code, plain):
    from cleaner.sandbox._pool import imports_only_stdlib

    assert imports_only_stdlib(code) is plain


def test_both_templates_give_the_same_answers(box):
    plain = box.run_sync("import sys\nprint('numpy' in sys.modules, sum(range(10)))")
    preloaded = box.run_sync("import sys, numpy\nprint('numpy' in sys.modules, int(numpy.arange(10).sum()))")
    assert (plain.stdout, preloaded.stdout) == ("False 45\n", "True 45\n")  # plain is like a fresh python -c


@needs_root
def test_an_interpreter_under_tmp_gets_the_private_view(tmp_path):
    """CI and users clone under /tmp: the view's private /tmp must not hide a venv that lives there (it did: the
    view failed with 'File exists: /tmp/tmp' and the servers fell back to the host's root)."""
    import subprocess

    assert str(tmp_path).startswith("/tmp/")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", str(venv)], check=True)
    src = Path(__file__).resolve().parents[1] / "src"
    site_dir = next((venv / "lib").glob("python3*/site-packages"))
    (site_dir / "cleaner_src.pth").write_text(f"{src}\n")
    (tmp_path / "secret.txt").write_text("ground truth\n")
    programs = {
        "stdlib": "import fractions, socket, decimal; print(fractions.Fraction(1, 3))",
        "secret": f"print(open({str(tmp_path / 'secret.txt')!r}).read())",
        "venv": f"open({str(venv / 'pyvenv.cfg')!r}, 'a').write('x')",
    }
    probe = (
        "import json\n"
        "from cleaner.sandbox import Sandbox\n"
        f"programs = {programs!r}\n"
        "with Sandbox(workers=1) as box:\n"
        "    res = {name: box.run_sync(code, timeout_s=20) for name, code in programs.items()}\n"
        "    print(json.dumps({'stdlib': [res['stdlib'].status, res['stdlib'].stdout.strip()],\n"
        "                      'secret': res['secret'].error_type, 'venv': res['venv'].error_type,\n"
        "                      'isolation': list(res['stdlib'].isolation), 'warnings': list(box.warnings)}))\n"
    )
    out = subprocess.run([str(venv / "bin" / "python"), "-c", probe], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["stdlib"] == ["ok", "1/3"], report
    assert "private_root" in report["isolation"], report
    assert not [w for w in report["warnings"] if w.startswith("filesystem view")], report
    assert report["secret"] == "FileNotFoundError"  # the rest of /tmp is not in the view
    assert report["venv"] in ("PermissionError", "OSError")  # the venv is there read-only
