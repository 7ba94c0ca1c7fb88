"""Errors the CLI prints as one line, with no traceback unless `--debug`: bad input (exit status 2)
and a machine that cannot start the run (exit status 1)."""


class UserError(Exception):
    """Bad input: a config field, a data file line, a model path, a task name.

    The message names the field or `file:line` and says what is wrong, in one line.
    """


class SetupError(Exception):
    """This machine, not the input, stops the run from starting (ranks that cannot meet).

    The CLI prints it as one line, with what to do instead, and exits with status 1.
    """
