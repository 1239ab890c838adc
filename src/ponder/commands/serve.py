"""`ponder serve`: every ponder strategy behind an OpenAI-compatible HTTP API."""

from __future__ import annotations

import argparse
import errno
import ipaddress
import os
import socket
import sys

from ponder.commands._common import add_engine_args

EPILOG = """examples:
  ponder serve                                   the bundled model on http://127.0.0.1:8000/v1
  ponder serve --model /path/to/hf-model --port 9000 --api-key secret
  PONDER_API_KEY=secret ponder serve --host 0.0.0.0 --max-concurrent 32

then, from any OpenAI client:
  client = openai.OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="secret")
  client.chat.completions.create(model="smollm2-135m", messages=[...])          plain sampling
  client.chat.completions.create(model="sc8:smollm2-135m", messages=[...])      self-consistency
  client.chat.completions.create(model="smollm2-135m", messages=[...],
      extra_body={"ponder": {"strategy": "bon", "n": 16, "return_candidates": True}})
"""


def register(sub) -> None:
    p = sub.add_parser("serve", help="serve strategies behind an OpenAI-compatible API",
                       description="Serve the model behind POST /v1/chat/completions, "
                                   "POST /v1/completions, GET /v1/models and GET /health. A "
                                   "strategy prefix on the model name (sc8:, bon16:, refine:, "
                                   "greedy:) or the body field `ponder` picks a strategy; "
                                   "concurrent requests share batched engine calls.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    net = p.add_argument_group("network")
    net.add_argument("--host", default="127.0.0.1",
                     help="address to bind (default 127.0.0.1: this machine only)")
    net.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    net.add_argument("--api-key", default=os.environ.get("PONDER_API_KEY"),
                     help="require 'Authorization: Bearer KEY' on every request "
                          "(default: $PONDER_API_KEY, else no key)")
    net.add_argument("--metrics-public", action="store_true",
                     help="serve GET /metrics (Prometheus) without the API key; /health and "
                          "/ready never need it")
    net.add_argument("--served-model-name", default=None,
                     help="the model name clients use (default: the --model name)")
    net.add_argument("--log-level", default="info",
                     choices=["critical", "error", "warning", "info", "debug"])
    lim = p.add_argument_group("limits (over a limit: HTTP 400, or 429 for concurrency)")
    lim.add_argument("--max-n", type=int, default=16,
                     help="samples per request: choices, or a strategy's n (default 16)")
    lim.add_argument("--max-tokens", type=int, default=1024,
                     help="new tokens per sample (default 1024)")
    lim.add_argument("--default-max-tokens", type=int, default=None,
                     help="new tokens per sample when a request does not say (default 256, "
                          "or --max-tokens if lower)")
    lim.add_argument("--max-request-tokens", type=int, default=65536,
                     help="tokens one request may cost: prompts, generated and scorer tokens "
                          "(default 65536)")
    lim.add_argument("--max-concurrent", type=int, default=64,
                     help="requests in flight at once; more get 429 (default 64)")
    lim.add_argument("--max-body-bytes", type=int, default=1 << 20,
                     help="largest request body (default 1048576)")
    lim.add_argument("--max-request-seconds", type=int, default=600,
                     help="a request's deadline: still running then, it stops at the next "
                          "decode step and gets HTTP 408; still queued, it is refused "
                          "(default 600)")
    sco = p.add_argument_group("scorers (requests pick one by name; never by path)")
    sco.add_argument("--scorer", action="append", default=[], metavar="[NAME=]SPEC",
                     help="a scorer requests may use as ponder.scorer, e.g. "
                          "--scorer prm=qwen-prm:/models/Qwen2.5-Math-PRM-7B (repeatable). "
                          "Without NAME, requests name it by SPEC. mean_logprob, "
                          "sum_logprob, heuristic, judge and judge_answer are always "
                          "available; no other model or file is ever loaded for a request")
    sco.add_argument("--reward-model", default=None, metavar="STYLE:PATH",
                     help="also serve this scorer (any of the registry: qwen-prm:PATH, "
                          "orm:PATH, verifier:NAME, judge...) at POST /pooling, vLLM's pooling "
                          "API, for clients' --scorer http-prm:URL / http-orm:URL")
    bat = p.add_argument_group("batching")
    bat.add_argument("--gather-ms", type=float, default=20.0,
                     help="wait this long after a request for others to share its engine "
                          "call (default 20)")
    bat.add_argument("--max-batch-requests", type=int, default=256,
                     help="most requests per engine round; 1 serves one at a time (default 256)")
    add_engine_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # Check everything a user can get wrong before spending seconds loading the model.
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError as exc:
        raise ValueError(f"the server needs fastapi and uvicorn ({exc.name} is missing): "
                         "pip install 'ponder[server]'") from None
    from ponder.server.limits import Limits

    if not 1 <= args.port <= 65535:
        raise ValueError(f"--port must be in 1..65535, got {args.port}")
    if args.gather_ms < 0 or args.max_batch_requests < 1:
        raise ValueError("--gather-ms must be >= 0 and --max-batch-requests >= 1")
    if args.api_key is not None and not args.api_key.strip():
        raise ValueError("--api-key is empty: give a key, or leave it out to serve without one")
    limits = Limits(max_n=args.max_n, max_tokens=args.max_tokens,
                    default_max_tokens=args.default_max_tokens,
                    max_request_tokens=args.max_request_tokens,
                    max_concurrent=args.max_concurrent, max_body_bytes=args.max_body_bytes,
                    max_request_seconds=args.max_request_seconds)
    specs = operator_scorers(args.scorer)
    reward_spec = args.reward_model.strip() if args.reward_model else None
    if reward_spec:
        from ponder.scorers.registry import make_scorer

        make_scorer(reward_spec)  # a wrong style or name fails here, before the model loads
    # Before the model loads: a port in use fails at once, with a message.
    _check_port(args.host, args.port)
    if not args.api_key and not _loopback(args.host):
        print(f"ponder serve: warning: {args.host} is reachable from other machines and no "
              "--api-key is set", file=sys.stderr)

    from ponder.commands._common import engine_config_from_args
    from ponder.engines.config import build_engine
    from ponder.scorers.registry import make_scorer
    from ponder.server.app import create_app

    engine = build_engine(engine_config_from_args(args))
    scorers = {name: make_scorer(spec, engine) for name, spec in specs.items()}
    reward = (reward_spec, make_scorer(reward_spec, engine)) if reward_spec else None
    app = create_app(engine, served_name=args.served_model_name, api_key=args.api_key,
                     metrics_public=args.metrics_public,
                     limits=limits, gather_ms=args.gather_ms,
                     max_batch_requests=args.max_batch_requests, scorers=scorers,
                     reward_model=reward)
    name = app.state.served[0]
    print(f"ponder serve: {name} on http://{args.host}:{args.port}/v1 "
          f"(auth {'on' if args.api_key else 'off'}; try model 'sc8:{name}')", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level,
                timeout_graceful_shutdown=5)
    return 0


def _check_port(host: str, port: int) -> None:
    """ValueError where uvicorn could not listen on host:port (checked by listening there a
    moment, as it will)."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        socket.create_server((host, port), family=family).close()
    except OSError as exc:
        why = ("is in use (another server?); pick another --port"
               if exc.errno == errno.EADDRINUSE else f"cannot be listened on: {exc.strerror}")
        raise ValueError(f"{host}:{port} {why}") from None


def operator_scorers(items: list[str]) -> dict[str, str]:
    """--scorer values -> {name requests use: scorer spec}, each spec checked by name."""
    from ponder.scorers.registry import make_scorer

    out: dict[str, str] = {}
    for item in items:
        name, sep, spec = item.partition("=")
        name, spec = (name.strip(), spec.strip()) if sep else (item.strip(), item.strip())
        if not name or not spec:
            raise ValueError(f"--scorer takes NAME=SPEC or SPEC (e.g. prm=qwen-prm:/models/prm), "
                             f"got {item!r}")
        make_scorer(spec)  # a wrong style or name fails here, before the model loads
        out[name] = spec
    return out


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
