"""The one exception family users see: a message that names the problem and a hint that names the fix."""


class KilnError(Exception):
    """An error a user can act on; the CLI prints it as one line, without a traceback."""

    def __init__(self, message: str, hint: str = ""):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message
