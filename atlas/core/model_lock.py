"""One writer per model id: a second ingest (or load) of a model that is being written is
refused before it computes anything.

The lock is an OS lock (``flock``) on ``.locks/<sha256 of the id>`` in the atlas, taken before
the model is booted and held until it is published or abandoned. The kernel drops it when its
process ends, however it ends (``kill -9`` included), so a crashed writer never blocks the
next one. The file name is a hash: no model id, whatever it holds, becomes a path. The files
stay (removing a lock file while another process opens it would let two writers in); each is
a few bytes, one per model id ever written.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
from collections.abc import Iterator

from atlas.core.errors import AtlasError, ModelBusy
from atlas.core.layout import AtlasDir

LOCKS = ".locks"


@contextlib.contextmanager
def model_lock(atlas_dir: AtlasDir, model_id: str) -> Iterator[None]:
    """Hold ``model_id``'s lock in ``atlas_dir``; :class:`ModelBusy` at once if another
    process holds it."""
    folder = atlas_dir.root / LOCKS
    path = folder / hashlib.sha256(model_id.encode("utf-8")).hexdigest()[:32]
    try:
        folder.mkdir(exist_ok=True)
        fh = open(path, "a+")  # noqa: SIM115 - held open to keep the lock, closed below
    except OSError as exc:
        raise AtlasError(f"atlas path {atlas_dir.root} is not writable: {exc.strerror}") from None
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip()
            by = f" (process {holder})" if holder.isdigit() else ""
            raise ModelBusy(
                f"model {model_id!r} is being written into {atlas_dir.root} by another "
                f"process{by}; wait for it to finish, or give `name` another id"
            ) from None
        try:
            fh.truncate(0)
            fh.write(str(os.getpid()))
            fh.flush()
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
