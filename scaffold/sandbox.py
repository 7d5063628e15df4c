"""Run a short model-written Python program and read what it prints, with limits.

    result = run_python("print(3 * 4)")
    result.ok, result.stdout          # True, "12\\n"

For harnesses whose model writes a program (program-of-thought): the program runs in a
fresh `python -I` subprocess in a temporary folder that is deleted afterwards, under

- CPU-time, address-space and file-size limits (`resource`), and a wall-clock timeout
  after which the whole process group is killed;
- a PEP 578 audit hook installed before the program's first line, which refuses opening
  files for writing outside that folder, sockets, new processes (`subprocess`, `os.system`,
  `os.fork`, `os.exec*`, `os.spawn*`), loading native libraries (`ctypes`), and removing or
  renaming files outside the folder; a refusal is a `PermissionError` in the program;
- no network interface at all where the kernel lets an unprivileged user create a network
  namespace (`unshare --net --map-root-user`, checked once; `NETWORK_ISOLATED` says whether).

This keeps a model's honest mistakes (an endless loop, a huge list, a stray file write)
from harming the run or the machine. It is not a boundary against code written to escape:
Python's audit hooks can be evaded from inside the process. Run untrusted code from
strangers in a container or VM.
"""

from __future__ import annotations

import functools
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

_GUARD = r'''
import os, sys
_ROOT = os.path.realpath(sys.argv[1])
_WRITE = ("w", "a", "x", "+")
_DENIED = {"socket.__new__", "socket.connect", "socket.bind", "socket.getaddrinfo",
           "subprocess.Popen", "os.system", "os.fork", "os.forkpty", "os.posix_spawn",
           "os.exec", "os.spawn", "os.kill", "os.killpg", "ctypes.dlopen", "ctypes.cdata",
           "_posixsubprocess.fork_exec", "pty.spawn", "shutil.rmtree"}

def _inside(path):
    try:
        real = os.path.realpath(os.fsdecode(path))
    except (TypeError, ValueError):
        return False
    return real == _ROOT or real.startswith(_ROOT + os.sep)

def _guard(event, args):
    if event in _DENIED or event.startswith(("os.exec", "os.spawn", "os.posix_spawn")):
        raise PermissionError(f"sandbox: {event} is not allowed")
    if event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
        mode, flags = args[1] if len(args) > 1 else "r", args[2] if len(args) > 2 else 0
        writes = (isinstance(mode, str) and any(c in mode for c in _WRITE)) or \
            bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC))
        if writes and not _inside(args[0]):
            raise PermissionError(f"sandbox: writing {args[0]!r} is not allowed")
    if event in ("os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.chmod", "os.chown",
                 "os.symlink", "os.link", "os.truncate", "os.utime") and args and \
            isinstance(args[0], (str, bytes, os.PathLike)) and not _inside(args[0]):
        raise PermissionError(f"sandbox: {event} on {args[0]!r} is not allowed")

sys.addaudithook(_guard)
del _guard
with open(os.path.join(_ROOT, "program.py"), encoding="utf-8") as _f:
    _source = _f.read()
exec(compile(_source, "program.py", "exec"), {"__name__": "__main__"})
'''


@dataclass(frozen=True)
class SandboxResult:
    """What a program printed and how it ended. `ok`: exited 0 within the limits."""

    stdout: str
    stderr: str
    returncode: int | None  # None: killed at the wall-clock timeout
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out

    @property
    def error(self) -> str:
        """One line for a failed run (a trace or a fallback note), '' when it worked."""
        if self.timed_out:
            return "timed out"
        if self.returncode == 0:
            return ""
        if self.returncode is not None and self.returncode < 0:
            name = signal.Signals(-self.returncode).name
            why = " (the CPU-time limit)" if name in ("SIGXCPU", "SIGKILL") else ""
            return f"killed by {name}{why}"
        lines = [line for line in self.stderr.strip().splitlines() if line.strip()]
        return lines[-1][:200] if lines else f"exit code {self.returncode}"


@functools.cache
def network_isolation() -> bool:
    """Whether `unshare --net --map-root-user` works here (unprivileged network namespaces)."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return False
    try:
        return subprocess.run([unshare, "--net", "--map-root-user", "true"], timeout=10,
                              capture_output=True).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def run_python(source: str, timeout_s: float = 10.0, cpu_s: int = 5, memory_mb: int = 1024,
               max_output_chars: int = 4000) -> SandboxResult:
    """Run `source` as a Python program under the limits above; never raises for what the
    program does (a crash, a refusal, a timeout) — that is in the result."""
    folder = Path(tempfile.mkdtemp(prefix="scaffold-sandbox-"))
    try:
        (folder / "program.py").write_text(source, encoding="utf-8")
        (folder / "guard.py").write_text(_GUARD, encoding="utf-8")
        cmd = [sys.executable, "-I", "-B", str(folder / "guard.py"), str(folder)]
        if network_isolation():
            cmd = [shutil.which("unshare") or "unshare", "--net", "--map-root-user", *cmd]

        def limits() -> None:
            resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))  # SIGXCPU, then KILL
            memory = memory_mb * 2**20
            resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
            resource.setrlimit(resource.RLIMIT_FSIZE, (2**20, 2**20))  # 1 MiB per file
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONHASHSEED": "0",
               "HOME": str(folder), "TMPDIR": str(folder), "OMP_NUM_THREADS": "1"}
        proc = subprocess.Popen(cmd, cwd=folder, env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                errors="replace", preexec_fn=limits, start_new_session=True)
        try:
            out, err = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            return SandboxResult(out[:max_output_chars], err[-max_output_chars:], None, True)
        return SandboxResult(out[:max_output_chars], err[-max_output_chars:], proc.returncode)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
