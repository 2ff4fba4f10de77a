"""User errors: bad configs and bad data. The CLI prints them as one line and exits non-zero, no traceback."""

WORKER_TRACEBACK = "\nOriginal Traceback"  # how torch's DataLoader re-raises an error from a worker process


class UserError(Exception):
    """Something the user can fix (a path, a column name, a config value); the message says what to do."""

    def __init__(self, message: str = ""):
        # a DataLoader worker's UserError comes back re-created around the worker's traceback: keep its own message
        if WORKER_TRACEBACK in message and "UserError: " in message:
            message = message.rpartition("UserError: ")[2].strip()
        super().__init__(message)
