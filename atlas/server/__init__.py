"""``svd-atlas serve``: the atlas over HTTP, as a JSON API and as web pages.

A thin layer beside the CLI: both call the library (:mod:`atlas.api`). The server keeps the
atlas open and its indexes loaded (:mod:`atlas.server.live`), runs each request's library calls
in a worker thread under a time limit (:mod:`atlas.server.work`), and serves the JSON API
(:mod:`atlas.server.api`) and the pages (:mod:`atlas.server.pages`) from one app
(:mod:`atlas.server.app`). It writes nothing.
"""

DEFAULT_PORT = 8321
DEFAULT_TIMEOUT = 10.0  # seconds a request may take
DEFAULT_INDEX_MEMORY_GB = 4.0  # indexes kept loaded; a search across more models streams
