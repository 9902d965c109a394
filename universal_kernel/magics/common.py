"""What every magic shares: user mistakes as one-line `UsageError`s, and option parsing."""

from __future__ import annotations

import functools
import shlex

from IPython.core.error import UsageError

from ..errors import RuntimeFailure


def one_line(message: str) -> str:
    return " ".join(str(message).split())


def user_errors(func):
    """The runtime's typed errors become a one-line UsageError (shown without a traceback)."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except RuntimeFailure as exc:
            raise UsageError(one_line(exc.message)) from None

    return wrapper


def split_args(parser, line: str):
    """Parse a magic's line with shell quoting (quotes removed), errors as UsageError."""
    try:
        argv = shlex.split(line)
    except ValueError as exc:
        raise UsageError(f"cannot parse the options: {exc}") from None
    return parser.parse_args(argv)


def check_name(option: str, name: str | None) -> None:
    import keyword

    if name is not None and (not name.isidentifier() or keyword.iskeyword(name)):
        raise UsageError(f"{option} needs a Python variable name, not {name!r}")
