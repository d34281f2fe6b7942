"""Text a base sent, made safe to show: in pod status, in Events and in log lines.

Arklet answers carry free text (error messages, stack traces) that vkprovider repeats to users. A base is not
trusted: its text could hold newlines or terminal escapes (a forged log line, a garbled ``kubectl describe``) or
be megabytes long. ``clean`` keeps the text readable and bounded: control characters (C0, DEL, C1 and the
Unicode line/paragraph separators) become spaces, runs of whitespace collapse, and the result is cut to a
length with an ellipsis.
"""

from __future__ import annotations

import re
from typing import Final

#: Longest text from a base that goes into a pod's status message or an Event.
MAX_STATUS_TEXT: Final = 1024
#: Longest text from a base that goes into one log line.
MAX_LOG_TEXT: Final = 512

_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u200b-\u200f\u202a-\u202e\u2066-\u2069]+")
_SPACES: Final = re.compile(r" {2,}")


def clean(text: object, limit: int = MAX_STATUS_TEXT) -> str:
    """``text`` on one line, without control characters, at most ``limit`` characters."""
    if text is None:
        return ""
    value = text if isinstance(text, str) else str(text)
    if len(value) > limit * 4:  # do not run the regexes over megabytes only to cut them afterwards
        value = value[: limit * 4]
    value = _SPACES.sub(" ", _CONTROL.sub(" ", value)).strip()
    if len(value) > limit:
        value = value[: max(0, limit - 3)].rstrip() + "..."
    return value
