"""Errors meant for people, not for stack traces."""


class UserError(Exception):
    """A user mistake (bad config, path, address, dataset).

    The CLI prints `diffurl: error: <message>` on one line and exits with code 2.
    The message names the thing, the value, and what would be accepted.
    """


class RunFailed(Exception):
    """A run cannot go on (a learner died, a rollout keeps failing). The message says how to resume;
    the CLI prints it on one line and exits with code 1."""
