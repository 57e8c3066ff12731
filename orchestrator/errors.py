"""Errors meant for people, not for stack traces."""
import re

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class UserError(Exception):
    """A user mistake (bad config, path, address, dataset).

    The CLI prints `diffurl: error: <message>` on one line and exits with code 2.
    The message names the thing, the value, and what would be accepted.
    """


class RunFailed(Exception):
    """A run cannot go on (a learner died, a rollout keeps failing). The message says how to resume;
    the CLI prints it on one line and exits with code 1."""


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped a run; the message says where it stopped and how to go on. The CLI prints it on one line
    and exits with code 130, as for any interrupt."""


def one_line(error: BaseException) -> str:
    """`Type: first line of the message`, without terminal colour codes; for a Ray task error, of its cause."""
    cause = getattr(error, "cause", None) or error
    text = _ANSI.sub("", str(cause)).strip().splitlines()
    return f"{type(cause).__name__}: {text[0]}" if text else type(cause).__name__
