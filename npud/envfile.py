"""Read the service's environment file the way systemd's ``EnvironmentFile=`` does.

The acceptance command (``python -m npud.smoke``) must check the configuration the service will
run, and the service gets its settings from ``~/.config/npud/npud.env`` (user units) or
``/etc/npud/npud.env`` (system units) through ``EnvironmentFile=``. This parser implements the
subset of systemd.exec(5)'s rules for that directive that such a file needs:

- one ``NAME=value`` per line; empty lines, lines starting with ``#`` or ``;`` and lines without
  ``=`` are ignored; whitespace around the name and around the value is dropped;
- an unquoted value keeps interior whitespace and quotes after its first character; a backslash
  keeps the next character (``\\\\`` is one backslash); a backslash at the end of a line continues
  the value on the next line;
- a ``'``-quoted value is taken verbatim (no escapes) and may span lines;
- a ``"``-quoted value may span lines; ``\\`` before ``"``, ``\\``, backquote or ``$`` keeps that
  character, before a newline continues the line, and before anything else is kept as is.

Not supported (an error names the line): text after a closing quote, an unterminated quote.
Names that are not valid variable names are skipped, as systemd skips them. Like systemd, no
``$VARIABLE`` expansion takes place and ``export`` is not a keyword.
"""

from __future__ import annotations

import re
from pathlib import Path

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_WHITESPACE = " \t\r"
_DOUBLE_QUOTE_ESCAPES = '"\\`$'


class EnvFileError(Exception):
    """The file cannot be read, or uses syntax this parser does not support."""


def parse_env_file(text: str, origin: str = "<env file>") -> tuple[dict[str, str], list[str]]:
    """The variables of an EnvironmentFile=, and the names it skipped as invalid."""
    values: dict[str, str] = {}
    skipped: list[str] = []
    pos, line_no = 0, 1
    while pos < len(text):
        end = text.find("\n", pos)
        end = len(text) if end < 0 else end
        line = text[pos:end].lstrip(_WHITESPACE)
        start_line = line_no
        if not line or line[0] in "#;" or "=" not in line:
            pos, line_no = end + 1, line_no + 1
            continue
        name = line[: line.index("=")].strip(_WHITESPACE)
        value_start = pos + (len(text[pos:end]) - len(line)) + line.index("=") + 1
        value, pos, consumed = _parse_value(text, value_start, origin, start_line)
        line_no += consumed + 1
        if _NAME.match(name):
            values[name] = value
        else:
            skipped.append(name)
    return values, skipped


def _parse_value(text: str, pos: int, origin: str, line_no: int) -> tuple[str, int, int]:
    """Parse one value from ``pos``; return it, the position after its line, and the newlines used."""
    while pos < len(text) and text[pos] in _WHITESPACE:
        pos += 1
    if pos < len(text) and text[pos] in "'\"":
        return _parse_quoted(text, pos, origin, line_no)
    out: list[str] = []
    newlines = 0
    while pos < len(text) and text[pos] != "\n":
        char = text[pos]
        if char == "\\":
            if pos + 1 >= len(text):
                pos += 1
                break
            if text[pos + 1] == "\n":  # line continuation
                pos, newlines = pos + 2, newlines + 1
                continue
            out.append(text[pos + 1])
            pos += 2
            continue
        out.append(char)
        pos += 1
    return "".join(out).rstrip(_WHITESPACE), pos + 1, newlines


def _parse_quoted(text: str, pos: int, origin: str, line_no: int) -> tuple[str, int, int]:
    quote = text[pos]
    pos += 1
    out: list[str] = []
    newlines = 0
    while True:
        if pos >= len(text):
            raise EnvFileError(f"{origin}:{line_no}: unterminated {quote}-quoted value")
        char = text[pos]
        if char == quote:
            pos += 1
            break
        if char == "\n":
            newlines += 1
        if quote == '"' and char == "\\" and pos + 1 < len(text):
            following = text[pos + 1]
            if following == "\n":
                pos, newlines = pos + 2, newlines + 1
                continue
            if following in _DOUBLE_QUOTE_ESCAPES:
                out.append(following)
                pos += 2
                continue
        out.append(char)
        pos += 1
    end = text.find("\n", pos)
    end = len(text) if end < 0 else end
    if text[pos:end].strip(_WHITESPACE):
        raise EnvFileError(f"{origin}:{line_no + newlines}: text after the closing {quote} is not supported")
    return "".join(out), end + 1, newlines


def read_env_file(path: Path) -> tuple[dict[str, str], list[str]]:
    """Read and parse ``path``; :class:`EnvFileError` if it cannot be read or parsed."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise EnvFileError(f"cannot read {path}: {exc}") from None
    return parse_env_file(text, str(path))
