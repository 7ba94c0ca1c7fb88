"""Errors a user can cause. The CLI prints them as one line and exits with status 2."""


class UserError(Exception):
    """Bad input: a config field, a data file line, a model path, a task name.

    The message names the field or `file:line` and says what is wrong, in one line.
    """
