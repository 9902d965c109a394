"""Generation: the runtime part. The streaming itself is the runtime's (`Runtime.stream`)."""

from __future__ import annotations

from ..errors import InvalidRequest

ROLES = ("system", "developer", "user", "assistant", "tool")


def check_messages(messages: list[dict]) -> list[dict]:
    """Check chat messages and flatten text parts into plain strings."""
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("messages must be a non-empty list", param="messages")
    flat = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise InvalidRequest(f"messages[{i}] needs a role of system, user or assistant", param="messages")
        content = message.get("content")
        if isinstance(content, list):
            texts = []
            for part in content:
                if not isinstance(part, dict) or part.get("type") != "text":
                    raise InvalidRequest(f"messages[{i}]: only text content parts are supported", param="messages")
                texts.append(str(part.get("text", "")))
            content = "".join(texts)
        elif content is None:
            content = ""
        elif not isinstance(content, str):
            raise InvalidRequest(f"messages[{i}].content must be a string or a list of text parts",
                                 param="messages")
        role = "system" if message["role"] == "developer" else message["role"]
        flat.append({"role": role, "content": content})
    return flat


class Generation:
    """A generation's work for a model's worker: run alone (`__call__`), or, on a backend that decodes
    generations together, join its batch (`begin`; scheduler.BatchingWorker steps it)."""

    def __init__(self, prompt, messages, params):
        self.prompt, self.messages, self.params = prompt, messages, params

    def __call__(self, instance, emit, cancelled):
        return instance.generate(self.prompt, self.messages, self.params, emit, cancelled)

    def begin(self, instance, emit, cancelled):
        return instance.begin(self.prompt, self.messages, self.params, emit, cancelled)


def work(ctx):
    return Generation(ctx.inputs["prompt"], ctx.inputs["messages"], ctx.inputs["params"])
