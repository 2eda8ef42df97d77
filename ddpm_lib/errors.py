"""User-facing errors: one clear line, a non-zero exit, nothing half-written."""

from __future__ import annotations

import functools
import sys
from typing import Callable


class DDPMError(Exception):
    """Bad input from the user (config, data, paths). Printed as one line, exit code 2."""


class ConfigError(DDPMError):
    """A preset, key or value that the configuration does not accept."""


class DataError(DDPMError):
    """A dataset folder or image that cannot be used."""


EXIT_USER_ERROR = 2


def cli(main: Callable[..., None]) -> Callable[..., None]:
    """Wrap a command-line ``main``: a ``DDPMError`` becomes ``error: <message>`` and exit 2."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except DDPMError as err:
            # one write() call: ranks sharing a pipe under torchrun cannot interleave within
            # the line (print() writes the text and the newline separately)
            sys.stderr.write(f"error: {err}\n")
            sys.stderr.flush()
            sys.exit(EXIT_USER_ERROR)

    return wrapper
