"""Shared fixtures. Integration tests (marked `integration`) run on the real stack:
the bundled SmolLM2 converted by the registry and a real vLLM server, started
once per session and shared."""

import os

import psutil
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def smollm2_path() -> str:
    from scaffold.registry import resolve

    return resolve("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def vllm_server(smollm2_path, tmp_path_factory):
    from scaffold.server import PolicyServer, ServerConfig

    log = tmp_path_factory.mktemp("vllm") / "server.log"
    server = PolicyServer(ServerConfig(model=smollm2_path, log_path=str(log), max_model_len=4096))
    with server:
        proc = psutil.Process(server.pid)
        family = [proc, *proc.children(recursive=True)]
        assert len(family) >= 2  # API server + engine core
        yield server
    # Teardown doubles as the "stop leaves no process" check (one vLLM start per session:
    # a second server beside the first and a trainer runs this 2-core, 24 GiB box short).
    _, alive = psutil.wait_procs(family, timeout=30)
    assert not [p for p in alive if _running(p)], f"vLLM processes left after stop(): {alive}"


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
