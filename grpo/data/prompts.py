"""Prompt templates for problems: R1 (`<think>` then `\\boxed{}`), the model's chat template, plain.

"chat" puts the problem with the step-by-step/boxed instruction DeepSeek recommends for R1 models
into the model's own chat template; the plain templates ("r1", "boxed", "plain") need no tokenizer.
"""

from __future__ import annotations

from models.tokenizer import PROMPT_TEMPLATES

TEMPLATES = ("r1", "chat", "boxed", "plain")


def default_template(tokenizer) -> str:
    """'chat' when the tokenizer has a chat template (instruct/R1 models), else 'r1' (base models)."""
    return "chat" if tokenizer is not None and tokenizer.chat_template else "r1"


def render_prompt(problem: str, template: str, tokenizer=None) -> str:
    """The prompt text for one problem.

    Args:
      problem: the problem statement.
      template: one of TEMPLATES.
      tokenizer: a models.tokenizer.Tokenizer; needed for "chat".
    """
    if template == "chat":
        if tokenizer is None or not tokenizer.chat_template:
            raise ValueError("the 'chat' prompt template needs a tokenizer with a chat template; "
                             "use 'r1', 'boxed' or 'plain'")
        return tokenizer.render_prompt(PROMPT_TEMPLATES["boxed"].format(problem=problem), "chat")
    if template not in TEMPLATES:
        raise ValueError(f"unknown prompt template {template!r}; known: {list(TEMPLATES)}")
    return PROMPT_TEMPLATES[template].format(problem=problem)
