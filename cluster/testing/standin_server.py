"""Stand-in SGLang / vLLM servers for tests and rehearsals. Never used against real hosts.

Standard library only, and importable *by file path* (the ``sglang`` shim package under
``standins/`` and ``bin/vllm`` load this file directly), so a test host needs nothing but
a ``python3``. It is launched exactly like the real thing:

    python3 -m sglang.launch_server --model-path M --disaggregation-mode prefill \\
        --host H --port P --tp-size N --disaggregation-bootstrap-port 8998 [...]
    sglang serve --model-path M ...
    vllm serve M --host H --port P --kv-transfer-config '{"kv_connector":...}' [...]

with ``cluster/testing/standins`` on PYTHONPATH (for ``-m sglang.launch_server``) or
``cluster/testing/bin`` on PATH (``vllm``, ``sglang``). Unknown flags are accepted.

Behaviour (knobs are environment variables, read at start):

* binds ``--host:--port``; ``/health`` answers 503 while "loading", then 200.
  ``STANDIN_LOAD_SECONDS`` (default 2) sets the loading time; ``STANDIN_BIND_LATE=1``
  keeps the port closed while loading (the real SGLang/vLLM bind after loading;
  default 0 for sglang so the 503 phase is visible, 1 for vllm).
* logs the real milestone lines (``Load weight begin``, ``Uvicorn running on
  http://H:P``, ``The server is fired up and ready to roll!`` / vLLM's
  ``Application startup complete.``) and one access-log line per request.
* spawns children whose command line starts with the real process titles:
  ``sglang::scheduler_TP<n>`` (local TP ranks, at most 8) and ``sglang::detokenizer``
  (rank 0); vLLM ``VLLM::EngineCore`` and ``VLLM::Worker_TP<n>``. Titles are set with
  setproctitle when importable, else by exec'ing python with argv[0] = the title.
* ``STANDIN_STUBBORN``: ``1`` = every child ignores SIGTERM, ``0`` = none, unset = one
  (the first scheduler / worker). The main process forwards SIGTERM to its children and
  exits, so a stubborn child survives until SIGKILL — like a real leftover scheduler.
  ``STANDIN_ESCAPE=1``: one child leaves the process group (``setsid``), so only a
  command-line sweep finds it. Children exit on their own after
  ``STANDIN_CHILD_LIFETIME`` seconds (default 3600) so a test can never leak forever.
* records every POST to ``/generate``, ``/v1/completions``, ``/v1/chat/completions``
  as one JSON line in ``STANDIN_REQUEST_LOG``, default ``<log dir>/requests-<host>-<port>.jsonl``
  where the log dir is the directory of the file stdout is redirected to (else
  ``STANDIN_RUN_DIR``, else the working directory). Answers like SGLang's ``/generate``
  (``{"text", "meta_info"}``) and the OpenAI routes; ``"stream": true`` gets SSE.
* answers ``/get_model_info``, ``/model_info``, ``/get_server_info``, ``/server_info``,
  ``/v1/models``, ``/ping``, ``/get_load``, ``/flush_cache`` (vLLM: ``/version``).
* ``STANDIN_DIE_AFTER=S``: after S seconds print a traceback-like error and exit 1.
* prefill, node-rank 0: also serves the bootstrap port (``/health``, ``/route``).
  Node-rank >= 1 (sglang): no API, only a dummy ``/health`` 200 on ``--port`` once
  "loaded"; vLLM ``--headless``: no HTTP at all. Multi-node rank 0 holds the
  ``--dist-init-addr`` port (scheduler TP0); vLLM's EngineCore holds the NIXL
  side-channel port (``VLLM_NIXL_SIDE_CHANNEL_HOST/PORT``).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

MAX_CHILDREN = 8
GENERATE_PATHS = ("/generate", "/v1/completions", "/v1/chat/completions")


@dataclass
class Options:
    """What one stand-in process does (from the real CLI plus STANDIN_* env)."""

    engine: str  # "sglang" | "vllm"
    model: str
    role: str | None  # "prefill" | "decode" | None (not PD) | "both"
    host: str = "127.0.0.1"
    port: int = 30000
    tp_size: int = 1
    nnodes: int = 1
    node_rank: int = 0
    dist_init_addr: str | None = None
    bootstrap_port: int | None = None
    served_model_name: str | None = None
    headless: bool = False
    side_channel: tuple[str, int] | None = None
    ignored: list[str] = field(default_factory=list)
    load_seconds: float = 2.0
    die_after: float | None = None
    stubborn: str = ""  # "1" all, "0" none, "" first child only
    escape: bool = False
    bind_late: bool = False
    child_lifetime: float = 3600.0
    request_log: str | None = None

    @property
    def title_prefix(self) -> str:
        return "sglang" if self.engine == "sglang" else "vllm"

    @property
    def model_name(self) -> str:
        return self.served_model_name or self.model


# --- command lines ---------------------------------------------------------------------------


def sglang_main(argv: list[str] | None = None) -> int:
    """Entry point of ``python3 -m sglang.launch_server`` (and ``sglang serve``)."""
    return run(parse_sglang(sys.argv[1:] if argv is None else argv))


def vllm_main(argv: list[str] | None = None) -> int:
    """Entry point of ``vllm serve MODEL ...``."""
    return run(parse_vllm(sys.argv[1:] if argv is None else argv))


def parse_sglang(argv: list[str]) -> Options:
    """Options from SGLang's launch_server flags (unknown flags are kept in ``ignored``)."""
    if argv[:1] == ["serve"]:  # `sglang serve [--model-path] M ...`
        argv = argv[1:]
    parser = argparse.ArgumentParser(prog="sglang.launch_server (stand-in)", add_help=False)
    parser.add_argument("model_positional", nargs="?")
    parser.add_argument("--model-path", "--model")
    parser.add_argument("--disaggregation-mode", default="null")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=30000)
    parser.add_argument("--tp-size", "--tensor-parallel-size", "--tp", type=int, default=1)
    parser.add_argument("--nnodes", type=int, default=1)
    parser.add_argument("--node-rank", type=int, default=0)
    parser.add_argument("--dist-init-addr", "--nccl-init-addr")
    parser.add_argument("--disaggregation-bootstrap-port", type=int, default=8998)
    parser.add_argument("--served-model-name")
    args, ignored = parser.parse_known_args(argv)
    mode = args.disaggregation_mode
    opts = Options(
        engine="sglang",
        model=args.model_path or args.model_positional or "unknown-model",
        role=None if mode == "null" else mode,
        host=args.host, port=args.port, tp_size=args.tp_size, nnodes=args.nnodes,
        node_rank=args.node_rank, dist_init_addr=args.dist_init_addr,
        bootstrap_port=args.disaggregation_bootstrap_port if mode == "prefill" else None,
        served_model_name=args.served_model_name, ignored=ignored,
    )
    return _apply_env(opts, bind_late_default=False)


