"""Errors meant for people, not for stack traces."""


class UserError(Exception):
    """A user mistake (bad config, path, address, dataset).

    The CLI prints `diffurl: error: <message>` on one line and exits with code 2.
    The message names the thing, the value, and what would be accepted.
    """
