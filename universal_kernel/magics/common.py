"""What every magic shares: user mistakes as one-line `UsageError`s, and option parsing (a trailing
`# comment` on a magic's line is dropped here, for every magic), and the DataFrame `--column` writes to."""

from __future__ import annotations

import functools
import re
import shlex
import sys

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


def drop_comment(line: str) -> str:
    """The line without its trailing `# comment`: IPython hands a magic the rest of its line, comment
    included, and people annotate their lines. As in bash, `#` starts a comment only at the start of a
    word and outside quotes, so `"#1"`, `'a # b'` and `df#1` stay. Inside quotes a backslash escapes the
    next character (a Python string), and `\\#` outside quotes is a literal `#`."""
    quote, escaped, previous = None, False, " "
    for i, ch in enumerate(line):
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and previous.isspace():
            return line[:i].rstrip()
        previous = ch
    return line


def split_args(parser, line: str):
    """Parse a magic's line with shell quoting (quotes removed), errors as UsageError."""
    try:
        argv = shlex.split(drop_comment(line))
    except ValueError as exc:
        raise UsageError(f"cannot parse the options: {exc}") from None
    return parser.parse_args(argv)


def check_name(option: str, name: str | None) -> None:
    import keyword

    if name is not None and (not name.isidentifier() or keyword.iskeyword(name)):
        raise UsageError(f"{option} needs a Python variable name, not {name!r}")


_COLUMN_EXPR = re.compile(r"^(?P<frame>.+?)\s*(?:\.\s*(?P<attr>[A-Za-z_]\w*)|\[\s*(?P<q>['\"])(?P<key>.+?)(?P=q)\s*\])$",
                          re.S)


def column_target(shell, expr: str, frame_type=None, example: str = "df"):
    """The DataFrame that `--column` writes into: EXPR must be one of its columns. `frame_type` is the kind
    of frame expected (a pandas DataFrame unless given: the Dask magics pass theirs)."""
    match = _COLUMN_EXPR.match(expr.strip())
    if not match:
        raise UsageError(f"--column needs EXPR to be a DataFrame column: {example}.text or {example}['text']")
    try:
        frame = shell.ev(match.group("frame"))
    except Exception as exc:
        raise UsageError(f"cannot evaluate {match.group('frame')!r}: {type(exc).__name__}: {exc}") from None
    if frame_type is None:
        pd = sys.modules.get("pandas")
        frame_type = pd.DataFrame if pd is not None else ()
    if not isinstance(frame, frame_type):
        raise UsageError(f"--column needs EXPR to be a DataFrame column; {match.group('frame')} is a "
                         f"{type(frame).__name__}")
    return frame
