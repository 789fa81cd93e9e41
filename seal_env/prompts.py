"""SEAL's prompts: the self-edit templates and the question-answering prompt.

The self-edit templates are SEAL's own (``general-knowledge/src/data_generation/make_squad_data.py``); the
answer prompt is SEAL's base-model template with the question prefixed by ``Topic: {title}``. For a tokenizer
with a chat template (an instruct model) the same text is sent as a user message and the assistant turn is
opened, so the model answers in its trained format.
"""

from __future__ import annotations

from typing import Any

SELF_EDIT_TEMPLATES: dict[str, str] = {
    "implications": (
        "Let's read the following passage and produce a list of implications "
        "derived directly or indirectly from the content.\n\n"
        "Passage:\n{title}\n{context}\n\nImplications:\n"
    ),
    "implications-long": (
        "Let's read the following passage and produce a long list of implications "
        "derived directly or indirectly from the content.\n\n"
        "Passage:\n{title}\n{context}\n\nImplications:\n"
    ),
    "implications-very-long": (
        "Let's read the following passage and produce a very long list of implications "
        "derived directly or indirectly from the content.\n\n"
        "Passage:\n{title}\n{context}\n\nImplications:\n"
    ),
    "rewrite": (
        "Let's read the following passage and rewrite it in a few different ways, each one separated by a newline.\n\n"
        "Passage:\n{title}\n{context}\n\nRewritten passages:\n"
    ),
    "self-qa": (
        "Let's read the following passage and rewrite it in a question-answer format.\n\n"
        "Passage:\n{title}\n{context}\n\nQuestion 1: "
    ),
}

ANSWER_TEMPLATE = "Let's answer a question directly and concisely.\nQuestion: Topic: {title}\n{question}\nAnswer:\n"
ANSWER_SYSTEM = "You are an assistant to answer a question directly and concisely."


def uses_chat(tokenizer: Any) -> bool:
    """True if the tokenizer has a chat template (instruct models get their prompts wrapped in it)."""
    return getattr(tokenizer, "chat_template", None) is not None


def resolve_template(template: str) -> str:
    """A template name from :data:`SELF_EDIT_TEMPLATES`, or a user template containing ``{title}`` and ``{context}``."""
    if template in SELF_EDIT_TEMPLATES:
        return SELF_EDIT_TEMPLATES[template]
    if "{context}" in template:
        try:
            template.format(title="", context="")
        except (KeyError, IndexError, ValueError) as e:
            raise ValueError(f"user template may only use the fields {{title}} and {{context}}: {e}") from None
        return template
    raise ValueError(
        f"unknown self-edit template {template!r}: use one of {sorted(SELF_EDIT_TEMPLATES)} "
        "or a template string containing '{context}' (and optionally '{title}')"
    )


def _chat(tokenizer: Any, user: str, system: str | None = None) -> str:
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def self_edit_prompt(title: str, context: str, template: str = "implications", tokenizer: Any = None) -> str:
    """The prompt that asks a model to write a self-edit for a passage (chat-wrapped for instruct tokenizers).

    For chat models the template's trailing cue (e.g. ``Implications:``) stays inside the user message and the
    assistant turn is opened after it.
    """
    text = resolve_template(template).format(title=title, context=context)
    return _chat(tokenizer, text.rstrip()) if tokenizer is not None and uses_chat(tokenizer) else text


def answer_prompt(title: str, question: str, tokenizer: Any = None) -> str:
    """The no-context question prompt: the model sees the article's title and the question, never the passage."""
    if tokenizer is not None and uses_chat(tokenizer):
        return _chat(tokenizer, f"Topic: {title}\n{question}", system=ANSWER_SYSTEM)
    return ANSWER_TEMPLATE.format(title=title, question=question)


def topic_prompt(title: str, tokenizer: Any = None) -> str:
    """:func:`answer_prompt` without a question: what the model expects after the topic alone (the PMI reward's
    reference)."""
    if tokenizer is not None and uses_chat(tokenizer):
        return _chat(tokenizer, f"Topic: {title}", system=ANSWER_SYSTEM)
    return ANSWER_TEMPLATE.format(title=title, question="").replace("\n\nAnswer:", "\nAnswer:")
