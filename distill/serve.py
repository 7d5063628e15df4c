"""Serve a (trained) model through an OpenAI-compatible endpoint.

    python -m distill.serve --model smollm2-135m-instruct --adapter runs/demo/final_adapter
    python -m distill.serve --model smollm2-135m-instruct --adapter runs/demo/final_adapter --merge

Without --merge the base model is served as `--name`'s base and the adapter is
loaded at start under its own model name (`--adapter-name`, default "scaffold"):
requests with "model": "scaffold" use it, requests with the base name do not.
With --merge the adapter is merged into the base weights once (peft
merge_and_unload) into a folder under the cache and that folder is served
under `--name`. Runs until Ctrl-C.

The server offers no endpoint beyond inference (no runtime adapter loading, no
dev-mode weight reload). It binds to 127.0.0.1; another --host needs --api-key
(or VLLM_API_KEY), which clients send as `Authorization: Bearer KEY`.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from scaffold.cli import run_cli
from scaffold.merge import merge_adapter
from scaffold.server import PolicyServer, ServerConfig, install_sigterm_handler, is_loopback


def curl_example(base_url: str, model: str, api_key: str | None = None) -> str:
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "Hello!"}],
                       "max_tokens": 32})
    auth = " -H 'Authorization: Bearer $VLLM_API_KEY'" if api_key else ""
    return (f"curl {base_url}/chat/completions -H 'Content-Type: application/json'{auth} "
            f"-d '{body}'")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m-instruct", help="bundled name, HF folder or hub id")
    p.add_argument("--adapter", help="peft adapter folder (e.g. RUN/final_adapter)")
    p.add_argument("--adapter-name", default="scaffold", help="model name requests use for the adapter")
    p.add_argument("--merge", action="store_true", help="merge the adapter into the base and serve that")
    p.add_argument("--name", default=None, help="served model name of the base (default: --model)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind; beyond loopback it needs --api-key")
    p.add_argument("--port", type=int, default=8000, help="port to bind (refused when in use)")
    p.add_argument("--api-key", default=os.environ.get("VLLM_API_KEY"),
                   help="key clients must send as 'Authorization: Bearer KEY' (default: "
                        "$VLLM_API_KEY; none on loopback)")
    p.add_argument("--max-model-len", type=int, default=4096)
    p.add_argument("--log", default=None, help="server log file (default: a temp file)")
    args = p.parse_args(argv)
    if not is_loopback(args.host) and not args.api_key:
        p.error(f"--host {args.host} exposes the server beyond this machine: pass --api-key "
                "KEY (or set VLLM_API_KEY)")
    if args.adapter and not (Path(args.adapter) / "adapter_config.json").exists():
        p.error(f"--adapter {args.adapter}: no adapter_config.json there (not a peft folder; "
                "a run writes one to RUN/final_adapter)")
    install_sigterm_handler()

    model = args.model
    if args.adapter and args.merge:
        model = str(merge_adapter(args.model, args.adapter))
    name = args.name or Path(args.model).name
    lora = bool(args.adapter and not args.merge)
    cfg = ServerConfig(model=model, served_name=name, host=args.host, port=args.port,
                       max_model_len=args.max_model_len, log_path=args.log, enable_lora=lora,
                       api_key=args.api_key, dev_mode=False, runtime_lora=False,
                       extra_args=["--lora-modules", f"{args.adapter_name}="
                                   f"{Path(args.adapter).resolve()}"] if lora else [])
    print(f"starting vLLM for {model} (log: {cfg.log_path or 'temp file'}) ...", flush=True)
    with PolicyServer(cfg) as server:
        served = args.adapter_name if lora else name
        print(f"\nServing at {server.base_url}  (models: {name}"
              f"{', ' + args.adapter_name if served != name else ''})")
        print(f"Log: {server.log_path}\nTry:\n  {curl_example(server.base_url, served, args.api_key)}\n"
              "Ctrl-C to stop.", flush=True)
        try:
            while server.proc is not None and server.proc.poll() is None:
                time.sleep(1.0)
            print(f"server exited; last log lines:\n{server.log_tail()}")
        except KeyboardInterrupt:
            print("\nstopping ...")


if __name__ == "__main__":
    run_cli(main)
