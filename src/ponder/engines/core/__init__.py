"""What the engines share: `requests` (checks, seeds, score rows, log p / log q of given
tokens), `collect` (the records of a request and its samples, and the one place they become
Completions and Generations), `decode` (one sampling step on next-token logits) and
`scheduler` (the decode loop of the engines that sample themselves: admission, follow-ups,
finishing; the backend is a Runner)."""
