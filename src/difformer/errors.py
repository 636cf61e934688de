"""The one exception type for problems a user can fix; the CLI prints it as one line and exits 2."""


class DifformerError(Exception):
    """Bad input, bad configuration or a resource problem, with a message meant for the user."""
