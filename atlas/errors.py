"""Every error and warning svd-atlas raises, in one public module (defined in the storage core,
:mod:`atlas.core.errors`, which every layer can import).

``AtlasError`` is a mistake the user can fix; each carries ``param`` (the parameter at fault,
or None), ``hint`` (what to do, or None) and ``status`` (the HTTP status of its type). Messages
name parameters, never CLI flags: the CLI renders them as its flags.
"""

from atlas.core.errors import (
    AtlasError,
    AtlasWarning,
    BadParameter,
    DamagedIndex,
    MemoryLimitExceeded,
    ModelBusy,
    NoMatch,
    NotFound,
    NotReady,
    NoVectors,
    QueryTimeout,
    one_line,
)

__all__ = [
    "AtlasError",
    "AtlasWarning",
    "BadParameter",
    "DamagedIndex",
    "MemoryLimitExceeded",
    "ModelBusy",
    "NoMatch",
    "NoVectors",
    "NotFound",
    "NotReady",
    "QueryTimeout",
    "one_line",
]
