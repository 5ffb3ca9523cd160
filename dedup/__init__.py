"""dedup: an ensemble product-deduplication engine.

Library-first: every stage is a function or class usable alone
(:mod:`dedup.discover`, :mod:`dedup.decode`, :mod:`dedup.hashing`,
:mod:`dedup.backbones`, :mod:`dedup.cache`, :mod:`dedup.index`,
:mod:`dedup.grouping`, :mod:`dedup.evaluate`, :mod:`dedup.report`), and
:class:`dedup.pipeline.Deduplicator` runs them all. Heavy frameworks
(TensorFlow, PyTorch) are imported only by the backbone that needs them.
"""

__version__ = "0.1.0"


def __getattr__(name):  # lazy, so `import dedup` stays light
    if name in ("Deduplicator", "Result"):
        from . import pipeline

        return getattr(pipeline, name)
    raise AttributeError(name)