def parse_vllm(argv: list[str]) -> Options:
    """Options from ``vllm serve`` flags (``serve`` first; unknown flags kept in ``ignored``)."""
    if argv[:1] != ["serve"]:
        raise SystemExit("stand-in vllm: only `vllm serve MODEL ...` is supported")
    parser = argparse.ArgumentParser(prog="vllm serve (stand-in)", add_help=False)
    parser.add_argument("model", nargs="?")
    parser.add_argument("--model", dest="model_flag")
    parser.add_argument("--host")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--tensor-parallel-size", "-tp", type=int, default=1)
    parser.add_argument("--nnodes", type=int, default=1)
    parser.add_argument("--node-rank", type=int, default=0)
    parser.add_argument("--master-addr")
    parser.add_argument("--master-port", type=int)
    parser.add_argument("--headless", action="store_true")
    parser.add_argument("--kv-transfer-config")
    parser.add_argument("--served-model-name")
    args, ignored = parser.parse_known_args(argv[1:])
    role = None
    if args.kv_transfer_config:
        kv_role = json.loads(args.kv_transfer_config).get("kv_role", "kv_both")
        role = {"kv_producer": "prefill", "kv_consumer": "decode"}.get(kv_role, "both")
    side = None
    if role is not None:
        side = (os.environ.get("VLLM_NIXL_SIDE_CHANNEL_HOST", "localhost"),
                int(os.environ.get("VLLM_NIXL_SIDE_CHANNEL_PORT", "5600")))
    dist = f"{args.master_addr}:{args.master_port or 29501}" if args.master_addr else None
    opts = Options(
        engine="vllm", model=args.model or args.model_flag or "unknown-model", role=role,
        host=args.host or "0.0.0.0", port=args.port, tp_size=args.tensor_parallel_size,
        nnodes=args.nnodes, node_rank=args.node_rank, dist_init_addr=dist,
        served_model_name=args.served_model_name, headless=args.headless,
        side_channel=side, ignored=ignored,
    )
    return _apply_env(opts, bind_late_default=True)


