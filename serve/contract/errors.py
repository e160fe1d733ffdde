"""The one error format of bake, fly and serve's start-up: what is wrong, then how to fix it, on one line.

    UserError                 base: `message`, `fix`, `exit_code`; `str()` is "message: fix"
    ├── SettingsError         a setting (variable, flag, bake.toml key) has an unusable value (exit 2)
    └── UnsupportedModel      a model bake cannot serve, said before any work is done (exit 1)

The exit-code rule, for every command (`bake`, `python -m serve`): 2 when what the user typed or configured
is wrong (a setting, a flag, a combination of them), 1 when the work failed for another reason (the model,
the network, an engine), 130 when interrupted. Each package derives its own errors from `UserError`
(`bake.errors`, `fly.errors`), so one `except UserError` prints any of them the same way.
"""

from __future__ import annotations

from typing import ClassVar

USAGE_EXIT_CODE = 2
"""Exit status of a command given an unusable setting or flag combination."""
FAILURE_EXIT_CODE = 1
"""Exit status of a command whose work failed for any other reason."""
INTERRUPTED_EXIT_CODE = 130
"""Exit status of a command stopped by Ctrl-C (128 + SIGINT, as shells report it)."""


class UserError(Exception):
    """An error a person can act on: `message` says what is wrong, `fix` what to do about it."""

    exit_code: ClassVar[int] = FAILURE_EXIT_CODE

    def __init__(self, message: str, fix: str | None = None) -> None:
        self.message = _one_line(message)
        self.fix = _one_line(fix or "")
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"{self.message}: {self.fix}" if self.fix else self.message


class SettingsError(UserError):
    """A setting (environment variable, flag or bake.toml key) holds a value that cannot be used."""

    exit_code = USAGE_EXIT_CODE


class UnsupportedModel(UserError):
    """bake cannot serve this model (for the requested or detected task)."""


def require(error: type[UserError], condition: bool, message: str, fix: str | None = None) -> None:
    """Raise `error(message, fix)` unless `condition` holds: validation that reads as a list of rules."""
    if not condition:
        raise error(message, fix)


def _one_line(text: str) -> str:
    """`text` on one line, whatever a library's message held."""
    return " ".join(text.split())
