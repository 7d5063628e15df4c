"""A stand-in for vLLM's OpenAI server, for PolicyServer unit tests (never used by users).

    python tests/fake_vllm_server.py [--ready-after S] [--exit-code N] [--child] --port P

--exit-code N: print an error and exit with N before serving (a model that will not load).
--ready-after S: answer /v1/models with 503 for S seconds (slow startup).
--child: spawn a sleeping child in the same process group (like vLLM's engine
workers), whose pid is written to the log, to check that stop() reaps it.
"""

import argparse
import json
import subprocess
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

p = argparse.ArgumentParser()
p.add_argument("--port", type=int, required=True)
p.add_argument("--ready-after", type=float, default=0.0)
p.add_argument("--exit-code", type=int, default=None)
p.add_argument("--child", action="store_true")
args = p.parse_args()

print("fake vllm starting", flush=True)
if args.exit_code is not None:
    print("ValueError: model weights could not be loaded (fake)", flush=True)
    sys.exit(args.exit_code)
if args.child:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    print(f"CHILD_PID={child.pid}", flush=True)

t0 = time.monotonic()
models = ["policy"]


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *a):  # keep the log small
        pass

    def _send(self, code: int, obj: object) -> None:
        data = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if time.monotonic() - t0 < args.ready_after:
            return self._send(503, {"error": "starting"})
        if self.path == "/v1/models":
            return self._send(200, {"data": [{"id": m} for m in models]})
        self._send(404, {"error": self.path})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path == "/v1/load_lora_adapter":
            models.append(body["lora_name"])
            return self._send(200, {})
        if self.path == "/v1/unload_lora_adapter":
            if body["lora_name"] not in models:
                return self._send(404, {"error": "no such adapter"})
            models.remove(body["lora_name"])
            return self._send(200, {})
        if self.path == "/v1/completions":
            ids = [int(t) + 1 for t in body["prompt"][-3:]]
            return self._send(200, {"choices": [
                {"index": i, "text": "x", "token_ids": ids,
                 "logprobs": {"token_logprobs": [-0.5] * len(ids)}, "finish_reason": "stop"}
                for i in range(body.get("n", 1))]})
        self._send(404, {"error": self.path})


ThreadingHTTPServer(("127.0.0.1", args.port), Handler).serve_forever()
