"""`{name}` and `{name.attr}` in a prompt, filled from the user namespace.

Only a brace pair around a plain (dotted) identifier whose root exists in the namespace is
replaced; everything else -- code blocks, JSON, dict literals, format strings of unknown names --
stays exactly as written. `{{name}}` keeps a literal `{name}`.
"""

from __future__ import annotations

import re

_NAME = r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*"
_PATTERN = re.compile(r"\{\{(" + _NAME + r")\}\}|\{(" + _NAME + r")\}")
_MISSING = object()


def _lookup(path: str, namespace: dict):
    root, *attrs = path.split(".")
    if root not in namespace:
        return _MISSING
    value = namespace[root]
    for attr in attrs:
        try:
            value = getattr(value, attr)
        except Exception:
            return _MISSING
    return value


def interpolate(text: str, namespace: dict) -> str:
    def fill(match: re.Match) -> str:
        escaped, path = match.group(1), match.group(2)
        if escaped is not None:
            return "{" + escaped + "}" if _lookup(escaped, namespace) is not _MISSING else match.group(0)
        value = _lookup(path, namespace)
        return match.group(0) if value is _MISSING else str(value)

    return _PATTERN.sub(fill, text)
