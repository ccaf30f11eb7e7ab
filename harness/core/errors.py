"""The project's own user-facing errors and warnings (imports nothing from the harness).

Every error a user can cause (a bad file, a bad folder, a full disk) is an `ItrbenchError`: a
`ValueError` whose message is one line naming the file and what to do. The CLI prints it without a
traceback. The readers' classes (DataError, CusaDataError, SentEvalError, ImageRetrievalDataError,
IdError, CxcError, CheckpointError, RegistryError, MatrixError, CacheError) subclass it, so
`except ItrbenchError` catches every one of them and nothing else.
"""

from __future__ import annotations


class ItrbenchError(ValueError):
    """A user-facing error: one line, naming the file and the fix."""


class StorageError(ItrbenchError):
    """A result file that could not be written: no space left on the device, or a file-size limit."""


class CorruptFileWarning(UserWarning):
    """A resume-state file (metrics.json, config.yaml, env.json, a tile cache) that could not be read and
    was moved aside; what it held is recomputed."""
