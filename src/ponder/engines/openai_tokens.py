"""The client-side tokenizer of the OpenAI engine, and token ids from servers that return
tokens as text.

Prompts are tokenized here, with the model's own HF tokenizer, so chat templates render the
same way for generation and scoring and token counts are exact. Servers that take token-id
prompts and return token ids (ponder serve, vLLM with return_tokens_as_token_ids) need
nothing more. Others (llama-cpp-python's server) write each token as its text; TokenMap
turns those back into ids and checks the result against the completion's text.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def load_tokenizer(tokenizer):
    """A HF tokenizer from a bundled model name, a HF folder, a .gguf file or a hub id; an
    object with encode/decode passes through."""
    if not isinstance(tokenizer, str | Path):
        if not all(hasattr(tokenizer, a) for a in ("encode", "decode")):
            raise ValueError("tokenizer must be a name, a path, or a HF tokenizer object")
        return tokenizer
    from transformers import AutoTokenizer

    from ponder.models import resolve

    try:
        source = resolve(str(tokenizer))
    except ValueError as exc:
        raise ValueError(f"cannot find a tokenizer for {str(tokenizer)!r} ({exc}); pass "
                         "tokenizer= (CLI: --tokenizer) a HF model folder, a .gguf file, a hub "
                         "id or a bundled model name") from None
    cache = source.cache_dir
    if cache is not None and (cache / "tokenizer_config.json").is_file():
        return AutoTokenizer.from_pretrained(str(cache))  # the bundled model, converted
    kwargs = {"gguf_file": source.gguf_file} if source.gguf_file else {}
    return AutoTokenizer.from_pretrained(source.path, **kwargs)


class TokenMap:
    """Token text -> token id, for tokens written as text.

    Such servers decode each token alone, dropping bytes that are not whole UTF-8
    characters and writing special tokens as "". A text names one token when exactly one
    complete (whole-character, non-special) token has it, which holds for nearly all of a
    byte-level BPE vocabulary; the ids found are then checked against the completion text.
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self._ids: dict[str, int] | None = None

    def _build(self) -> dict[str, int]:
        tok = self.tokenizer
        special = set(getattr(tok, "all_special_ids", ()) or ())
        texts = tok.batch_decode([[i] for i in range(len(tok))], skip_special_tokens=True)
        ids: dict[str, int] = {}
        clash: set[str] = set()
        for i, text in enumerate(texts):
            if i in special or not text or "\ufffd" in text:
                continue
            if text in ids:
                clash.add(text)
            ids[text] = i
        for text in clash:
            del ids[text]
        return ids

    def ids(self, tokens: Sequence[str], text: str, cut: bool,
            eos: int | None = None) -> list[int]:
        """The ids of `tokens`; `text` is what they decode to (a prefix of it when `cut`, a
        completion cut at a stop string); a last "" is `eos` when given (a server that
        lists the end-of-sequence token). ValueError when they cannot be told for sure."""
        if self._ids is None:
            self._ids = self._build()
        out, unknown = [], []
        for k, t in enumerate(tokens):
            i = eos if (t == "" and k == len(tokens) - 1 and eos is not None) else self._ids.get(t)
            if i is None:
                unknown.append(t)
            out.append(i)
        decoded = self.tokenizer.decode([i for i in out if i is not None],
                                        skip_special_tokens=True) if not unknown else None
        if unknown or not (decoded.startswith(text) if cut else decoded == text):
            raise ValueError(
                "the server writes tokens as text and these cannot be mapped back to token ids "
                f"for sure ({unknown[:3] or 'they do not decode to the completion'}); use a "
                "server that returns token ids (ponder serve, or vLLM, which the engine asks "
                "for return_tokens_as_token_ids)")
        return out

    def id_of(self, token: str) -> int | None:
        """One token's id, or None when its text does not name one token."""
        if self._ids is None:
            self._ids = self._build()
        return self._ids.get(token)


def token_id(token: str) -> int:
    """A token the server wrote as token_id:<id> (return_tokens_as_token_ids)."""
    if not token.startswith("token_id:"):
        raise ValueError(f"expected a token written as token_id:<id>, got {token!r}")
    return int(token.removeprefix("token_id:"))
