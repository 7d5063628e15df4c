"""Serve a (trained) model through an OpenAI-compatible endpoint.

    python -m distill.serve --model smollm2-135m-instruct --adapter runs/demo/final_adapter
    python -m distill.serve --model smollm2-135m-instruct --adapter runs/demo/final_adapter --merge

Without --merge the base model is served as `--name`'s base and the adapter is
hot-loaded under its own model name (`--adapter-name`, default "scaffold"):
requests with "model": "scaffold" use it, requests with the base name do not.
With --merge the adapter is merged into the base weights once (peft
merge_and_unload) into a folder under the cache and that folder is served
under `--name`. Runs until Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from scaffold.merge import merge_adapter
from scaffold.server import PolicyServer, ServerConfig, install_sigterm_handler


def curl_example(base_url: str, model: str) -> str:
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "Hello!"}],
                       "max_tokens": 32})
    return (f"curl {base_url}/chat/completions -H 'Content-Type: application/json' "
            f"-d '{body}'")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m-instruct", help="bundled name, HF folder or hub id")
    p.add_argument("--adapter", help="peft adapter folder (e.g. RUN/final_adapter)")
    p.add_argument("--adapter-name", default="scaffold", help="model name requests use for the adapter")
    p.add_argument("--merge", action="store_true", help="merge the adapter into the base and serve that")
    p.add_argument("--name", default=None, help="served model name of the base (default: --model)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-model-len", type=int, default=4096)
    p.add_argument("--log", default=None, help="server log file (default: a temp file)")
    args = p.parse_args(argv)
    install_sigterm_handler()

    model = args.model
    if args.adapter and args.merge:
        model = str(merge_adapter(args.model, args.adapter))
    name = args.name or Path(args.model).name
    cfg = ServerConfig(model=model, served_name=name, host=args.host, port=args.port,
                       max_model_len=args.max_model_len, log_path=args.log,
                       enable_lora=bool(args.adapter and not args.merge))
    print(f"starting vLLM for {model} (log: {cfg.log_path or 'temp file'}) ...", flush=True)
    with PolicyServer(cfg) as server:
        served = name
        if args.adapter and not args.merge:
            server.load_adapter(args.adapter_name, args.adapter)
            served = args.adapter_name
        print(f"\nServing at {server.base_url}  (models: {name}"
              f"{', ' + args.adapter_name if served != name else ''})")
        print(f"Log: {server.log_path}\nTry:\n  {curl_example(server.base_url, served)}\n"
              "Ctrl-C to stop.", flush=True)
        try:
            while server.proc is not None and server.proc.poll() is None:
                time.sleep(1.0)
            print(f"server exited; last log lines:\n{server.log_tail()}")
        except KeyboardInterrupt:
            print("\nstopping ...")


if __name__ == "__main__":
    main()