def _apply_env(opts: Options, *, bind_late_default: bool) -> Options:
    env = os.environ
    opts.load_seconds = float(env.get("STANDIN_LOAD_SECONDS", "2"))
    opts.die_after = float(env["STANDIN_DIE_AFTER"]) if env.get("STANDIN_DIE_AFTER") else None
    opts.stubborn = env.get("STANDIN_STUBBORN", "")
    opts.escape = env.get("STANDIN_ESCAPE", "") == "1"
    late = env.get("STANDIN_BIND_LATE")
    opts.bind_late = bind_late_default if late is None else late == "1"
    opts.child_lifetime = float(env.get("STANDIN_CHILD_LIFETIME", "3600"))
    opts.request_log = env.get("STANDIN_REQUEST_LOG") or str(
        _log_dir() / f"requests-{_safe(opts.host)}-{opts.port}.jsonl")
    return opts


def request_log_path(log_dir: str | Path, host: str, port: int) -> Path:
    """Where a stand-in whose stdout goes to a file in ``log_dir`` records requests."""
    return Path(log_dir) / f"requests-{_safe(host)}-{port}.jsonl"


def read_requests(path: str | Path) -> list[dict[str, Any]]:
    """The requests a stand-in recorded (empty when none yet)."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _log_dir() -> Path:
    """Directory of the file stdout is redirected to (the per-launch log), if any."""
    try:
        target = os.readlink("/proc/self/fd/1")
        if target.startswith("/") and Path(target).is_file():
            return Path(target).parent
    except OSError:
        pass
    return Path(os.environ.get("STANDIN_RUN_DIR") or os.getcwd())


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in text)


# --- the server -------------------------------------------------------------------------------


class StandIn:
    """State of one running stand-in: phase, children, HTTP servers, request log."""

    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.phase = "loading"  # loading -> ready -> stopping
        self.children: list[subprocess.Popen[bytes]] = []
        self.servers: list[ThreadingHTTPServer] = []
        self.started = time.time()
        # Re-entrant: the SIGTERM handler logs from the main thread, maybe mid-print.
        self.lock = threading.RLock()
        self.exiting = threading.Event()

    # logging in the engines' formats
    def log(self, message: str, rank: str | None = None) -> None:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        if self.opts.engine == "vllm":
            where = "[api_server.py:1]" if rank is None else f"[{rank}]"
            line = f"INFO {time.strftime('%m-%d %H:%M:%S')} {where} {message}"
        else:
            line = f"[{stamp}{' ' + rank if rank else ''}] {message}"
        with self.lock:
            print(line, flush=True)

    def uvicorn(self, message: str) -> None:
        with self.lock:
            print(f"INFO:     {message}", flush=True)

    def record(self, path: str, body: Any, client: str) -> None:
        entry = {
            "time": time.time(), "engine": self.opts.engine, "role": self.opts.role,
            "server": f"{self.opts.host}:{self.opts.port}", "path": path, "client": client,
            "body": body,
        }
        if isinstance(body, dict):
            for key in ("bootstrap_host", "bootstrap_port", "bootstrap_room", "kv_transfer_params"):
                if key in body:
                    entry[key] = body[key]
        assert self.opts.request_log
        with self.lock, open(self.opts.request_log, "a") as handle:
            handle.write(json.dumps(entry) + "\n")
            handle.flush()


def run(opts: Options) -> int:
    """Run a stand-in until SIGTERM/SIGINT (exit 0) or STANDIN_DIE_AFTER (exit 1)."""
    state = StandIn(opts)
    signal.signal(signal.SIGTERM, lambda *_: _shutdown(state, "SIGTERM"))
    signal.signal(signal.SIGINT, lambda *_: _shutdown(state, "SIGINT"))
    if opts.die_after is not None:
        timer = threading.Timer(opts.die_after, _die, args=(state,))
        timer.daemon = True
        timer.start()
    _log_start(state)
    state.children = _spawn_children(opts)
    api = opts.node_rank == 0 and not opts.headless
    if api and not opts.bind_late:
        _serve(state, opts.host, opts.port, _api_handler(state))
    if api and opts.role == "prefill" and opts.bootstrap_port:
        _serve(state, opts.host, opts.bootstrap_port, _bootstrap_handler(state))
    _load(state)
    if api and opts.bind_late:
        _serve(state, opts.host, opts.port, _api_handler(state))
    if not api and not opts.headless:
        # SGLang rank >= 1: a dummy health server on --port once the schedulers are up.
        _serve(state, opts.host, opts.port, _dummy_health_handler(state))
    state.phase = "ready"
    _log_ready(state, api)
    state.exiting.wait()
    return 0


def _log_start(state: StandIn) -> None:
    o = state.opts
    if o.engine == "sglang":
        state.log(f"server_args=ServerArgs(model_path='{o.model}', host='{o.host}', port={o.port}, "
                  f"tp_size={o.tp_size}, nnodes={o.nnodes}, node_rank={o.node_rank}, "
                  f"dist_init_addr={o.dist_init_addr!r}, disaggregation_mode='{o.role or 'null'}', "
                  f"disaggregation_bootstrap_port={o.bootstrap_port or 8998}) [stand-in]")
    else:
        state.log(f"vLLM API server version 0.0.0-standin; model='{o.model}' role={o.role} "
                  f"tp={o.tp_size} nnodes={o.nnodes} node_rank={o.node_rank} headless={o.headless}")
    if o.ignored:
        state.log(f"stand-in ignores: {' '.join(o.ignored)}")
    state.log("Load weight begin. avail mem=79.10 GB", rank="TP0")


def _load(state: StandIn) -> None:
    deadline = time.time() + state.opts.load_seconds
    while time.time() < deadline and not state.exiting.is_set():
        time.sleep(min(0.05, max(0.0, deadline - time.time())))
    if state.opts.engine == "sglang":
        state.log("Load weight end. type=StandIn, dtype=torch.bfloat16, avail mem=62.10 GB, "
                  "mem usage=17.00 GB.", rank="TP0")
        state.log("KV Cache is allocated. #tokens: 100000, K size: 1.00 GB, V size: 1.00 GB", rank="TP0")
        state.log("max_total_num_tokens=100000, chunked_prefill_size=8192, max_prefill_tokens=16384, "
                  "max_running_requests=128, context_len=4096", rank="TP0")
    else:
        state.log("Loading model weights took 17.0 GiB", rank="gpu_model_runner.py:1")


def _log_ready(state: StandIn, api: bool) -> None:
    o = state.opts
    if not api:
        state.log(f"Node rank {o.node_rank}: schedulers ready; dummy health server on "
                  f"{o.host}:{o.port}" if not o.headless else "headless worker ready")
        return
    url = f"http://{o.host}:{o.port}"
    if o.engine == "sglang":
        state.uvicorn(f"Started server process [{os.getpid()}]")
        state.uvicorn("Waiting for application startup.")
        state.uvicorn("Application startup complete.")
        state.uvicorn(f"Uvicorn running on {url} (Press CTRL+C to quit)")
        if o.role == "prefill":
            state.log("Start of prefill warmup ...")
            state.log("End of prefill warmup with status 200, resp: [{'text': ' ', 'meta_info': {}}]")
        state.log("The server is fired up and ready to roll!")
    else:
        state.log(f"Starting vLLM API server 0 on {url}")
        state.uvicorn(f"Started server process [{os.getpid()}]")
        state.uvicorn("Waiting for application startup.")
        state.uvicorn("Application startup complete.")
        state.uvicorn(f"Uvicorn running on {url} (Press CTRL+C to quit)")


def _shutdown(state: StandIn, why: str) -> None:
    """Graceful stop: 503, forward SIGTERM to children (stubborn ones ignore it), exit 0."""
    state.phase = "stopping"
    state.log(f"Received {why}. Shutting down (stand-in).")
    _signal_children(state, signal.SIGTERM)
    state.exiting.set()
    # Daemon HTTP threads die with the process; exit without waiting for clients.
    sys.stdout.flush()
    os._exit(0)


def _die(state: StandIn) -> None:
    state.log("Scheduler hit an exception: Traceback (most recent call last):", rank="TP0")
    with state.lock:
        print('  File "/sgl-workspace/sglang/python/sglang/srt/managers/scheduler.py", '
              "line 2850, in run_scheduler_process\n    scheduler.event_loop_overlap()\n"
              "RuntimeError: CUDA error: out of memory "
              f"(stand-in: STANDIN_DIE_AFTER={state.opts.die_after:g})", flush=True)
    state.log("Received sigquit from a child process. It usually means the child failed.")
    _signal_children(state, signal.SIGTERM)
    os._exit(1)


def _signal_children(state: StandIn, sig: int) -> None:
    for child in state.children:
        try:
            os.kill(child.pid, sig)
        except ProcessLookupError:
            pass


# --- children ----------------------------------------------------------------------------------

_CHILD_CODE = r"""import os, signal, socket, sys, time
title, stubborn, escape, lifetime, listen = sys.argv[1], sys.argv[2] == "1", sys.argv[3] == "1", float(sys.argv[4]), sys.argv[5]
try:
    import setproctitle
    setproctitle.setproctitle(title)
