"""The error family, as the storage core and the query layer import it: defined once, in the
public :mod:`atlas.errors` (which imports nothing of svd-atlas)."""

from atlas.errors import (
    AtlasError,
    AtlasWarning,
    BadParameter,
    DamagedIndex,
    MemoryLimitExceeded,
    ModelBusy,
    NoMatch,
    NotFound,
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
    "QueryTimeout",
    "one_line",
]
