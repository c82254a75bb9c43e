"""Arguments shared by the serving command lines."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from serving import IMAGES_SIGNATURE


def positive(kind: type, allow_zero: bool = False) -> Callable[[str], int | float]:
    """An argparse type: `kind(text)`, which must be > 0 (or >= 0 with `allow_zero`)."""

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(f"expected a number. Received: {text!r}") from err
        if value < 0 or (value == 0 and not allow_zero):
            bound = ">= 0" if allow_zero else "> 0"
            raise argparse.ArgumentTypeError(f"must be {bound}. Received: {text}")
        return value

    return parse


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


def add_verbose_argument(parser: argparse.ArgumentParser) -> None:
    """`--verbose`: keep TensorFlow's start-up lines, which a command silences (harr_tf.quiet)."""
    parser.add_argument(
        "--verbose", action="store_true", help="keep TensorFlow's start-up log lines"
    )
