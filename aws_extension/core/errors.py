"""Errors whose message is fit for a person: shown as-is by the CLI and the tab, never a traceback."""


class UserError(Exception):
    """A failure the user can understand and act on."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class ConfigError(UserError):
    """Missing or wrong settings: credentials, region, bucket, role, image."""


class NotFound(UserError):
    """A model, endpoint or dataset that does not exist."""


class Refused(UserError):
    """Input refused by policy or validation before anything was written."""


class TransferError(UserError):
    """An upload or download that failed; nothing half-written is left behind."""


class Interrupted(TransferError):
    """A transfer cut off by the network or the user; running it again resumes it."""
