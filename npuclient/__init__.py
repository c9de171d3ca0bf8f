"""npuclient: the wire contract of npud and a small client. Never imports OpenVINO."""

from .client import Client, DaemonUnavailable, ProtocolViolation
from .errors import (
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
    RpcError,
    ShuttingDown,
)
from .protocol import HealthResult, JobResult, ModelsResult

__all__ = [
    "Client",
    "DaemonUnavailable",
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
    "RpcError",
    "ShuttingDown",
]
