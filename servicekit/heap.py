"""The garbage collector of a long-running server: full passes short, young ones rare."""

from __future__ import annotations

import gc

# Container objects allocated (net) between two collections of the youngest generation;
# CPython's default is 700. See `settle_heap`.
YOUNG_COLLECTION_EVERY = 20_000


def settle_heap() -> None:
    """Tune the collector for serving, once start-up is over.

    Full collections: modules, schemas, compiled statements and clients built at start-up
    live as long as the process. Left in the oldest generation, every full collection
    under load walks all of them while holding the GIL: a stall that every call in
    flight waits out (the ai benchmark's wall time shows it). They are moved out of the
    collector's sight for good (`gc.freeze`), after garbage made so far is collected, so
    none of it is frozen.

    Young collections: a request allocates a few hundred container objects (scopes,
    coroutines, dicts, context tokens), nearly all freed by reference counting; at the
    default threshold the youngest generation is collected every few requests, and each
    pass walks what the requests in flight hold. In the gateway that was 13 µs of its
    160 µs a request (`make bench-gateway`), and it made every extra allocation (a span,
    a context variable's token) cost several times its own price. Collecting it every
    `YOUNG_COLLECTION_EVERY` allocations instead holds back at most that many objects of
    cyclic garbage (a few MB) between passes.
    """
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_COLLECTION_EVERY, older, oldest)
