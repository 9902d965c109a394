"""`{name}` and `{name.attr}` in a prompt, filled from the user namespace.

Only a brace pair around a plain (dotted) identifier whose root exists in the namespace is
replaced; everything else -- code blocks, JSON, dict literals, format strings of unknown names --
stays exactly as written. `{{name}}` keeps a literal `{name}`. Format specs (`{x:.2f}`), conversions
(`{x!r}`) and expressions (`{d[k]}`, `{x + 1}`) are not names: they too stay as written.
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


def interpolate(text: str, namespace: dict, left: list[str] | None = None) -> str:
    """`text` with its `{name}`s filled; each `{name}` that stays as written (its name, or an attribute on
    the way, is not there) is appended to `left`, once. An escaped `{{name}}` is never counted."""
    def fill(match: re.Match) -> str:
        escaped, path = match.group(1), match.group(2)
        if escaped is not None:
            return "{" + escaped + "}" if _lookup(escaped, namespace) is not _MISSING else match.group(0)
        value = _lookup(path, namespace)
        if value is _MISSING:
            if left is not None and match.group(0) not in left:
                left.append(match.group(0))
            return match.group(0)
        return str(value)

    return _PATTERN.sub(fill, text)
