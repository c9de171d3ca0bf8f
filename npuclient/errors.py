"""One error hierarchy for both sides of the wire.

Every JSON-RPC error npud can send is a subclass of :class:`RpcError` with its code as a class
attribute. The daemon raises them and turns them into error objects; the client turns error
objects back into the same classes (:func:`error_from_object`). CONTRACT.md lists them all.
The client's own failures (no daemon, an untrusted server, a bad reply, a timeout) are at the end.
"""

from __future__ import annotations

from typing import Any, ClassVar

from msgspec import UNSET

from .protocol import ErrorObject, ErrorResponse, RequestId


class NpuClientError(Exception):
    """Base of everything npuclient raises."""


class RpcError(NpuClientError):
    """An error with a JSON-RPC error object. Subclasses fix ``code``."""

    code: ClassVar[int] = -32603
    default_message: ClassVar[str] = "internal error"

    def __init__(self, message: str | None = None, data: Any = UNSET) -> None:
        self.message = message or self.default_message
        self.data = data
        super().__init__(self.message)

    def to_object(self) -> ErrorObject:
        return ErrorObject(code=self.code, message=self.message, data=self.data)

    def reply(self, request_id: RequestId = None) -> ErrorResponse:
        """The JSON-RPC error response carrying this error."""
        return ErrorResponse(id=request_id, error=self.to_object())

    def data_field(self, name: str) -> Any:
        """A field of ``data`` whether it is a Struct (daemon side) or a dict (client side)."""
        if isinstance(self.data, dict):
            return self.data.get(name)
        return getattr(self.data, name, None)

    def int_field(self, name: str) -> int | None:
        value = self.data_field(name)
        return value if isinstance(value, int) and not isinstance(value, bool) else None


# --- standard JSON-RPC 2.0 codes


class ParseError(RpcError):
    code = -32700
    default_message = "parse error"


class InvalidRequest(RpcError):
    code = -32600
    default_message = "invalid request"


class MethodNotFound(RpcError):
    code = -32601
    default_message = "method not found"


class InvalidParams(RpcError):
    code = -32602
    default_message = "invalid params"

    @property
    def limit(self) -> int | None:
        return self.int_field("limit")

    @property
    def actual(self) -> int | None:
        return self.int_field("actual")


class InternalError(RpcError):
    code = -32603
    default_message = "internal error"


# --- npud's own codes (-32000..-32099)


class QueueFull(RpcError):
    code = -32000
    default_message = "queue full"

    @property
    def retry_after_ms(self) -> int | None:
        return self.int_field("retry_after_ms")


class NotReady(RpcError):
    code = -32001
    default_message = "model not ready"

    @property
    def retry_in_s(self) -> float | None:
        """Seconds until npud tries to load the model again; None when it will not by itself."""
        value = self.data_field("retry_in_s")
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


class NotVerified(RpcError):
    """The NPU busy counter did not grow: the job may not have run on the NPU."""

    code = -32002
    default_message = "NPU execution not verified"

    @property
    def npu_busy_delta_us(self) -> int | None:
        return self.int_field("npu_busy_delta_us")


class GenerationFailed(RpcError):
    code = -32003
    default_message = "generation failed"


class PeerNotAllowed(RpcError):
    code = -32004
    default_message = "peer not allowed"


class DeviceBusy(RpcError):
    """Another process held the NPU lock for longer than the lock timeout."""

    code = -32005
    default_message = "NPU busy: lock timeout"


class ShuttingDown(RpcError):
    code = -32006
    default_message = "daemon is shutting down"


class DeadlineExceeded(RpcError):
    """The job's deadline (``timeout_ms`` or the job's default) passed."""

    code = -32007
    default_message = "deadline exceeded"


class RequestCancelled(RpcError):
    """The request was cancelled by a ``cancel`` call on the same connection."""

    code = -32008
    default_message = "request cancelled"


class TooManyRequests(RpcError):
    """A connection or per-user limit was reached (connections, or requests in flight)."""

    code = -32009
    default_message = "too many requests"


ERRORS_BY_CODE: dict[int, type[RpcError]] = {
    cls.code: cls
    for cls in (
        ParseError,
        InvalidRequest,
        MethodNotFound,
        InvalidParams,
        InternalError,
        QueueFull,
        NotReady,
        NotVerified,
        GenerationFailed,
        PeerNotAllowed,
        DeviceBusy,
        ShuttingDown,
        DeadlineExceeded,
        RequestCancelled,
        TooManyRequests,
    )
}


def error_from_object(error: ErrorObject) -> RpcError:
    """The exception for a received error object (unknown codes become a plain RpcError)."""
    cls = ERRORS_BY_CODE.get(error.code)
    if cls is None:
        exc = RpcError(error.message, error.data)
        exc.code = error.code  # type: ignore[misc]  # keep the server's code for unknown errors
        return exc
    return cls(error.message, error.data)


# --- the client's own failures (never on the wire)


class DaemonUnavailable(NpuClientError):
    """npud is not running, not reachable, or the connection broke."""


class ServerNotTrusted(DaemonUnavailable):
    """The process listening on the socket runs as a user this client does not trust.

    A :class:`DaemonUnavailable` because, to the caller, npud is not there (a program that falls
    back when the daemon is down keeps doing so); nothing was sent to that server.
    """

    def __init__(self, message: str, uid: int, gid: int, pid: int) -> None:
        super().__init__(message)
        self.uid = uid
        self.gid = gid
        self.pid = pid


class InvalidServerUid(NpuClientError, ValueError):
    """A trusted server user (``server_uids=``, ``OV_GENAI_NPU_SERVER_UID``) is not a uid or a known user."""


class ProtocolViolation(NpuClientError):
    """The server sent something that is not a valid JSON-RPC reply to our request."""


class CallTimeout(NpuClientError):
    """No reply within the call's timeout. The client dropped the connection, so npud withdraws the job."""
