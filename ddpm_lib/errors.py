"""User-facing errors: one clear line, a non-zero exit, nothing half-written."""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import sys
from typing import Callable


class DDPMError(Exception):
    """Bad input from the user (config, data, paths). Printed as one line, exit code 2."""


class ConfigError(DDPMError):
    """A preset, key or value that the configuration does not accept."""


class DataError(DDPMError):
    """A dataset folder or image that cannot be used."""


class WriteError(DDPMError, OSError):
    """A file or folder could not be written (disk full, read-only, a path part that is a file).

    Also an ``OSError``, so code that handles I/O errors keeps working."""

    def __str__(self) -> str:
        return self.strerror


FIXES = {errno.ENOSPC: "free some disk space and run again",
         errno.EDQUOT: "free some of your disk quota and run again",
         errno.EACCES: "choose a folder you can write to",
         errno.EPERM: "choose a folder you can write to",
         errno.EROFS: "the file system is read-only: choose a folder on a writable one",
         errno.ENOTDIR: "a part of that path is a file, not a folder: choose another path",
         errno.EISDIR: "that path is a folder: choose a file path"}


@contextlib.contextmanager
def writing(path, what: str = "write"):
    """Turn an ``OSError`` raised while writing ``path`` into a one-line :class:`WriteError`
    that names the path, the reason and what to do; files already on disk are left as they were."""
    try:
        yield
    except WriteError:
        raise
    except OSError as err:
        fix = FIXES.get(err.errno, "check the path and the disk")
        raise WriteError(err.errno, f"cannot {what} {path}: {err.strerror or err}; {fix} "
                                    f"(nothing already written there was changed)") from None


EXIT_USER_ERROR = 2


def cli(main: Callable[..., None]) -> Callable[..., None]:
    """Wrap a command-line ``main``: a ``DDPMError`` becomes ``error: <message>`` and exit 2."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except DDPMError as err:
            _fail(str(err))
        except OSError as err:  # an I/O fault no specific check caught: still one line, not a traceback
            if os.environ.get("DDPM_DEBUG"):
                raise
            _fail(f"{err} (set DDPM_DEBUG=1 for the traceback)")

    return wrapper


def _fail(message: str) -> None:
    # one write() call: ranks sharing a pipe under torchrun cannot interleave within
    # the line (print() writes the text and the newline separately)
    sys.stderr.write(f"error: {message}\n")
    sys.stderr.flush()
    sys.exit(EXIT_USER_ERROR)
