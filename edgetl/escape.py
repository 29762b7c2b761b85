"""Text a user handed edgetl (class folder names, device names from a results.json, file
names) made safe for where it is shown: a one-line terminal message, a Markdown cell, a
file name in a message. The one place these escapes are defined; JSON needs none beyond
``json.dumps`` (see :func:`edgetl.artifacts.write_json`)."""
from __future__ import annotations

import os
import unicodedata

# Markdown's inline specials (CommonMark lets a backslash escape any ASCII punctuation), and
# `|`, which ends a table cell. '&' becomes an entity so '&lt;' stays text.
MD_SPECIAL = set("\\`*_{}[]()<>#!|~")
LINE_BREAKING = {"Cc", "Zl", "Zp"}  # control characters, U+2028 LINE / U+2029 PARAGRAPH SEPARATOR
SHOWN_MAX = 200  # a user-given name is cut to this many characters in a message


def is_utf8(name: str) -> bool:
    """False for a name that came from bytes that are not UTF-8 (Python keeps them as
    surrogate escapes, which cannot be encoded back)."""
    try:
        name.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def shown(name: object, limit: int = SHOWN_MAX) -> str:
    """A user-given name for a one-line message: printable as it is, else its repr (a name
    with a newline, a control character or non-UTF-8 bytes shows its escapes, never breaks
    the line or the terminal's encoding); cut to ``limit`` characters."""
    s = str(name)
    if not is_utf8(s):
        s = repr(os.fsencode(s))  # the bytes, escaped: b'caf\xe9'
    elif any(unicodedata.category(c) in LINE_BREAKING for c in s):
        s = repr(s)
    return s if len(s) <= limit else s[:limit] + f"... ({len(s)} characters)"


def path(p: object) -> str:
    """A file path for a message: :func:`shown` without the length cut."""
    return shown(p, limit=10**6)


def md(text: object) -> str:
    """``text`` as literal Markdown inline text (table cells included): specials are
    backslash-escaped, '&' is an entity, line breaks and control characters shown as escapes."""
    s = shown(text, limit=10**6)
    out = []
    for i, c in enumerate(s):
        if c == "&":
            out.append("&amp;")
        elif c == "_" and 0 < i < len(s) - 1 and s[i - 1].isalnum() and s[i + 1].isalnum():
            out.append(c)  # inside a word ('model_int8') an underscore is never emphasis
        else:
            out.append("\\" + c if c in MD_SPECIAL else c)
    return "".join(out)


def plot_text(text: object) -> str:
    """Text for a matplotlib label: '$' escaped (two would start mathtext, which can fail to
    parse a class name and abort the plot); line breaks shown as escapes."""
    return shown(text, limit=10**6).replace("$", r"\$")


def shell(arg: object) -> str:
    """``arg`` quoted for a POSIX shell (a command a message tells the user to run): shlex's
    quoting, or bash's $'...' with byte escapes for a name that is not UTF-8 or holds a
    line break or control character."""
    import shlex

    s = str(arg)
    if is_utf8(s) and not any(unicodedata.category(c) in LINE_BREAKING for c in s):
        return shlex.quote(s)
    out = []
    for b in os.fsencode(s):
        c = chr(b)
        out.append(c if b < 128 and (c.isalnum() or c in "/._-+ ,:@=") else f"\\x{b:02x}")
    return "$'" + "".join(out) + "'"
