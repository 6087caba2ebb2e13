"""The package's own error base.

Every error cl2cm-hf raises about what it was given (settings, data, files, checkpoints, arguments)
derives from `CL2CMError`, a `ValueError`, so ``except ValueError`` keeps working. The command-line
tools turn these, and files that are missing or denied, into a one-line message and exit status 2;
anything else (a bug here or inside a library) keeps its traceback."""


class CL2CMError(ValueError):
    """What the caller gave cannot be used as given; the message names it and what was expected."""