except Exception:
    pass  # argv[0] is already the title
if escape:
    os.setsid()
signal.signal(signal.SIGTERM, signal.SIG_IGN if stubborn else signal.SIG_DFL)
signal.signal(signal.SIGINT, signal.SIG_IGN)
held = None
if listen:
    host, _, port = listen.rpartition(":")
    held = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        held.bind((host.strip("[]"), int(port)))
        held.listen(8)
    except OSError as exc:
        print(f"[{title}] cannot hold {listen}: {exc}", flush=True)
end = time.time() + lifetime
while time.time() < end:
    time.sleep(0.5)
"""


def child_titles(opts: Options) -> list[str]:
    """Process titles of the children a stand-in spawns (capped at MAX_CHILDREN ranks)."""
    local = max(1, opts.tp_size // max(1, opts.nnodes))
    first = opts.node_rank * local
    ranks = range(first, first + min(local, MAX_CHILDREN))
    if opts.engine == "sglang":
        titles = [f"sglang::scheduler_TP{r}" for r in ranks]
        if opts.node_rank == 0:
            titles.append("sglang::detokenizer")
        return titles
    titles = [] if opts.headless else ["VLLM::EngineCore"]
    return titles + [f"VLLM::Worker_TP{r}" for r in ranks]


def _spawn_children(opts: Options) -> list[subprocess.Popen[bytes]]:
    titles = child_titles(opts)
    children = []
    for index, title in enumerate(titles):
        stubborn = opts.stubborn == "1" or (opts.stubborn == "" and index == 0)
        escape = opts.escape and index == len(titles) - 1
        listen = ""
        if opts.engine == "sglang" and index == 0 and opts.nnodes > 1 and opts.node_rank == 0 \
                and opts.dist_init_addr:
            listen = opts.dist_init_addr  # rank 0 holds the torch.distributed store port
        if opts.engine == "vllm" and title == "VLLM::EngineCore" and opts.side_channel:
            listen = f"{opts.side_channel[0]}:{opts.side_channel[1]}"
        argv = [title, "-c", _CHILD_CODE, title, "1" if stubborn else "0", "1" if escape else "0",
                f"{opts.child_lifetime:g}", listen]
        # executable= keeps the real interpreter while argv[0] (the cmdline) is the title.
        children.append(subprocess.Popen(argv, executable=sys.executable, stdin=subprocess.DEVNULL,
                                         close_fds=True))
    return children


# --- HTTP ------------------------------------------------------------------------------------------


class _Quiet(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client hanging up mid-response is not worth a traceback in the log


def _serve(state: StandIn, host: str, port: int, handler: type) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    server_cls = type("Server", (_Quiet,), {"address_family": family})
    server = server_cls((host, port), handler)
    state.servers.append(server)
    threading.Thread(target=server.serve_forever, daemon=True).start()


class _Base(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state: StandIn
    label = ""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass

    def _access(self, code: int) -> None:
        phrase = {200: "OK", 404: "Not Found", 503: "Service Unavailable", 400: "Bad Request"}.get(code, "")
        self.state.uvicorn(f'{self.label}{self.client_address[0]}:{self.client_address[1]} - '
                           f'"{self.command} {self.path} HTTP/1.1" {code} {phrase}')

    def send_json(self, code: int, doc: Any) -> None:
        body = json.dumps(doc).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self._access(code)

    def send_text(self, code: int, text: str = "") -> None:
        body = text.encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self._access(code)

    def read_json(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            return json.loads(raw) if raw else {}
        except ValueError:
            return {"_raw": raw.decode("utf-8", "replace")}


def _api_handler(state: StandIn) -> type:
    class Handler(_Base):
        def do_GET(self) -> None:
            self.state = state
            path = self.path.split("?", 1)[0]
            if path in ("/health", "/health_generate"):
                ok = state.phase == "ready"
                self.send_text(200 if ok else 503, "" if ok else "Service Unavailable")
            elif path == "/ping":
                self.send_text(200)
            elif path in ("/get_model_info", "/model_info"):
                self.send_json(200, _model_info(state.opts))
            elif path in ("/get_server_info", "/server_info"):
                self.send_json(200, _server_info(state))
            elif path == "/v1/models":
                self.send_json(200, _models(state.opts))
            elif path in ("/get_load", "/load"):
                self.send_json(200, [{"dp_rank": 0, "num_reqs": 0, "num_waiting_reqs": 0, "num_tokens": 0}])
            elif path == "/version":
                self.send_json(200, {"version": "0.0.0-standin"})
            elif path == "/metrics":
                self.send_text(200, "# stand-in: no metrics\n")
            else:
                self.send_json(404, {"detail": "Not Found"})

        def do_POST(self) -> None:
            self.state = state
            path = self.path.split("?", 1)[0]
            body = self.read_json()
            if path in GENERATE_PATHS:
                if state.phase != "ready":
                    self.send_json(503, {"error": "server is not ready"})
                    return
                state.record(path, body, f"{self.client_address[0]}:{self.client_address[1]}")
                _answer(self, state, path, body)
            elif path == "/tokenize" and state.opts.engine == "vllm":
                # vllm-router asks for this (and /v1/*/render, left 404 like older vLLM).
                text = str(body.get("prompt") or body.get("messages") or "") if isinstance(body, dict) else ""
                tokens = [sum(map(ord, word)) % 50000 for word in text.split()]
                self.send_json(200, {"count": len(tokens), "max_model_len": 4096, "tokens": tokens})
            elif path in ("/flush_cache", "/abort_request"):
                self.send_text(200, "ok")
            else:
                self.send_json(404, {"detail": "Not Found"})

    return Handler


def _bootstrap_handler(state: StandIn) -> type:
    class Handler(_Base):
        label = "[bootstrap] "

        def do_GET(self) -> None:
            self.state = state
            path = self.path.split("?", 1)[0]
            if path == "/health":
                self.send_text(200, "OK")
            elif path == "/route":
                o = state.opts
                self.send_json(200, {"prefill_attn_tp_size": o.tp_size, "prefill_dp_size": 1,
                                     "prefill_pp_size": 1, "prefill_page_size": 1, "standin": True})
            else:
                self.send_json(404, {"detail": "Not Found"})

        def do_PUT(self) -> None:
            self.state = state
            self.read_json()
            self.send_text(200, "OK")

    return Handler


def _dummy_health_handler(state: StandIn) -> type:
    class Handler(_Base):
        def do_GET(self) -> None:
            self.state = state
            if self.path.split("?", 1)[0] in ("/health", "/health_generate", "/ping"):
                self.send_text(200, "OK")
            else:
                self.send_json(404, {"detail": "Not Found"})

        def do_POST(self) -> None:  # no API on rank >= 1
            self.state = state
            self.read_json()
            self.send_json(404, {"detail": "Not Found"})

    return Handler


# The real SGLang reports model_path/tokenizer_path here. The stand-in leaves both out on
# purpose: the real router (sglang-router 0.3.x / smg) loads a tokenizer from them and,
# for anything that is not a local directory, downloads it from huggingface.co — a
# network call a loopback test must never make. Without them it logs "No tokenizer_path
# or model_path found" and routes as usual. The model name is in /v1/models.
def _model_info(opts: Options) -> dict[str, Any]:
    return {"standin_model": opts.model, "is_generation": True,
            "preferred_sampling_params": None, "weight_version": "default",
            "has_image_understanding": False, "has_audio_understanding": False,
            "model_type": "standin", "architectures": ["StandInForCausalLM"]}


def _server_info(state: StandIn) -> dict[str, Any]:
    o = state.opts
    return {"standin_model": o.model, "served_model_name": o.model_name, "host": o.host, "port": o.port,
            "tp_size": o.tp_size, "dp_size": 1, "nnodes": o.nnodes, "node_rank": o.node_rank,
            "disaggregation_mode": o.role or "null",
            "disaggregation_bootstrap_port": o.bootstrap_port or 8998,
            "status": state.phase, "version": "0.0.0-standin",
            "internal_states": [{"last_gen_throughput": 0.0, "memory_usage": {}}]}


def _models(opts: Options) -> dict[str, Any]:
    return {"object": "list", "data": [{"id": opts.model_name, "object": "model",
                                        "created": int(time.time()), "owned_by": opts.engine,
                                        "root": opts.model, "max_model_len": 4096}]}


def _answer(handler: _Base, state: StandIn, path: str, body: Any) -> None:
    """Answer a generation request like the engine would (text identifies the server)."""
    o = state.opts
    body = body if isinstance(body, dict) else {}
    sampling = body.get("sampling_params") or {}
    n = int(sampling.get("max_new_tokens") or body.get("max_tokens") or 8)
    text = f" stand-in {o.role or 'server'} {o.host}:{o.port}"
    rid = body.get("rid") or uuid.uuid4().hex
    prompt = body.get("text") or body.get("prompt") or body.get("messages") or ""
    prompt_tokens = len(str(prompt).split())
    if path == "/generate":
        doc: Any = {"text": text, "meta_info": {
            "id": rid, "finish_reason": {"type": "length", "length": n},
            "prompt_tokens": prompt_tokens, "completion_tokens": n, "cached_tokens": 0,
            "e2e_latency": 0.001}}
    else:
        created = int(time.time())
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": n,
                 "total_tokens": prompt_tokens + n}
        if path == "/v1/chat/completions":
            choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": text},
                                      "finish_reason": "length"}
            kind = "chat.completion"
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": "length"}
            kind = "text_completion"
        doc = {"id": f"cmpl-{rid}", "object": kind, "created": created, "model": o.model_name,
               "choices": [choice], "usage": usage}
        if o.engine == "vllm" and o.role == "prefill":
            # What NixlConnector hands back for the decode side to pull the KV cache.
            doc["kv_transfer_params"] = {
                "do_remote_prefill": True, "do_remote_decode": False, "remote_block_ids": [0],
                "remote_engine_id": f"standin-{o.host}-{o.port}", "remote_host": o.host,
                "remote_port": o.side_channel[1] if o.side_channel else 5600, "tp_size": o.tp_size}
    if body.get("stream"):
        _stream(handler, doc)
    else:
        handler.send_json(200, doc)


def _stream(handler: _Base, doc: Any) -> None:
    """Server-sent events: one chunk with the whole answer, then [DONE]."""
    handler.send_response(200)
    handler.send_header("Content-Type", "text/event-stream")
    handler.send_header("Connection", "close")
    handler.end_headers()
    handler.wfile.write(f"data: {json.dumps(doc)}\n\n".encode())
    handler.wfile.write(b"data: [DONE]\n\n")
    handler.wfile.flush()
    handler.close_connection = True
    handler._access(200)


if __name__ == "__main__":  # pragma: no cover - `python3 standin_server.py sglang|vllm ...`
    which, rest = (sys.argv[1], sys.argv[2:]) if len(sys.argv) > 1 else ("sglang", [])
    sys.exit(vllm_main(rest) if which == "vllm" else sglang_main(rest))
