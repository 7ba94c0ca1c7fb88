"""Errors a user can cause. The CLI prints them as one line and exits with status 2."""


class UserError(Exception):
    """Bad input: a config field, a data file line, a model path, a task name.

    The message names the field or `file:line` and says what is wrong, in one line.
    """


class SetupError(Exception):
    """This machine, not the input, stops the run from starting (ranks that cannot meet).

    The CLI prints it as one line, with what to do instead, and exits with status 1.
    """
