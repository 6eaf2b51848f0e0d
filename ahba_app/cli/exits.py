"""Exit codes of ``ahba-app``, those of the BIDS Apps execution specification that apply.

One table (:data:`EXIT_CODES`) from which ``--help`` and the Boutiques descriptor read; errors
raised while checking the inputs carry their code (``exit_code``), anything else is 1.
"""

from __future__ import annotations

__all__ = ["EXIT_CODES", "EXIT_OK", "EXIT_FAILED", "EXIT_UNKNOWN_LEVEL", "EXIT_NOTHING_SELECTED",
           "EXIT_USAGE", "EXIT_NO_INPUT", "EXIT_INTERRUPTED", "UsageError", "help_text"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_UNKNOWN_LEVEL = 17
EXIT_NOTHING_SELECTED = 18
EXIT_USAGE = 64
EXIT_NO_INPUT = 66
EXIT_INTERRUPTED = 130

#: code -> what it means (BIDS Apps execution specification, "Reserved exit codes").
EXIT_CODES = {
    EXIT_OK: "success: every output was written",
    EXIT_FAILED: "failure: the run or an input check failed (the message says why; nothing is "
                 "published)",
    EXIT_UNKNOWN_LEVEL: "unknown analysis level (use participant or group)",
    EXIT_NOTHING_SELECTED: "the selection (--atlas, --participant-label) matched no atlas or "
                           "donor",
    EXIT_USAGE: "the command was used incorrectly (an unknown option or a bad value)",
    EXIT_NO_INPUT: "an input is missing or unreadable (input folder, AHBA files, TemplateFlow "
                   "file)",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C or SIGINT)",
}


def help_text() -> str:
    """The exit codes as lines for ``--help``."""
    return "Exit codes:\n" + "\n".join(f"  {code:>3}  {text}" for code, text in
                                       EXIT_CODES.items())


class UsageError(Exception):
    """A problem with the inputs, reported as one message; ``exit_code`` is the status the
    command exits with (one of the codes above)."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code
