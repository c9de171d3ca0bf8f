"""npuclient: the wire contract of npud and a small client. Never imports OpenVINO."""

from .client import Client, DaemonUnavailable, ProtocolViolation
from .errors import (
    DeadlineExceeded,
    DeviceBusy,
    GenerationFailed,
    InternalError,
    InvalidParams,
    InvalidRequest,
    MethodNotFound,
    NotReady,
    NotVerified,
    NpuClientError,
    ParseError,
    PeerNotAllowed,
    QueueFull,
    RequestCancelled,
    RpcError,
    ShuttingDown,
    TooManyRequests,
)
from .protocol import HealthResult, JobResult, ModelsResult

__all__ = [
    "Client",
    "DaemonUnavailable",
    "DeadlineExceeded",
    "DeviceBusy",
    "GenerationFailed",
    "HealthResult",
    "InternalError",
    "InvalidParams",
    "InvalidRequest",
    "JobResult",
    "MethodNotFound",
    "ModelsResult",
    "NotReady",
    "NotVerified",
    "NpuClientError",
    "ParseError",
    "PeerNotAllowed",
    "ProtocolViolation",
    "QueueFull",
    "RequestCancelled",
    "RpcError",
    "ShuttingDown",
    "TooManyRequests",
]
