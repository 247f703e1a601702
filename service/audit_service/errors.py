"""Domain errors of the service. Imports nothing from the package; the gRPC layer maps them to codes."""

from __future__ import annotations


class AuditServiceError(Exception):
    """Base class of the service's own errors."""


class ConfigError(AuditServiceError):
    """Configuration is invalid; the message is one line naming the setting.

    Attributes:
        setting: name of the environment variable or option at fault.
    """

    def __init__(self, setting: str, detail: str) -> None:
        self.setting = setting
        super().__init__(f"{setting}: {detail}")


class InvalidArgumentError(AuditServiceError):
    """A request argument is malformed.

    Attributes:
        field: the request field at fault, e.g. "page_token".
    """

    def __init__(self, field: str, detail: str) -> None:
        self.field = field
        super().__init__(f"{field}: {detail}")


class UnauthenticatedError(AuditServiceError):
    """No valid credentials: missing, malformed, badly signed or expired bearer token."""


class PermissionDeniedError(AuditServiceError):
    """The caller is known but may not do this (e.g. ask for another tenant)."""


class NotFoundError(AuditServiceError):
    """The requested thing does not exist (or is not visible to the caller)."""


class UnavailableError(AuditServiceError):
    """A dependency (PostgreSQL, NATS) cannot be reached right now; retrying later may succeed."""


class ShuttingDownError(UnavailableError):
    """The server is shutting down; the call may be retried (a tail resumes from its last checkpoint)."""


class ResourceExhaustedError(AuditServiceError):
    """The server is at a limit it keeps to protect itself (e.g. the bytes its reads may hold); retry later."""


class AbortedError(AuditServiceError):
    """A conditional change lost a race: the thing changed since the revision the caller named; re-read, retry."""


class AlreadyExistsError(AuditServiceError):
    """What the call would create exists already (e.g. a destination of the same name)."""


class FailedPreconditionError(AuditServiceError):
    """The system is not in a state the call needs (e.g. a destination still named by alert rules)."""


class DeliveryError(AuditServiceError):
    """Sending to a destination or webhook failed.

    Attributes:
        retryable: whether the same request may succeed later (timeouts, refused or dropped connections, 408,
            429, 5xx); False when the receiver refused it for what it is (other 4xx) or the destination's
            address is refused.
        reason: what went wrong, for logs and the destination's status; never holds a secret (no header value,
            no URL query string).
        status: the HTTP status of the answer, None when there was none.
    """

    def __init__(self, retryable: bool, reason: str, status: int | None = None) -> None:
        self.retryable = retryable
        self.reason = reason
        self.status = status
        super().__init__(reason)
