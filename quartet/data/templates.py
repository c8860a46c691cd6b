"""Turn a row's prompt/response into text chunks, each marked as a training target or not.

Why chunks and not one string plus an offset: tokenizing each chunk separately and concatenating
makes the response-only mask exact (no BPE merge can straddle the prompt/response boundary), and
the same mechanism gives multi-turn masks (every assistant turn is a target chunk).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from quartet.data.sources import DataError

__all__ = ["Chunk", "chat_chunks", "fill_template", "prompt_response_chunks", "render_prompt"]

Chunk = tuple[str, bool]  # (text, is_target)


def _as_messages(value: Any, role: str) -> list[dict[str, str]]:
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    if isinstance(value, list) and all(isinstance(m, dict) and "role" in m for m in value):
        return list(value)
    raise DataError(f"expected a string or a list of {{role, content}} messages, got "
                    f"{type(value).__name__}")


def _render(tokenizer: Any, messages: list[dict[str, str]], generation_prompt: bool) -> str:
    if not messages:
        return ""
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=generation_prompt
    )


def chat_chunks(tokenizer: Any, messages: list[dict[str, str]]) -> list[Chunk]:
    """Chunks of a whole conversation; every assistant turn (with its end token) is a target.

    Renders growing prefixes of the conversation and takes differences, which requires the
    template to be prefix-stable (rendering more messages only appends text).
    """
    chunks: list[Chunk] = []
    done = ""
    for k, message in enumerate(messages):
        if message.get("role") == "assistant":
            opened = _render(tokenizer, messages[:k], generation_prompt=True)
            if not opened.startswith(done):
                raise DataError("chat template is not prefix-stable; cannot mask turns")
            chunks.append((opened[len(done):], False))
            done = opened
            target = True
        else:
            target = False
        full = _render(tokenizer, messages[: k + 1], generation_prompt=False)
        if not full.startswith(done):
            raise DataError("chat template is not prefix-stable; cannot mask turns")
        chunks.append((full[len(done):], target))
        done = full
    return [c for c in chunks if c[0]]


def fill_template(template: str, prompt: str, slots: Mapping[str, Any] | None = None,
                  where: str = "") -> str:
    """``template`` with ``{}`` set to ``prompt`` and named slots (``{score:.0f}``) set from
    ``slots`` (a row's fields, or the condition given for generation in conditional SFT).

    A slot with no value raises :class:`DataError` naming the slot and ``where`` (the file).
    """
    try:
        return template.format(prompt, **(slots or {}))
    except KeyError as err:
        have = sorted(slots or {})
        raise DataError(f"--data.input_template slot {{{err.args[0]}}} has no value in "
                        f"{where or 'the row'}; fields that exist: {have}") from None
    except (ValueError, IndexError) as err:
        raise DataError(f"--data.input_template {template!r} cannot be filled from "
                        f"{where or 'the row'}: {err}") from None


def render_prompt(tokenizer: Any, value: Any, apply_chat_template: bool,
                  input_template: str | None, slots: Mapping[str, Any] | None = None,
                  where: str = "") -> tuple[str, list[int]]:
    """A prompt ready for generation: its text and token ids (chat template with the
    generation prompt opened, or ``input_template`` filled)."""
    if apply_chat_template:
        messages = value if isinstance(value, list) else [{"role": "user", "content": value}]
        text = tokenizer.apply_chat_template(messages, tokenize=False,
                                             add_generation_prompt=True)
        return text, tokenizer(text, add_special_tokens=False)["input_ids"]
    if not isinstance(value, str):
        raise DataError(f"prompt must be a string without --data.apply_chat_template, got "
                        f"{type(value).__name__}")
    text = fill_template(input_template, value, slots, where) if input_template else value
    return text, tokenizer(text)["input_ids"]


def prompt_response_chunks(
    tokenizer: Any,
    prompt: Any,
    response: Any,
    apply_chat_template: bool,
    input_template: str | None,
    slots: Mapping[str, Any] | None = None,
    where: str = "",
) -> list[Chunk]:
    """Chunks for one prompt and one response (the response is the target).

    With a chat template, ``prompt`` may be a message list (or a string, sent as a user turn) and
    ``response`` a string or a message list whose last message is the answer. ``prompt`` may be
    None when ``response`` is a whole conversation (preference rows that hold full chats).
    ``slots`` fill named fields of ``input_template`` (see :func:`fill_template`).
    """
    if apply_chat_template:
        if isinstance(response, list):
            resp_msgs = _as_messages(response, "assistant")
            prompt_msgs = _as_messages(prompt, "user") if prompt else resp_msgs[:-1]
            answer = resp_msgs[-1]
        else:
            prompt_msgs = _as_messages(prompt, "user") if prompt else []
            answer = {"role": "assistant", "content": str(response)}
        opened = _render(tokenizer, prompt_msgs, generation_prompt=True)
        full = _render(tokenizer, [*prompt_msgs, answer], generation_prompt=False)
        if not full.startswith(opened):
            raise DataError("chat template output does not start with the rendered prompt")
        return [c for c in ((opened, False), (full[len(opened):], True)) if c[0]]
    if prompt is None:
        prompt = ""
    if not isinstance(prompt, str) or not isinstance(response, str):
        raise DataError("prompt and response must be strings without --data.apply_chat_template")
    if input_template:
        prompt = fill_template(input_template, prompt, slots, where)
    return [c for c in ((prompt, False), (response, True)) if c[0]]
