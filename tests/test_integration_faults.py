"""Real stack, faults injected by hand: a CLI SIGKILLed mid-run leaves no process and resumes;
an engine killed mid-evaluation fails the evaluation loudly, with nothing saved to reuse."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]


def cli(log: Path, *args: str) -> subprocess.Popen:
    """`python -m ARGS`, its output in `log` (a pipe nobody reads would fill and stall it)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    with open(log, "w") as f:
        return subprocess.Popen([sys.executable, "-m", *args], cwd=REPO, env=env, text=True,
                                stdout=f, stderr=subprocess.STDOUT)


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(1.0)


def gone(pids: list[int]) -> bool:
    def dead(pid: int) -> bool:
        try:
            return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    return all(dead(p) for p in pids)


def family(pid: int) -> list[int]:
    try:
        return [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def steps_logged(out: Path) -> list[int]:
    path = out / "metrics.jsonl"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line)["step"])
        except (ValueError, KeyError):
            pass  # a torn last line
    return rows


def test_a_sigkilled_run_leaves_no_process_and_resumes_once_each(vllm_server, tmp_path):
    out = tmp_path / "run"
    argv = ["distill.run", "--program", "draft_verify", "--batch-size", "2", "--bank-size",
            "150", "--eval-limit", "0", "--checkpoint-every", "1", "--max-new-tokens", "12",
            "--steps", "3", "--out", str(out)]
    first_log = tmp_path / "first.log"
    run = cli(first_log, *argv)
    try:
        wait_for(lambda: steps_logged(out)[:1] == [1] or run.poll() is not None, 900,
                 "step 1 of the run")
        assert run.poll() is None, first_log.read_text()[-2000:]
        children = family(run.pid)  # the vLLM server, its engine, the watchdog
        assert len(children) >= 3
        run.send_signal(signal.SIGKILL)
        run.wait(timeout=30)
        wait_for(lambda: gone(children), 60, "the killed run's server and watchdog to go")
    finally:
        run.kill()
    # the same command resumes where the last committed checkpoint left it (on the shared
    # server this time: --api-base may change on resume); every step is logged once
    again_log = tmp_path / "again.log"
    again = cli(again_log, *argv, "--api-base", vllm_server.base_url)
    assert again.wait(timeout=900) == 0, again_log.read_text()[-2000:]
    assert steps_logged(out) == [1, 2, 3]
    ckpts = [json.loads(line)["step"] for line in (out / "checkpoints.jsonl").read_text()
             .splitlines()]
    assert ckpts == sorted(set(ckpts)) and ckpts[-1] == 3
    assert not list((out / "checkpoints").glob(".tmp_*"))


def test_an_engine_killed_mid_evaluation_fails_it_with_nothing_saved(tmp_path):
    out = tmp_path / "eval"
    run_log = tmp_path / "evals.log"
    run = cli(run_log, "evals.run", "--task", "banking77", "--program", "none", "--limit", "300",
              "--concurrency", "4", "--out", str(out))
    try:
        log = out / "vllm.log"
        wait_for(lambda: (log.exists() and "Application startup complete" in log.read_text())
                 or run.poll() is not None, 600, "the evaluation's server")
        time.sleep(5)  # requests in flight
        engines = [p for p in psutil.Process(run.pid).children(recursive=True)
                   if "EngineCore" in " ".join(p.cmdline()) or p.name().startswith("VLLM")]
        assert engines, [p.cmdline() for p in psutil.Process(run.pid).children(recursive=True)]
        children = family(run.pid)
        for engine in engines:
            engine.send_signal(signal.SIGKILL)
        run.wait(timeout=300)
    finally:
        run.kill()
    err = run_log.read_text()
    assert run.returncode == 1, err[-2000:]
    assert "error:" in err and "Traceback" not in err
    assert not (out / "results.json").exists()  # nothing a rerun could mistake for a result
    wait_for(lambda: gone(children), 60, "the dead server's processes to go")
