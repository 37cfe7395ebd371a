"""Finding the final answer in a completion, and cleaning it up for comparison.

Everything here runs in the trainer process on untrusted text, so every step is linear in the
input and bounded: boxes are scanned at most `max_chars` characters deep, regexes have no nested
quantifiers over the same characters, and answers beyond the caps are refused, not processed.
"""

from __future__ import annotations

import re

_ANSWER_IS_RE = re.compile(r"answer\s*(?:is|was|would be|will be|=|:)\s*[:=]?", re.IGNORECASE)
_HASHES_RE = re.compile(r"####[ \t]*([^\n]*)")
_LAST_NUMBER_RE = re.compile(
    r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?(?![\d,])|-?\d+(?:\.\d+)?(?:/\d+)?|-?\.\d+")
# What may stand between two boxes that together form one answer: "\boxed{1}, \boxed{2}",
# "$\boxed{1}$ and $\boxed{2}$", "x = \boxed{1} \text{ or } x = \boxed{2}".
_BOX_SEPARATOR_RE = re.compile(
    r"(?:\s|\$|,|;|\\[,;!]|\\q?quad|\\text\{\s*(?:and|or|,)\s*\}|\band\b|\bor\b|\b[A-Za-z]\s*=)*")
_SENTENCE_END_RE = re.compile(r"\.(?=\s|$)|\*\*")
_COMMAND_ARG_RE = re.compile(r"\\[a-zA-Z]+\s*(?:\{[^{}]*\})?")

NO_ANSWER = "no_answer"  # nothing that looks like a final answer
TOO_LONG = "too_long"  # answer longer than max_answer_chars
TOO_DEEP = "too_deep"  # braces nested deeper than max_brace_depth


def _scan_group(text: str, open_idx: int, max_chars: int, max_depth: int) -> tuple[int, str]:
    """Finds the brace matching text[open_idx] == "{", skipping escaped braces like `\\{`.

    Returns (index of the closing brace, "") or (-1, reason). Scans at most max_chars characters,
    so a 100k-character or 5,000-deep box costs no more than a normal one.
    """
    depth = 0
    i, end = open_idx, min(len(text), open_idx + max_chars + 2)
    while i < end:
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == "{":
            depth += 1
            if depth > max_depth:
                return -1, TOO_DEEP
        elif c == "}":
            depth -= 1
            if depth == 0:
                return i, ""
        i += 1
    return -1, TOO_LONG if end < len(text) else NO_ANSWER


def _box_before(text: str, stop: int, max_chars: int, max_depth: int) -> tuple[int, int, str, str]:
    """The last `\\boxed{…}`/`\\fbox{…}` starting before `stop`: (start, end, content, reason)."""
    start = max(text.rfind("\\boxed", 0, stop), text.rfind("\\fbox", 0, stop))
    if start < 0:
        return -1, -1, "", NO_ANSWER
    i = start + (6 if text.startswith("\\boxed", start) else 5)
    while i < len(text) and text[i] in " \t":
        i += 1
    if i < len(text) and text[i] == "{":
        close, why = _scan_group(text, i, max_chars, max_depth)
        if close < 0:
            return start, -1, "", why
        return start, close + 1, text[i + 1 : close], ""
    # "\boxed 5": the argument is the next token.
    token = re.match(r"[^\s$]+", text[i : i + max_chars + 1])
    if not token:
        return start, -1, "", NO_ANSWER
    return start, i + token.end(), token.group(0), ""


def last_boxed(text: str, max_chars: int, max_depth: int) -> tuple[str | None, str]:
    """The content of the last box, joined with the boxes right before it when only separators
    stand between them ("$\\boxed{1}$ and $\\boxed{2}$" gives "1, 2"): (answer, "") or (None, reason).
    """
    start, _, content, why = _box_before(text, len(text), max_chars, max_depth)
    if start < 0 or why:
        return None, why
    parts = [content]
    for _ in range(7):
        prev, prev_end, prev_content, prev_why = _box_before(text, start, max_chars, max_depth)
        if prev < 0 or prev_why:
            break
        gap = text[prev_end:start]
        if len(gap) > 24 or not _BOX_SEPARATOR_RE.fullmatch(gap):
            break
        if prev_content != parts[0]:
            parts.insert(0, prev_content)
        start = prev
    return ", ".join(p.strip() for p in parts), ""


def _after_answer_is(text: str, max_chars: int) -> str | None:
    last = None
    for last in _ANSWER_IS_RE.finditer(text):
        pass
    if last is None:
        return None
    rest = text[last.end() : last.end() + max_chars + 64].lstrip(" \t*:")
    for open_, close in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if rest.startswith(open_):
            # The closing delimiter is the first one not escaped: "$\\$18$" is "\\$18".
            end = re.compile(r"(?<!\\)" + re.escape(close)).search(rest, len(open_))
            if end:
                return rest[len(open_) : end.start()]
            break
    line = rest.split("\n", 1)[0]
    cut = _SENTENCE_END_RE.search(line)
    line = line[: cut.start()] if cut else line
    return line if line.strip() else None


def _is_bare_answer(text: str) -> bool:
    """True if the whole text is just an answer ("18", "x = 2", "$\\frac{1}{2}$"), not prose."""
    text = text.strip()
    if not text or "\n" in text or len(text) > 200:
        return False
    return not re.search(r"[A-Za-z]{3,}", _COMMAND_ARG_RE.sub(" ", text))


def extract(text: str, fallback_last_number: bool, max_chars: int, max_depth: int,
            inside_tag: bool = False) -> tuple[str | None, str]:
    """`extract_answer`, also saying why there is no answer: (answer, "") or (None, reason), the
    reason being NO_ANSWER, TOO_LONG or TOO_DEEP."""
    if not inside_tag:
        close = text.rfind("</think>")
        if close >= 0:  # R1 style: only what follows the reasoning is the answer
            text = text[close + len("</think>"):]

        start = text.rfind("<answer>")
        end = text.find("</answer>", start + 8) if start >= 0 else -1
        if end >= 0:
            return extract(text[start + 8 : end], fallback_last_number, max_chars, max_depth, True)
    if "\\boxed" in text or "\\fbox" in text:
        answer, why = last_boxed(text, max_chars, max_depth)
        if why != NO_ANSWER:
            return answer, why
    answer = _after_answer_is(text, max_chars)
    if answer is not None:
        return answer, ""
    hashes = None
    for hashes in _HASHES_RE.finditer(text):
        pass
    if hashes is not None and hashes.group(1).strip():
        return hashes.group(1), ""
    if _is_bare_answer(text):
        return text, ""
    if fallback_last_number:
        number = None
        for number in _LAST_NUMBER_RE.finditer(text):
            pass
        if number is not None:
            return number.group(0), ""
    return None, NO_ANSWER


def extract_answer(text: str, fallback_last_number: bool = False, max_answer_chars: int = 1000,
                   max_brace_depth: int = 50) -> str | None:
    """Extracts the final answer from a completion.

    Only the text after the last `</think>` counts when there is one (the reasoning is not the
    answer). In order: the content of the last `<answer>…</answer>` (itself searched as below); else the
    last `\\boxed{…}`/`\\fbox{…}` (with the boxes right before it, for several answers); else what
    follows the last "answer is"/"answer:"; else what follows the last "####" (GSM8K); else the
    whole text if it is nothing but an answer ("18", "$x = 2$"); else, only with
    `fallback_last_number`, the last number in the text.

    Args:
      text: the completion.
      fallback_last_number: if no explicit answer is found, use the last number in the text.
      max_answer_chars: longer answers are refused (None).
      max_brace_depth: answers with braces nested deeper are refused (None).

    Returns:
      The answer as written (not yet cleaned), or None if there is none or it was refused.
    """
    answer, why = extract(as_text(text), fallback_last_number, max_answer_chars, max_brace_depth)
    return None if why else answer


def as_text(value) -> str:
    """Any input as a str that encodes cleanly (bytes may be non-UTF-8; str may hold surrogates)."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", errors="replace")
    text = value if isinstance(value, str) else str(value)
    return text.encode("utf-8", errors="replace").decode("utf-8")


_UNICODE = str.maketrans({
    "−": "-", "–": "-", "×": "\\times ", "·": "\\cdot ", "÷": "\\div ", "π": "\\pi ",
    "√": "\\sqrt", "∞": "\\infty ", "°": "^\\circ", "≤": "\\le ", "≥": "\\ge ", "≠": "\\ne ",
    "\u00a0": " ", "\u2009": " ", "\u202f": " ",
})
_DELIMITERS = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"), ("**", "**"))
_OUTER_BOX_RE = re.compile(r"^\\(?:boxed|fbox)\s*\{(.*)\}$", re.DOTALL)


def clean(answer: str) -> str:
    """Strips what is presentation, not value: delimiters, markdown, end punctuation, unicode."""
    s = answer.translate(_UNICODE).strip()
    for _ in range(4):
        before = s
        s = s.strip().rstrip(".,;:").strip()
        box = _OUTER_BOX_RE.match(s)
        if box:
            s = box.group(1)
        for open_, close in _DELIMITERS:
            if len(s) > len(open_) + len(close) and s.startswith(open_) and s.endswith(close):
                s = s[len(open_) : -len(close)]
        s = s.replace("\\displaystyle", "")
        if s == before:
            break
    return s.strip()
