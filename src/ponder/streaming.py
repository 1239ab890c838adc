"""Streaming text that a stop string may still cut (the CLI's `generate`, the server)."""

from __future__ import annotations

from collections.abc import Sequence


class StopHoldback:
    """Streams text that cannot turn out to be the start of a stop string.

    The engine emits a token's text before it sees that the text completes a stop string,
    then cuts the final text there. Holding back any tail that could begin a stop string
    keeps every streamed character a prefix of the final text.
    """

    def __init__(self, stops: Sequence[str]):
        self.stops = tuple(stops)
        self.text = ""
        self.sent = 0

    def push(self, delta: str) -> str:
        self.text += delta
        end = len(self.text)
        for stop in self.stops:
            hit = self.text.find(stop, max(0, self.sent - len(stop)))
            if hit >= 0:
                end = min(end, hit)
            for k in range(min(len(stop) - 1, len(self.text)), 0, -1):
                if self.text.endswith(stop[:k]):
                    end = min(end, len(self.text) - k)
                    break
        return self._release(end)

    def finish(self, final: str) -> str:
        """What is left to send once the final text is known."""
        if not final.startswith(self.text[: self.sent]):  # cannot happen; never resend
            return ""
        self.text = final
        return self._release(len(final))

    def _release(self, end: int) -> str:
        if end <= self.sent:
            return ""
        out = self.text[self.sent:end]
        self.sent = end
        return out
