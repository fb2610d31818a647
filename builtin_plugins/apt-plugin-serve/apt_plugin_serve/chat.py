"""How a chat's ``messages`` become the prompt of a model that is not a chat model.

A chat template is a Jinja template (run in Jinja's sandbox, as ``transformers`` runs a tokenizer's chat
template) over ``messages``: a list of ``{"role", "content"}`` where content is the message's text (its
images and audio go to the model's encoders, not into the prompt). The default joins the contents in
order, with nothing added: a user message "what digit is this? " with an image is exactly the prompt the
digits model was trained on, and a conversation is continued as one text. A pipeline sets another in
``[tool.serve] chat_template`` (read from the run's ``pipeline.json``); ``--chat-template`` overrides both.
"""

from __future__ import annotations

from typing import Any

from jinja2 import StrictUndefined, TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from apt_sdk import UserError

from .errors import APIError

DEFAULT_TEMPLATE = "{% for message in messages %}{{ message.content }}{% endfor %}"


def _refuse(message: str) -> None:
    """``raise_exception("...")`` in a template refuses the request with that message (as in transformers)."""
    raise _Refused(message)


class _Refused(Exception):
    pass


class ChatTemplate:
    def __init__(self, source: str = DEFAULT_TEMPLATE, where: str = "the default chat template") -> None:
        self.source, self.where = source, where
        environment = ImmutableSandboxedEnvironment(undefined=StrictUndefined, keep_trailing_newline=True)
        environment.globals["raise_exception"] = _refuse
        try:
            self.template = environment.from_string(source)
        except TemplateError as exc:
            line = f" (line {exc.lineno})" if getattr(exc, "lineno", None) else ""
            raise UserError(f"{where} is not a valid Jinja template: {exc}{line}") from None

    def render(self, messages: list[dict[str, Any]]) -> str:
        try:
            return self.template.render(messages=messages, add_generation_prompt=True)
        except _Refused as exc:
            raise APIError(400, f"the chat template refuses these messages: {exc}", "messages") from None
        except TemplateError as exc:
            raise APIError(400, f"the chat template ({self.where}) failed on these messages: {exc}",
                           "messages") from None
