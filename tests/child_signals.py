"""Signal dispositions for the processes the tests start and signal."""

from __future__ import annotations

import signal


def default_signals() -> None:
    """SIGINT and SIGTERM as a terminal's job has them, whatever the test process inherited
    (started as a background job of a script it ignores SIGINT, and the command line keeps an
    ignored signal ignored). A ``preexec_fn``."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
