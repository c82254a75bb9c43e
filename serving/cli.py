"""The flags of the serving commands that talk to a server: its endpoint and retries.

The flags every command spells alike (--run-dir, --verbose) and the `positive` type are
in `harr_tf.flags`."""

from __future__ import annotations

import argparse

from harr_tf.flags import positive
from serving import IMAGES_SIGNATURE


def add_endpoint_arguments(parser: argparse.ArgumentParser) -> None:
    """`--server`, `--model` and `--signature` of a command that sends images to a server."""
    parser.add_argument(
        "--server", required=True, help="gRPC endpoint HOST:PORT, e.g. localhost:8500"
    )
    parser.add_argument("--model", default="harr", help="served model name (default: harr)")
    parser.add_argument(
        "--signature",
        default=IMAGES_SIGNATURE,
        help=f"signature taking encoded images (tf.string) (default: {IMAGES_SIGNATURE})",
    )


def add_retry_arguments(parser: argparse.ArgumentParser, deadline: float, retries: int) -> None:
    """`--deadline` and `--retries` of a command that sends requests through `ServingClient`."""
    parser.add_argument(
        "--deadline",
        type=positive(float),
        default=deadline,
        help=f"seconds one request may take before it is retried (default: {deadline:g})",
    )
    parser.add_argument(
        "--retries",
        type=positive(int, allow_zero=True),
        default=retries,
        help="retries of a request after UNAVAILABLE or DEADLINE_EXCEEDED, with exponential "
        f"backoff from 0.5 s up to 10 s (default: {retries})",
    )
