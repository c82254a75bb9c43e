"""gRPC calls to a model server that outlast its restarts and slow answers.

Transient failures (UNAVAILABLE: the server restarting; DEADLINE_EXCEEDED: a slow
answer) are retried with capped exponential backoff and jitter; any other failure, or the
last retry's, is a `RequestFailed` naming the call. `close()` cancels the calls in flight
and stops the retries waiting.
"""

from __future__ import annotations

import logging
import random
import threading

import grpc
from tensorflow_serving.apis import prediction_service_pb2_grpc

logger = logging.getLogger(__name__)

RETRYABLE_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
# Images of several MB in batches of 64 exceed gRPC's 4 MB default; reconnect quickly
# after a server restart instead of gRPC's default backoff of up to 120 s.
CHANNEL_OPTIONS = (
    ("grpc.max_send_message_length", -1),
    ("grpc.max_receive_message_length", -1),
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
)
_MAX_BACKOFF_SECONDS = 10.0


class RequestFailed(Exception):
    """A request the server refused, or that still failed after every retry."""

    def __init__(self, code: grpc.StatusCode, details: str, what: str) -> None:
        super().__init__(f"{what}: {code.name}: {details}")
        self.code, self.details = code, details


class RetryingStub:
    """A `PredictionServiceStub` whose calls have a deadline and are retried (see the
    module). Safe to share between threads.

    Args:
        server: "HOST:PORT" of the gRPC endpoint.
        deadline: seconds one request may take before it is retried.
        retries: retries of a request after UNAVAILABLE or DEADLINE_EXCEEDED.
        backoff: seconds before the first retry, doubled for each next one (capped at 10 s,
            with jitter).
    """

    def __init__(self, server: str, *, deadline: float, retries: int, backoff: float) -> None:
        if deadline <= 0 or retries < 0 or backoff < 0:
            raise ValueError(
                "`deadline` must be > 0, `retries` and `backoff` >= 0. "
                f"Received: deadline={deadline}, retries={retries}, backoff={backoff}"
            )
        self.server, self.deadline, self.retries, self.backoff = server, deadline, retries, backoff
        self._channel = grpc.insecure_channel(server, options=CHANNEL_OPTIONS)
        self._stub = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        self._closed = threading.Event()

    def close(self) -> None:
        """Cancels calls in flight and stops retries; the stub is unusable after."""
        self._closed.set()
        self._channel.close()

    def call(self, method: str, request, what: str):
        """The stub's `method` on `request` with the deadline, retried on transient
        failures; `what` names the call in a `RequestFailed`."""
        attempt = 0
        while True:
            try:
                return getattr(self._stub, method)(request, timeout=self.deadline)
            except grpc.RpcError as error:
                code, details = error.code(), error.details()
            if self._closed.is_set():
                raise RequestFailed(grpc.StatusCode.CANCELLED, "client closed", what)
            if code not in RETRYABLE_CODES or attempt == self.retries:
                suffix = f" (after {attempt} retries)" if attempt else ""
                raise RequestFailed(code, f"{details}{suffix}", what)
            delay = min(_MAX_BACKOFF_SECONDS, self.backoff * 2**attempt) * random.uniform(0.5, 1)
            attempt += 1
            logger.warning(
                "%s: %s; retry %d of %d in %.1f s",
                self.server,
                code.name,
                attempt,
                self.retries,
                delay,
            )
            if self._closed.wait(delay):
                raise RequestFailed(grpc.StatusCode.CANCELLED, "client closed", what)
