"""How a training command stops (harr_tf.interrupts): Ctrl-C and SIGTERM are one line and
exit 130, a full disk one line and exit 1, any other error is raised; pretraining uses it
as train.py does (test_reliability covers train.py end to end)."""

import errno
import os
import signal

import pytest

from harr_tf import pretrain
from harr_tf.interrupts import stop_on_sigterm, stopped_exit_status


@pytest.fixture
def restore_sigterm():
    previous = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, previous)


def test_sigterm_stops_as_ctrl_c_does_naming_the_signal(restore_sigterm):
    stop_on_sigterm()
    with pytest.raises(KeyboardInterrupt, match="SIGTERM"):
        os.kill(os.getpid(), signal.SIGTERM)
        signal.sigtimedwait([], 1)  # the handler runs before this returns


@pytest.mark.parametrize(
    "stop, by", [(KeyboardInterrupt(), "Ctrl-C"), (KeyboardInterrupt("SIGTERM"), "SIGTERM")]
)
def test_a_stop_is_one_line_with_the_advice_and_exit_130(capsys, stop, by):
    assert stopped_exit_status(stop, "Continue with: x --resume") == 130
    assert capsys.readouterr().err == f"Stopped by {by}. Continue with: x --resume\n"


def test_a_full_disk_names_the_file_and_exits_1(capsys):
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/runs/a/encoder.keras")
    assert stopped_exit_status(full, "Continue with: x --resume") == 1
    assert capsys.readouterr().err == (
        f"error: disk full ({os.strerror(errno.ENOSPC)}: /runs/a/encoder.keras); free some "
        "space. Nothing written so far is lost. Continue with: x --resume\n"
    )


def test_another_os_error_is_raised_again(capsys):
    denied = PermissionError(errno.EACCES, "Permission denied", "/runs/a")
    with pytest.raises(PermissionError):
        stopped_exit_status(denied, "advice")
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(
    "error, status, first_words",
    [
        (KeyboardInterrupt(), 130, "Stopped by Ctrl-C. "),
        (OSError(errno.ENOSPC, "No space left on device"), 1, "error: disk full ("),
    ],
)
def test_pretraining_stops_with_one_line_that_says_how_to_resume(
    monkeypatch, capsys, restore_sigterm, error, status, first_words
):
    def stopped(args, config):
        raise error

    monkeypatch.setattr(pretrain, "run", stopped)
    assert pretrain.main(["--epochs", "1", "--run-dir", "unused", "--quiet"]) == status
    line = capsys.readouterr().err.strip()
    assert line.startswith(first_words) and line.endswith("the same command resumes from it.")
