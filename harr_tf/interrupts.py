"""How a training command stops: Ctrl-C, SIGTERM and a full disk end it with one line
that says what was kept, never a traceback.

train.py and `python -m harr_tf.pretrain` write every file beside its place and rename
it, so a stop at any moment leaves whole files; these helpers turn the stop into the
exit status and the line that tells the user how to continue.
"""

from __future__ import annotations

import errno
import signal
import sys


def stop_on_sigterm() -> None:
    """SIGTERM (a scheduler's stop, `kill`) stops a run as Ctrl-C does: KeyboardInterrupt
    after the current step, every file already written kept whole (written beside and
    renamed), so the run resumes from its last checkpoint."""

    def stop(signum: int, frame) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, stop)


def stopped_exit_status(error: BaseException, advice: str) -> int:
    """Prints one line for a stop (Ctrl-C, SIGTERM) or a full disk, followed by `advice`
    (what was kept, how to continue), and returns the exit status: 130 for a stop, 1 for
    a full disk. Any other error is raised again."""
    if isinstance(error, KeyboardInterrupt):
        print(f"Stopped by {str(error) or 'Ctrl-C'}. {advice}", file=sys.stderr)
        return 130
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        where = f": {error.filename}" if error.filename else ""
        print(
            f"error: disk full ({error.strerror}{where}); free some space. Nothing written "
            f"so far is lost. {advice}",
            file=sys.stderr,
        )
        return 1
    raise error
