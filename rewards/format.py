"""Format and length rewards: the R1 `<think>…</think>` template, DAPO's overlong punishment, and a
soft token budget.

All are plain functions `fn(completion, sample, **options) -> float`; `rewards.compose` binds the
options from the config. Lengths are measured in tokens, which only the sampler knows, so length
rewards read them from `sample["num_tokens"]` (the completion's generated token count).
"""

from __future__ import annotations

import re

# Tags are counted leniently (case, inner spaces) so that "<Think>" or "< /think>" cannot be used to
# repeat a tag unnoticed; the well-formed check itself then requires the exact spelling.
_THINK_OPEN_RE = re.compile(r"<\s*think\s*>", re.IGNORECASE)
_THINK_CLOSE_RE = re.compile(r"<\s*/\s*think\s*>", re.IGNORECASE)
_ANSWER_OPEN_RE = re.compile(r"<\s*answer\s*>", re.IGNORECASE)
_ANSWER_CLOSE_RE = re.compile(r"<\s*/\s*answer\s*>", re.IGNORECASE)


def think_format_reward(completion: str, sample: dict | None = None, *,
                        think_in_prompt: bool = False, require_answer_tags: bool = False,
                        correct: float = 1.0, missing: float = 0.0,
                        repeated: float = -1.0) -> float:
    """Scores the R1 template: `<think>` reasoning `</think>` answer.

    Well-formed means: the completion starts with `<think>` (or the prompt already ended with it,
    `think_in_prompt`), `</think>` follows non-empty reasoning, and a non-empty answer comes after.
    With `require_answer_tags`, the part after `</think>` must be exactly `<answer>…</answer>`
    (non-empty, only whitespace around). Each tag must appear exactly once.

    Rewarding tag counts piecemeal is a known hack (models learn to emit tags, or emit them many
    times); here the structure is all-or-nothing and repeating a tag is worse than omitting it.

    Args:
      completion: the generated text (after the prompt).
      sample: unused; present for the reward-function signature.
      think_in_prompt: the chat template already opened `<think>`; the completion must not.
      require_answer_tags: the answer must be wrapped in `<answer>…</answer>`.
      correct, missing, repeated: rewards for well-formed; missing/misplaced/empty parts; any tag
        occurring more than once (or `<think>` in the completion when the prompt opened it).

    Returns:
      `correct`, `missing` or `repeated`.
    """
    n_open = len(_THINK_OPEN_RE.findall(completion))
    n_close = len(_THINK_CLOSE_RE.findall(completion))
    n_ans_open = len(_ANSWER_OPEN_RE.findall(completion))
    n_ans_close = len(_ANSWER_CLOSE_RE.findall(completion))
    expected_open = 0 if think_in_prompt else 1
    if n_open > expected_open or n_close > 1 or n_ans_open > 1 or n_ans_close > 1:
        return repeated
    if n_open != expected_open or n_close != 1:
        return missing
    body = completion.lstrip()
    if not think_in_prompt:
        if not body.startswith("<think>"):
            return missing
        body = body[len("<think>"):]
    thinking, sep, answer = body.partition("</think>")
    if not sep or not thinking.strip() or not answer.strip():
        return missing
    if require_answer_tags:
        answer = answer.strip()
        if not (answer.startswith("<answer>") and answer.endswith("</answer>")):
            return missing
        if not answer[len("<answer>"):-len("</answer>")].strip():
            return missing
    elif n_ans_open != n_ans_close:  # optional answer tags, but then balanced
        return missing
    return correct


def _num_tokens(sample: dict, key: str) -> int:
    try:
        return int(sample[key])
    except (KeyError, TypeError):
        raise KeyError(
            f"length rewards need sample[{key!r}], the completion's token count from the sampler; "
            f"got keys {sorted(sample) if isinstance(sample, dict) else type(sample).__name__}"
        ) from None


def overlong_penalty(num_tokens: int, max_tokens: int, cache_tokens: int) -> float:
    """DAPO's soft overlong punishment (Yu et al. 2025, eq. 13).

    R(y) = 0                                 if |y| <= L_max - L_cache
         = ((L_max - L_cache) - |y|) / L_cache  if L_max - L_cache < |y| <= L_max
         = -1                                if |y| > L_max
    with |y| = num_tokens, L_max = max_tokens, L_cache = cache_tokens.
    """
    if not 0 < cache_tokens <= max_tokens:
        raise ValueError(f"need 0 < cache_tokens <= max_tokens, got {cache_tokens}, {max_tokens}")
    free = max_tokens - cache_tokens
    if num_tokens <= free:
        return 0.0
    if num_tokens <= max_tokens:
        return (free - num_tokens) / cache_tokens
    return -1.0


def overlong_reward(completion: str, sample: dict, *, max_tokens: int,
                    cache_tokens: int | None = None, tokens_key: str = "num_tokens") -> float:
    """`overlong_penalty` of a completion; `cache_tokens` defaults to a fifth of `max_tokens`
    (DAPO used L_max = 20480 with L_cache = 4096)."""
    if cache_tokens is None:
        cache_tokens = max(1, max_tokens // 5)
    return overlong_penalty(_num_tokens(sample, tokens_key), max_tokens, cache_tokens)


def length_reward(completion: str, sample: dict, *, target_tokens: int, max_tokens: int,
                  tokens_key: str = "num_tokens") -> float:
    """Optional length shaping: a soft token budget.

    0 up to `target_tokens`, then falling linearly to -1 at `max_tokens` (and staying there), so a
    small weight nudges the policy toward shorter reasoning without the cliff of a hard limit.
    """
    if not 0 <= target_tokens < max_tokens:
        raise ValueError(f"need 0 <= target_tokens < max_tokens, got {target_tokens}, {max_tokens}")
    n = _num_tokens(sample, tokens_key)
    return -min(1.0, max(0.0, (n - target_tokens) / (max_tokens - target_tokens)))
