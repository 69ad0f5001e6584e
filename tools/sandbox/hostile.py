"""The hostile-code suite: snippets that try to break out of, exhaust or abuse a sandbox.

Each `HostileCase` is run against a backend inside a `HostContext` that plants things to protect: a
canary file and directory (must stay untouched), a root-only secret file and a secret environment
variable in the host process (must not leak), a TCP listener on a loopback port (must not be reached
by network-isolated backends), a marker path in the host's ``/tmp`` (must not appear).

A case is *contained* when all of these hold:
- its own check passes (the attack failed or was cut short);
- the call returned within ``timeout_s + margin_s``;
- when the case is expected to fail, the result is a failure with a non-empty error message;
- the host is unchanged (canary content, mtime and directory listing; no marker in host /tmp);
- no process of the sandbox user outlives the call (checked when the host is root);
- the next call on the same sandbox works (``print(6*7)`` gives ``42``).

Run the whole table with ``python benchmarks/hostile.py`` (see docs/sandboxes.md).
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import string
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from turngym.tools.sandbox.base import Sandbox, SandboxResult

__all__ = [
    "HOSTILE_CASES",
    "CaseOutcome",
    "HostContext",
    "HostileCase",
    "format_table",
    "run_case",
    "run_suite",
    "sandbox_uid_base",
]

SECRET_ENV = "TURNGYM_HOSTILE_SECRET"


def sandbox_uid_base(slots: int = 64) -> int:
    """First uid of a range of ``slots`` uids for this process's sandboxes. Ranges of processes whose pids differ
    modulo 1000 do not overlap, and the uid just below each range (the Docker backend's keeper process) belongs to
    no range (uids 100000-165000, no accounts there)."""
    return 100_001 + (os.getpid() % 1000) * (slots + 1)


class HostContext:
    """Host-side things a hostile snippet must not touch, read or reach. Use as a context manager."""

    def __init__(self, sandbox_uid: int | None = None, uid_slots: int = 64):
        self.sandbox_uid = sandbox_uid
        self.uid_slots = uid_slots  # as root, each call runs as one uid of [sandbox_uid, sandbox_uid + uid_slots)
        self.root = tempfile.mkdtemp(prefix="turngym-hostile-host-")
        os.chmod(self.root, 0o755)
        self.canary_dir = os.path.join(self.root, "canary")
        os.mkdir(self.canary_dir)
        os.chmod(self.canary_dir, 0o755)
        self.canary = os.path.join(self.canary_dir, "canary.txt")
        self.canary_text = "canary-" + secrets.token_hex(8)
        with open(self.canary, "w") as f:
            f.write(self.canary_text)
        os.chmod(self.canary, 0o644)
        self.secret_value = "s3cret-" + secrets.token_hex(12)
        self.secret_file = os.path.join(self.root, "secret.txt")
        with open(self.secret_file, "w") as f:
            f.write(self.secret_value)
        os.chmod(self.secret_file, 0o600)
        self.host_tmp_marker = f"/tmp/turngym-hostile-pwned-{secrets.token_hex(6)}"
        self.host_pid = os.getpid()
        self._old_env = os.environ.get(SECRET_ENV)
        os.environ[SECRET_ENV] = self.secret_value
        self._canary_stat = os.stat(self.canary)
        self._listing = sorted(os.listdir(self.canary_dir))
        self.connections = 0
        self._srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._srv.bind(("127.0.0.1", 0))
        self._srv.listen(16)
        self._srv.settimeout(0.2)
        self.port = self._srv.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True, name="hostile-listener")
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._srv.accept()
            except (socket.timeout, OSError):  # noqa: UP041
                continue
            self.connections += 1
            try:
                conn.sendall(b"hello from the host\n")
                conn.close()
            except OSError:
                pass

    def substitutions(self) -> dict[str, str]:
        return {
            "canary": self.canary,
            "canary_dir": self.canary_dir,
            "secret_file": self.secret_file,
            "secret_env": SECRET_ENV,
            "port": str(self.port),
            "host_pid": str(self.host_pid),
            "host_tmp_marker": self.host_tmp_marker,
        }

    def host_unchanged(self) -> tuple[bool, str]:
        try:
            with open(self.canary) as f:
                text = f.read()
            st = os.stat(self.canary)
        except OSError as e:
            return False, f"canary gone: {e}"
        if text != self.canary_text:
            return False, "canary content changed"
        if (st.st_mtime_ns, st.st_mode, st.st_uid) != (
            self._canary_stat.st_mtime_ns,
            self._canary_stat.st_mode,
            self._canary_stat.st_uid,
        ):
            return False, "canary metadata changed"
        if sorted(os.listdir(self.canary_dir)) != self._listing:
            return False, f"canary dir changed: {sorted(os.listdir(self.canary_dir))}"
        if os.path.exists(self.host_tmp_marker):
            return False, f"{self.host_tmp_marker} was created on the host"
        return True, ""

    def restore(self) -> None:
        """Undo what a documented-limitation case was allowed to do (the marker in the host's /tmp)."""
        if os.path.isfile(self.host_tmp_marker):
            os.remove(self.host_tmp_marker)

    def leftover_processes(self) -> list[int]:
        """Live (non-zombie) pids owned by a uid of the sandbox's per-call range (reserved for the sandbox)."""
        if self.sandbox_uid is None:
            return []
        uids = range(self.sandbox_uid, self.sandbox_uid + self.uid_slots)
        out = []
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                try:
                    if os.stat(f"/proc/{pid}").st_uid not in uids:
                        continue
                    with open(f"/proc/{pid}/stat") as f:
                        state = f.read().rsplit(")", 1)[1].split()[0]
                except (OSError, IndexError):
                    continue
                if state != "Z":  # zombies hold no resources; the host's init reaps them in its own time
                    out.append(int(pid))
        return out

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self._srv.close()
        if os.path.exists(self.host_tmp_marker):
            try:
                os.remove(self.host_tmp_marker) if os.path.isfile(self.host_tmp_marker) else shutil.rmtree(
                    self.host_tmp_marker, ignore_errors=True
                )
            except OSError:
                pass
        if self._old_env is None:
            os.environ.pop(SECRET_ENV, None)
        else:
            os.environ[SECRET_ENV] = self._old_env
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> HostContext:  # noqa: PYI034
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


Check = Callable[[SandboxResult, HostContext], "tuple[bool, str]"]


@dataclass(frozen=True)
class HostileCase:
    """One hostile snippet.

    Attributes:
        name: Short id.
        code: Python source; ``$canary``, ``$canary_dir``, ``$secret_file``, ``$secret_env``, ``$port``,
            ``$host_pid``, ``$host_tmp_marker`` are substituted.
        check: ``(result, ctx) -> (attack_failed, detail)``.
        expect_error: The run must come back as a failure with an error message.
        limitation: Backends on which the attack is known to succeed, with the documented reason.
    """

    name: str
    code: str
    check: Check
    expect_error: bool = True
    limitation: dict[str, str] = field(default_factory=dict)

    def source(self, ctx: HostContext) -> str:
        return string.Template(self.code).safe_substitute(ctx.substitutions())


# ----------------------------------------------------------------------------- checks


def _always(r: SandboxResult, ctx: HostContext) -> tuple[bool, str]:
    return True, ""


def _stopped(r: SandboxResult, ctx: HostContext) -> tuple[bool, str]:
    return (not r.ok, "" if not r.ok else "ran to completion")


def _timed_out(r: SandboxResult, ctx: HostContext) -> tuple[bool, str]:
    ok = r.timed_out or r.killed_reason in ("cpu_time", "timeout")
    return ok, "" if ok else f"expected a timeout, got exit {r.exit_code} / {r.killed_reason}"


def _out(r: SandboxResult) -> str:
    return r.stdout + r.stderr


def _no_secret(r: SandboxResult, ctx: HostContext) -> tuple[bool, str]:
    leaked = ctx.secret_value in _out(r)
    return not leaked, "secret leaked" if leaked else ""


def _no_shadow(r: SandboxResult, ctx: HostContext) -> tuple[bool, str]:
    leaked = "root:" in r.stdout
    return not leaked, "/etc/shadow was read" if leaked else ""


def _not_printed(word: str) -> Check:
    def check(r: SandboxResult, ctx: HostContext) -> tuple[bool, str]:
        hit = word in r.stdout
        return not hit, f"{word!r} printed: the attack worked" if hit else ""

    return check


def _no_connection(r: SandboxResult, ctx: HostContext) -> tuple[bool, str]:
    time.sleep(0.05)
    hit = ctx.connections > 0 or "hello from the host" in r.stdout or "CONNECTED" in r.stdout
    return not hit, f"reached the host listener ({ctx.connections} connections)" if hit else ""


def _output_capped(r: SandboxResult, ctx: HostContext) -> tuple[bool, str]:
    n = len(r.stdout) + len(r.stderr)
    ok = n <= 2_000_000 and not r.ok
    return ok, "" if ok else f"{n} chars of output came back (ok={r.ok})"


def _clean_text(r: SandboxResult, ctx: HostContext) -> tuple[bool, str]:
    text = _out(r)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        return False, f"output is not valid UTF-8 text: {e}"
    bad = [c for c in text if ord(c) < 32 and c not in "\t\n\r"]
    return not bad, f"{len(bad)} control characters in the output" if bad else ""


def _only_lo(r: SandboxResult, ctx: HostContext) -> tuple[bool, str]:
    names = r.stdout.strip().split(",") if r.stdout.strip() else []
    ok = all(n in ("lo", "") for n in names)
    return ok, "" if ok else f"interfaces visible: {names}"


def _host_pid_hidden(r: SandboxResult, ctx: HostContext) -> tuple[bool, str]:
    seen = "VISIBLE" in r.stdout
    return not seen, "host process visible in /proc" if seen else ""


def _exit_code(code: int) -> Check:
    def check(r: SandboxResult, ctx: HostContext) -> tuple[bool, str]:
        return r.exit_code == code, "" if r.exit_code == code else f"exit code {r.exit_code}, expected {code}"

    return check


def _both(a: Check, b: Check) -> Check:
    def check(r: SandboxResult, ctx: HostContext) -> tuple[bool, str]:
        ok1, d1 = a(r, ctx)
        ok2, d2 = b(r, ctx)
        return ok1 and ok2, "; ".join(d for d in (d1, d2) if d)

    return check


_NO_NET = "no network isolation: the subprocess backend shares the host's network namespace (unless network=False)"

HOSTILE_CASES: list[HostileCase] = [
    # --- time
    HostileCase("infinite_loop", "while True:\n    pass\n", _timed_out),
    HostileCase("sleep_past_timeout", "import time\ntime.sleep(60)\n", _timed_out),
    HostileCase(
        "ignore_sigterm",
        "import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\n"
        "while True:\n    pass\n",
        _timed_out,
    ),
    HostileCase(
        "busy_threads",
        "import threading\ndef spin():\n    while True:\n        pass\n"
        "for _ in range(8):\n    threading.Thread(target=spin, daemon=True).start()\nspin()\n",
        _stopped,
    ),
    HostileCase(
        "close_std_streams_then_hang",
        "import os\nos.close(1)\nos.close(2)\nwhile True:\n    pass\n",
        _timed_out,
    ),
    # --- processes
    HostileCase(
        "fork_bomb",
        "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n",
        _stopped,
    ),
    HostileCase(
        "subprocess_bomb",
        "import subprocess\nps = []\nwhile True:\n    ps.append(subprocess.Popen(['sleep', '1000']))\n",
        _stopped,
    ),
    HostileCase(
        "thread_bomb",
        "import threading, time\nwhile True:\n    threading.Thread(target=time.sleep, args=(1000,), daemon=True).start()\n",
        _stopped,
    ),
    HostileCase(
        "escape_with_setsid",
        "import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n        time.sleep(1000)\n"
        "    os._exit(0)\nprint('parent left a daemon behind')\n",
        _always,
        expect_error=False,
    ),
    HostileCase(
        "daemon_left_running",
        "import subprocess\nsubprocess.Popen(['sleep', '1000'], start_new_session=True,\n"
        "    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\nprint('bye')\n",
        _always,
        expect_error=False,
    ),
    HostileCase(
        "kill_parent",
        "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\nprint('parent still alive?')\n",
        _always,
        expect_error=False,
    ),
    HostileCase("kill_host_pid", "import os, signal\nos.kill($host_pid, signal.SIGKILL)\n", _stopped),
    HostileCase(
        "kill_everything", "import os, signal\nos.kill(-1, signal.SIGKILL)\n", _always, expect_error=False
    ),
    # --- memory and disk
    HostileCase("memory_bomb_loop", "x = []\nwhile True:\n    x.append(bytearray(10 * 2**20))\n", _stopped),
    HostileCase("memory_bomb_single", "x = bytearray(16 * 2**30)\nprint(len(x))\n", _stopped),
    HostileCase(
        "big_file", "with open('big.bin', 'wb') as f:\n    f.write(b'0' * (200 * 2**20))\n", _stopped
    ),
    HostileCase(
        "disk_fill_many_files",
        "i = 0\nwhile True:\n    with open(f'fill{i}.bin', 'wb') as f:\n        f.write(b'0' * 2**20)\n    i += 1\n",
        _stopped,
    ),
    HostileCase(
        "fd_exhaustion",
        "fs = []\nwhile True:\n    fs.append(open('/dev/null'))\n",
        _stopped,
    ),
    HostileCase(
        "deep_recursion",
        "import sys\nsys.setrecursionlimit(10**9)\ndef f(n):\n    return f(n + 1)\nf(0)\n",
        _stopped,
    ),
    # --- output
    HostileCase("huge_stdout", "while True:\n    print('A' * 10000)\n", _output_capped),
    HostileCase(
        "huge_stderr", "import sys\nwhile True:\n    sys.stderr.write('E' * 10000)\n", _output_capped
    ),
    HostileCase("huge_single_line", "import sys\nsys.stdout.write('x' * (64 * 2**20))\n", _output_capped),
    HostileCase(
        "binary_junk",
        "import os, sys\nsys.stdout.buffer.write(os.urandom(200000))\nsys.stdout.flush()\nraise SystemExit(1)\n",
        _clean_text,
    ),
    HostileCase(
        "unicode_junk",
        "import sys\nsys.stdout.buffer.write('\\u202e\\u200b\\U0001f600 \\ud800'.encode('utf-8', 'surrogatepass'))\n"
        "print('\\x00\\x1b[2J\\x07' * 100)\nprint(''.join(chr(i) for i in range(0x2500, 0x2600)))\nraise SystemExit(2)\n",
        _clean_text,
    ),
    # --- filesystem
    HostileCase(
        "overwrite_canary",
        "open('$canary', 'w').write('pwned')\nprint('WROTE')\n",
        _not_printed("WROTE"),
    ),
    HostileCase(
        "delete_and_chmod_canary",
        "import os\ntry:\n    os.chmod('$canary', 0o777)\nexcept OSError as e:\n    print('chmod', e)\n"
        "os.remove('$canary')\nprint('DELETED')\n",
        _not_printed("DELETED"),
    ),
    HostileCase(
        "write_into_host_dir",
        "open('$canary_dir/pwned.txt', 'w').write('x')\nprint('WROTE')\n",
        _not_printed("WROTE"),
    ),
    HostileCase(
        "write_host_tmp",
        "open('$host_tmp_marker', 'w').write('x')\nprint('wrote the marker')\n",
        _always,
        expect_error=False,
        limitation={"subprocess": "the host's /tmp is world-writable and shared with the subprocess backend"},
    ),
    HostileCase(
        "write_system_dirs",
        "import os, sys\nok = []\nfor p in ['/etc/turngym-pwned', '/usr/turngym-pwned', os.path.dirname(sys.executable) + "
        "'/turngym-pwned']:\n    try:\n        open(p, 'w').write('x')\n        ok.append(p)\n    except OSError:\n"
        "        pass\nprint('WROTE' if ok else 'denied', ok)\nraise SystemExit(0 if ok else 1)\n",
        _not_printed("WROTE"),
    ),
    # --- secrets
    HostileCase("read_shadow", "print(open('/etc/shadow').read())\n", _no_shadow),
    HostileCase("read_host_secret_file", "print(open('$secret_file').read())\n", _no_secret),
    HostileCase(
        "env_secret",
        "import os\nprint(os.environ.get('$secret_env', 'absent'))\nprint(dict(os.environ))\n"
        "raise SystemExit(0 if '$secret_env' not in os.environ else 3)\n",
        _both(_no_secret, _exit_code(0)),
        expect_error=False,
    ),
    HostileCase(
        "proc_environ_scan",
        "import os\nfound = []\nfor pid in os.listdir('/proc'):\n    if pid.isdigit():\n        try:\n"
        "            found.append(open(f'/proc/{pid}/environ', 'rb').read().decode('latin-1'))\n        except OSError:\n"
        "            pass\nprint('\\n'.join(found))\n",
        _no_secret,
        expect_error=False,
    ),
    HostileCase(
        "shell_env_secret",
        "import os\nos.execv('/bin/sh', ['sh', '-c', 'echo \"[$$$secret_env]\"; env'])\n",
        _no_secret,
        expect_error=False,
    ),
    HostileCase(
        "see_host_processes",
        "import os\nprint('VISIBLE' if os.path.exists('/proc/$host_pid') else 'hidden')\n",
        _host_pid_hidden,
        expect_error=False,
        limitation={"subprocess": "no PID namespace: host processes are visible in /proc (not signalable)"},
    ),
    HostileCase("setuid_root", "import os\nos.setuid(0)\nprint('ROOT')\n", _not_printed("ROOT")),
    # --- hardening: daemons that shed the sweep's markers, symlink races, memory outside the heap, host sockets
    HostileCase(
        "daemon_empty_env_execve",
        "import os, sys\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
        "        os.execve('/bin/sleep', ['sleep', '1000'], {})\n    os._exit(0)\nos.wait()\nprint('left a daemon')\n",
        _always,
        expect_error=False,
    ),
    HostileCase(
        "symlink_swap_daemon",
        "import os, sys\nBODY = (\n    'import glob, os, time\\nend = time.time() + 5\\nwhile time.time() < end:\\n'\n"
        '    \'    for d in glob.glob("/tmp/turngym-*") + glob.glob("/proc/*/root/tmp/turngym-*"):\\n\'\n'
        '    \'        try:\\n            os.symlink("$canary", d + "/.l")\\n\'\n'
        '    \'            os.rename(d + "/.l", d + "/main.py")\\n        except OSError:\\n            pass\\n\'\n)\n'
        "if os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
        "        os.execve(sys.executable, ['python3', '-c', BODY], {})\n    os._exit(0)\nos.wait()\nprint('swapper left')\n",
        _always,
        expect_error=False,
    ),
    HostileCase(
        "dev_shm_memory",
        "for i in range(64):\n    open(f'/dev/shm/hold{i}', 'wb').write(b'x' * (16 * 2**20))\nprint('HELD_ALL')\n",
        _not_printed("HELD_ALL"),
    ),
    HostileCase(
        "memfd_memory",
        "import os\nkeep = []\nfor i in range(128):\n    fd = os.memfd_create('m')\n"
        "    os.write(fd, b'x' * (8 * 2**20))\n    keep.append(fd)\nprint('HELD_ALL')\n",
        _not_printed("HELD_ALL"),
    ),
    HostileCase(
        "nested_userns_tmpfs_memory",
        "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\nuid, gid = os.getuid(), os.getgid()\n"
        "assert libc.unshare(0x10000000 | 0x00020000) == 0, os.strerror(ctypes.get_errno())\n"
        "open('/proc/self/setgroups', 'w').write('deny')\nopen('/proc/self/uid_map', 'w').write(f'0 {uid} 1')\n"
        "open('/proc/self/gid_map', 'w').write(f'0 {gid} 1')\nos.makedirs('/tmp/nested', exist_ok=True)\n"
        "assert libc.mount(b'none', b'/tmp/nested', b'tmpfs', 0, b'mode=1777') == 0, os.strerror(ctypes.get_errno())\n"
        "for i in range(64):\n    open(f'/tmp/nested/hold{i}', 'wb').write(b'x' * (16 * 2**20))\nprint('HELD_ALL')\n",
        _not_printed("HELD_ALL"),
    ),
    HostileCase(
        "host_unix_sockets",
        "import os, socket, stat\nhit = []\nfor top in ('/var/tmp', '/tmp', '/run', '/var/run', '/dev/shm', '/home'):\n"
        "    for root, dirs, files in os.walk(top):\n        for n in files:\n            p = os.path.join(root, n)\n"
        "            try:\n                if stat.S_ISSOCK(os.lstat(p).st_mode):\n"
        "                    s = socket.socket(socket.AF_UNIX)\n                    s.settimeout(0.5)\n"
        "                    s.connect(p)\n                    hit.append(p)\n            except OSError:\n"
        "                pass\nprint('CONNECTED' if hit else 'none reachable', hit)\nraise SystemExit(1)\n",
        _not_printed("CONNECTED"),
        limitation={
            "subprocess": _NO_NET + " (host unix sockets outside /tmp, /var/tmp, /dev/shm are reachable)"
        },
    ),
    # --- network
    HostileCase(
        "loopback_connect",
        "import socket\ns = socket.create_connection(('127.0.0.1', $port), timeout=1)\nprint('CONNECTED', s.recv(100))\n",
        _no_connection,
        limitation={"subprocess": _NO_NET},
    ),
    HostileCase(
        "network_interfaces",
        "import socket\nprint(','.join(n for _, n in socket.if_nameindex()))\n",
        _only_lo,
        expect_error=False,
        limitation={"subprocess": _NO_NET},
    ),
]


# ----------------------------------------------------------------------------- running


@dataclass
class CaseOutcome:
    """How one case went on one backend."""

    backend: str
    name: str
    contained: bool
    detail: str
    duration_s: float
    result: SandboxResult | None
    known_limitation: str | None = None


def run_case(
    sandbox: Sandbox,
    case: HostileCase,
    ctx: HostContext,
    *,
    timeout_s: float = 2.0,
    margin_s: float = 2.5,
) -> CaseOutcome:
    """Run one case and apply every containment check (see the module docstring)."""
    t0 = time.monotonic()
    problems: list[str] = []
    result: SandboxResult | None = None
    try:
        result = sandbox.run(case.source(ctx), timeout_s=timeout_s)
    except Exception as e:  # a sandbox must not raise on hostile code  # noqa: BLE001
        problems.append(f"run raised {type(e).__name__}: {e}")
    dt = time.monotonic() - t0
    if dt > timeout_s + margin_s:
        problems.append(f"took {dt:.2f} s (> {timeout_s + margin_s:.1f} s)")
    if result is not None:
        ok, detail = case.check(result, ctx)
        if not ok:
            problems.append(detail or "check failed")
        if case.expect_error:
            if result.ok:
                problems.append("expected a failure, the run reported success")
            elif not (result.error_message(timeout_s) or "").strip():
                problems.append("no error message")
    same, detail = ctx.host_unchanged()
    if not same:
        problems.append(detail)
    ctx.restore()
    deadline = time.monotonic() + 2.0
    left = ctx.leftover_processes()
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = ctx.leftover_processes()
    if left:
        problems.append(f"{len(left)} sandbox processes outlived the call")
    try:
        nxt = sandbox.run("print(6 * 7)", timeout_s=10.0)
        if nxt.stdout.strip() != "42":
            problems.append(f"next call broken: exit {nxt.exit_code}, {nxt.stderr.strip()[-200:]!r}")
    except Exception as e:  # noqa: BLE001
        problems.append(f"next call raised {type(e).__name__}: {e}")
    return CaseOutcome(
        backend=sandbox.kind,
        name=case.name,
        contained=not problems,
        detail="; ".join(problems),
        duration_s=dt,
        result=result,
        known_limitation=case.limitation.get(sandbox.kind),
    )


def run_suite(
    sandbox: Sandbox,
    ctx: HostContext,
    cases: list[HostileCase] | None = None,
    *,
    timeout_s: float = 2.0,
    margin_s: float = 2.5,
) -> list[CaseOutcome]:
    """Run every case against one sandbox."""
    return [
        run_case(sandbox, c, ctx, timeout_s=timeout_s, margin_s=margin_s) for c in (cases or HOSTILE_CASES)
    ]


def format_table(outcomes: dict[str, list[CaseOutcome]]) -> str:
    """Markdown table: backend | contained / total | known limitations | total time, then the misses."""
    lines = [
        "| backend | contained / total | not contained (documented limitation) | total time (s) |",
        "| --- | --- | --- | --- |",
    ]
    for backend, outs in outcomes.items():
        if not outs:
            continue
        n_ok = sum(o.contained for o in outs)
        lim = [o.name for o in outs if not o.contained and o.known_limitation]
        total = sum(o.duration_s for o in outs)
        lines.append(f"| {backend} | {n_ok} / {len(outs)} | {', '.join(lim) or '-'} | {total:.1f} |")
    misses = [o for outs in outcomes.values() for o in outs if not o.contained]
    if misses:
        lines.append("")
        for o in misses:
            tag = "documented limitation" if o.known_limitation else "NOT CONTAINED"
            lines.append(f"- {o.backend} / {o.name} ({tag}): {o.known_limitation or o.detail}")
    return "\n".join(lines)
