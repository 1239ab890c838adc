"""Text <-> tokens on a GGUF's own vocabulary and chat template, the way transformers'
tokenizers do it, so the llama.cpp engine reads prompts as the native engine does."""

from __future__ import annotations

import ctypes
import json
from collections.abc import Sequence
from datetime import datetime

from ponder.types import Prompt


class LlamaVocabulary:
    """A llama.cpp model's vocabulary. Its decode() is what ponder's incremental
    detokenizer expects of a tokenizer."""

    def __init__(self, lib, model, model_name: str):
        self._lib, self._model, self.model_name = lib, model, model_name
        self._vocab = lib.llama_model_get_vocab(model)
        self.size = lib.llama_vocab_n_tokens(self._vocab)
        self._add_bos = bool(lib.llama_vocab_get_add_bos(self._vocab))
        self._template = None

    def tokenize(self, prompt: Prompt) -> list[int]:
        """Text -> ids (with BOS when the GGUF asks for it); chat messages -> the GGUF's chat
        template with a generation prompt; token ids pass through unchanged. Special-token
        text is parsed, as transformers' tokenizers do."""
        if isinstance(prompt, str):
            return self.encode(prompt, add_special=self._add_bos)
        items = list(prompt)
        if items and all(isinstance(t, int) and not isinstance(t, bool) for t in items):
            self.check_ids(items)
            return items
        if items and all(isinstance(m, dict) and "role" in m and "content" in m for m in items):
            return self.encode(self._render_chat(items), add_special=False)
        raise ValueError(
            "a prompt must be text, a list of {'role', 'content'} messages, or token ids"
        )

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """Control tokens render as nothing (like skip_special_tokens=True, always)."""
        return self.decode_bytes(list(ids)).decode("utf-8", errors="replace")

    def check_ids(self, ids: Sequence[int]) -> None:
        # llama.cpp does not check ids: an out-of-range one would crash the process.
        if any(isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < self.size
               for t in ids):
            raise ValueError(f"token ids must be integers in [0, {self.size})")

    def encode(self, text: str, add_special: bool) -> list[int]:
        data = text.encode("utf-8")
        room = len(data) + 8
        while True:
            buf = (self._lib.llama_token * room)()
            n = self._lib.llama_tokenize(self._vocab, data, len(data), buf, room, add_special, True)
            if n >= 0:
                return list(buf[:n])
            room = -n

    def decode_bytes(self, ids: list[int]) -> bytes:
        if not ids:
            return b""
        arr = (self._lib.llama_token * len(ids))(*ids)
        room = 16 * len(ids) + 16
        while True:
            buf = ctypes.create_string_buffer(room)
            # remove_special=False, unparse_special=False: control tokens render as nothing,
            # like transformers' skip_special_tokens=True.
            n = self._lib.llama_detokenize(self._vocab, arr, len(ids), buf, room, False, False)
            if n >= 0:
                return buf.raw[:n]
            room = -n

    def is_end(self, token: int) -> bool:
        return bool(self._lib.llama_vocab_is_eog(self._vocab, token))

    def _render_chat(self, messages: list) -> str:
        if self._template is None:
            source = self._lib.llama_model_chat_template(self._model, None)
            if not source:
                raise ValueError(f"model {self.model_name!r} has no chat template: pass raw "
                                 "text instead")
            self._template = _compile_template(source.decode("utf-8"))
        specials = {}
        for key, token in (("bos_token", self._lib.llama_vocab_bos(self._vocab)),
                           ("eos_token", self._lib.llama_vocab_eos(self._vocab))):
            if 0 <= token < self.size:
                specials[key] = self._piece(token)
        return self._template.render(messages=messages, add_generation_prompt=True, **specials)

    def _piece(self, token: int) -> str:
        buf = ctypes.create_string_buffer(256)
        n = self._lib.llama_token_to_piece(self._vocab, token, buf, 256, 0, True)
        return buf.raw[:max(n, 0)].decode("utf-8", errors="replace")


def _compile_template(source: str):
    """The GGUF's chat template in a sandboxed Jinja environment set up like transformers'
    apply_chat_template (trim/lstrip blocks, loop controls, raise_exception, tojson), so the
    rendered text and hence the tokens match the native engine's."""
    from jinja2.exceptions import TemplateError
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(source)
