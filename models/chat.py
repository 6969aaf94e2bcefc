"""Chat templates, rendered in a sandbox: a template from a checkpoint cannot run code.

Rendering follows transformers' `apply_chat_template`: an immutable sandboxed Jinja
environment with `trim_blocks` and `lstrip_blocks`, the conversation as `messages`, the
special tokens by name, and `raise_exception` for templates that reject a conversation.
Its ranges hold at most a million items in all (RANGE_BUDGET), so a template cannot loop
for hours.
"""

from __future__ import annotations

import json
from datetime import datetime

from tilesim.errors import CheckpointError, GenerationError, TilesimError


def _raise(message: str) -> None:
    raise GenerationError(f"the chat template refused the conversation: {message}")


# The items all of a render's ranges may hold. jinja's sandbox refuses one range of more than
# 100,000 items but not nested ones: range(100000) in range(100000) ran for hours. A chat
# template loops over the messages; a range, where it has one, is short.
RANGE_BUDGET = 1_000_000


def _counted_range(budget: int):
    left = [budget]

    def counted(*args) -> range:
        items = range(*args)
        if len(items) > left[0]:
            raise OverflowError(f"its ranges hold more than {budget:,} items in all")
        left[0] -= len(items)
        return items

    return counted


def render_chat(
    template: str, messages: list[dict[str, str]], *, add_generation_prompt: bool = True, **tokens: str
) -> str:
    from jinja2 import TemplateError
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = lambda value, indent=None: json.dumps(value, indent=indent, ensure_ascii=False)
    env.globals["raise_exception"] = _raise
    env.globals["range"] = _counted_range(RANGE_BUDGET)
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(template).render(
            messages=messages, add_generation_prompt=add_generation_prompt, **tokens
        )
    except TilesimError:  # raise_exception: the template's own refusal
        raise
    except (TemplateError, ArithmeticError, TypeError, ValueError, LookupError, RecursionError) as exc:
        # The template is the checkpoint's code: the sandbox refuses a range past 100,000 with an
        # OverflowError, and `1 / 0` or `"a" + 1` fail as in Python.
        raise CheckpointError(f"the checkpoint's chat template does not render: {exc}") from None
