"""`ponder generate`: sample completions of one prompt and show their log-probabilities."""

from __future__ import annotations

import argparse
import json
import sys

from ponder.commands._common import add_engine_args, engine_config_from_args
from ponder.streaming import StopHoldback

EPILOG = """examples:
  ponder generate "What is 12 + 35?"                       greedy-ish chat answer, streamed
  ponder generate "What is 12 + 35?" --n 4 --temperature 0.8 --seed 1
  ponder generate $'Q: What is 2 + 3?\\nA:' --raw --temperature 0 --stop $'\\n'
                                      (bash's $'...' turns \\n into a newline; "\\n" does not)
  ponder generate "Hi" --json                               one JSON object per completion
"""


def register(sub) -> None:
    p = sub.add_parser("generate", help="sample completions of a prompt",
                       description="Sample completions of PROMPT and print each with its summed "
                                   "log-probability under the model. With --n 1 the text "
                                   "streams as it is generated.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("prompt", help="the prompt; sent as a user chat message unless --raw")
    p.add_argument("--raw", action="store_true",
                   help="send the prompt as raw text, without the chat template")
    p.add_argument("--json", action="store_true", help="print one JSON object per completion")
    _add_sampling_args(p)
    add_engine_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ponder.engines.config import build_engine
    from ponder.types import GenerateRequest

    if not args.prompt.strip():
        raise ValueError("the prompt is empty: give some text to complete")
    params = _sampling_from_args(args)  # validates before the model loads
    prompt = args.prompt if args.raw else [{"role": "user", "content": args.prompt}]
    engine = build_engine(engine_config_from_args(args))
    stream = params.n == 1 and not args.json
    # The engine streams a token's text before it sees that it completes a stop string;
    # hold back what a stop string may still cut, as the final text is cut.
    held = StopHoldback(params.stop)

    def on_token(_request, _sample, _token, delta):
        sys.stdout.write(held.push(delta))
        sys.stdout.flush()

    [generation] = engine.generate([GenerateRequest(prompt, params)],
                                   on_token=on_token if stream else None)
    for i, c in enumerate(generation.completions):
        if args.json:
            print(json.dumps({"index": i, "text": c.text, "finish_reason": c.finish_reason,
                              "sum_logprob": c.sum_logprob, "tokens": len(c.token_ids),
                              "seed": c.seed}))
            continue
        if stream:
            print(held.finish(c.text))
        else:
            print(f"--- sample {i}")
            print(c.text)
        print(f"[logprob {c.sum_logprob:.3f} | {len(c.token_ids)} tokens | "
              f"finish {c.finish_reason}]", file=sys.stderr if stream else sys.stdout)
    u = generation.usage
    if not args.json:
        print(f"usage: {u.prompt_tokens} prompt, {u.generated_tokens} generated, "
              f"{u.forward_tokens} forward tokens, {u.wall_seconds:.1f} s", file=sys.stderr)
    return 0


def _add_sampling_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("sampling")
    group.add_argument("--n", type=int, default=1, help="samples (default 1)")
    group.add_argument("--temperature", type=float, default=0.7, help="0 = greedy (default 0.7)")
    group.add_argument("--top-p", type=float, default=1.0, help="nucleus mass in (0, 1] (1 = off)")
    group.add_argument("--top-k", type=int, default=0, help="keep the k likeliest tokens (0 = off)")
    group.add_argument("--min-p", type=float, default=0.0,
                       help="drop tokens below min_p x the top probability (0 = off)")
    group.add_argument("--max-tokens", type=int, default=256,
                       help="new tokens per sample (default 256)")
    group.add_argument("--stop", action="append", default=[], metavar="TEXT",
                       help="stop string (repeatable)")
    group.add_argument("--seed", type=int, default=None, help="makes the run reproducible")


def _sampling_from_args(args: argparse.Namespace):
    from ponder.types import SamplingParams

    return SamplingParams(n=args.n, temperature=args.temperature, top_p=args.top_p,
                          top_k=args.top_k, min_p=args.min_p, max_tokens=args.max_tokens,
                          stop=tuple(args.stop), seed=args.seed)
