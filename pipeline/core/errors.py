"""User errors: bad configs and bad data. The CLI prints them as one line and exits non-zero, no traceback."""


class UserError(Exception):
    """Something the user can fix (a path, a column name, a config value); the message says what to do."""
