"""Stop a server's process group when the process that owns it dies, however it dies.

    python scaffold/watchdog.py OWNER_PID PGID [GRACE_S]

A managed vLLM server runs in its own process group (so stopping it takes the engine
workers too), which also means nothing stops it when its owner is SIGKILLed or loses its
terminal: atexit and signal handlers never run. A `distill.run` killed at step 2 left 4
processes holding 5.1 GB. This watchdog, started beside each server in a session of its
own, polls its parent every `POLL_S`: when the owner is gone (it is re-parented), it sends
the group SIGTERM, then SIGKILL after `GRACE_S`, and exits. It also exits once the group
is gone, so a server stopped the normal way leaves no watchdog behind. A server process
left stopped (SIGSTOP) for `STOPPED_S` is killed too, with a line in the server's log, so
that the run fails within seconds, not after its requests' 600 s timeouts.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

POLL_S = 0.5  # the owner's death is noticed within this, the group gone within GRACE_S more
# A server process stopped (SIGSTOP, state T) this long is killed: its requests would
# otherwise hang until their 600 s timeouts, retried (an evaluation went on 420 s past it).
STOPPED_S = 30.0


def group_states(pgid: int) -> dict[int, str] | None:
    """{pid: state letter} of group `pgid`'s processes from /proc (R, S, T for stopped, Z
    for a zombie, ...), or None where there is no /proc."""
    if not os.path.isdir("/proc"):
        return None
    states = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()  # state, ppid, pgrp, ...
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid:
            states[int(pid)] = fields[0]
    return states


def group_alive(pgid: int) -> bool:
    """Whether any process of group `pgid` still runs (zombies count as gone: the init of
    a container may never reap them)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    states = group_states(pgid)
    return states is None or any(state != "Z" for state in states.values())


def stop_group(pgid: int, grace_s: float) -> None:
    """SIGTERM the group, then SIGKILL whatever is left after `grace_s`."""
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not group_alive(pgid):
                return
            time.sleep(0.1)


def watch(owner_pid: int, pgid: int, grace_s: float = 10.0, stopped_s: float = STOPPED_S,
          log: str | None = None) -> None:
    stopped_since = None
    while True:
        states = group_states(pgid)  # one /proc scan a poll: liveness and stopped state
        if states is None:
            if not group_alive(pgid):
                return
            states = {}
        elif all(state == "Z" for state in states.values()):
            return  # the group is gone (zombies count as gone)
        if os.getppid() != owner_pid:  # the owner died: we were re-parented
            stop_group(pgid, grace_s)
            return
        stopped = sorted(pid for pid, state in states.items() if state == "T")
        now = time.monotonic()
        stopped_since = (stopped_since or now) if stopped else None
        if stopped_since is not None and now - stopped_since >= stopped_s:
            # requests to it would wait out their 600 s timeouts, retried: end it so that
            # they fail now, and say why in the server's log (the owner's error shows its tail)
            if log:
                with open(log, "a") as f:
                    f.write(f"scaffold watchdog: server process(es) {stopped} stopped (SIGSTOP)"
                            f" for {stopped_s:.0f} s; killed the server\n")
            try:
                os.killpg(pgid, signal.SIGKILL)  # a stopped process takes SIGKILL, not TERM
            except ProcessLookupError:
                pass
            return
        time.sleep(POLL_S)


def spawn(pgid: int, grace_s: float = 10.0, stopped_s: float = STOPPED_S,
          log: str | None = None) -> subprocess.Popen:
    """Start a watchdog for process group `pgid`, owned by this process. It runs in a
    session of its own, so a signal sent to the owner's group (Ctrl-C, SIGHUP) reaches the
    owner, whose own handlers stop the server, and not the watchdog."""
    # by file path (it needs only the standard library, not scaffold on sys.path), isolated
    # (-I), so scaffold/types.py beside it cannot shadow the standard library's `types`
    return subprocess.Popen(
        [sys.executable, "-I", os.path.abspath(__file__), str(os.getpid()), str(pgid),
         str(grace_s), str(stopped_s), log or ""],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True, close_fds=True)


if __name__ == "__main__":
    owner, group, grace, stopped, log_path = sys.argv[1:6]
    watch(int(owner), int(group), float(grace), float(stopped), log_path or None)
