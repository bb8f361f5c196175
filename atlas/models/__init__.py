"""Model loading and the SVD math, below both ingest and edit.

What a MODEL argument names (the bundled MiniLM, a local folder, a hub name, ``random:SHAPE``)
and booting it through TransformerLens with the requested weight processing (:mod:`loading`,
:mod:`random_models`, :mod:`bundled`, :mod:`hub`); the batched SVDs and the canonical sign rule
(:mod:`svd`); and the coherence judge, a sentence encoder (:mod:`coherence`). ``ingest`` and
``query`` both build on this layer and never import each other; the storage core never imports
it. torch and transformers are imported by the modules that need them, never by this package.
"""
