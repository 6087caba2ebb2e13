"""The command-line layer: every console script's `main` and the search page. Each tool parses its
arguments, calls the library and turns the user's mistakes into one line and exit status 2
(`user_errors`); nothing below this layer prints or exits."""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Callable

from cl2cm_hf.errors import CL2CMError
from cl2cm_hf.search.checks import printable

# OS errors that say something about the files a user named, not about this program: by type (also
# when raised with a message only) or by errno.
_FILE_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError)
_FILE_ERRNOS = {errno.ENOENT, errno.EACCES, errno.EPERM, errno.EISDIR, errno.ENOTDIR, errno.EEXIST, errno.ENOSPC,
                errno.EROFS, errno.EDQUOT, errno.ENAMETOOLONG, errno.ELOOP, errno.ENOTEMPTY}


def is_user_error(err: BaseException) -> bool:
    """The package's own errors, and missing, denied or otherwise unusable files."""
    return isinstance(err, (CL2CMError, *_FILE_ERRORS)) or (isinstance(err, OSError) and err.errno in _FILE_ERRNOS)


def run_tool(prog: str, run: Callable[[], int | None]) -> int:
    """`run()`'s exit status (0 for None); a user error is one line on stderr (control characters
    escaped) and status 2 (``CL2CM_DEBUG=1`` re-raises it with its traceback); anything else
    propagates with its traceback."""
    try:
        status = run()
    except Exception as err:
        if not is_user_error(err) or os.environ.get("CL2CM_DEBUG"):
            raise
        print(f"{prog}: error: {printable(str(err))}", file=sys.stderr)
        return 2
    return 0 if status is None else status
