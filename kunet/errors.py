"""The one base class of the errors a user can fix.

Every error kunet raises because of its input (a file, a folder, a setting, a request) is a
:class:`KunetError`, with a message that names the path or setting and the problem. The CLI prints these,
and the operating system's errors (a full disk, a read-only folder) and TensorFlow's, as one red line;
any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations


class KunetError(ValueError):
    """An input, file or setting kunet cannot use; the message names it and says what is wrong.

    A ``ValueError`` so that code catching the errors of the standard library's parsers catches these too.
    """


class ConfigError(KunetError):
    """A pipeline file or override that cannot be used; the message names the file and the key."""


def first_line(error: BaseException) -> str:
    """The first non-empty line of an error's message, for a one-line report (TensorFlow's run to pages; its
    ``OpError.message`` leaves out the op and node names that ``str()`` adds)."""
    text = getattr(error, "message", None) or str(error)
    return next((line.strip() for line in str(text).splitlines() if line.strip()), type(error).__name__)
