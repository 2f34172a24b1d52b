"""The garbage collector in the long-lived processes, `tellonce serve` and `tellonce worker`
(``Settings.freeze_startup_heap``)."""

from __future__ import annotations

import gc

# The youngest generation's collection threshold in those processes (Python's is 700).
GEN0_THRESHOLD = 5_000


def freeze_startup_heap() -> None:
    """Move what startup made out of the collector's reach, and collect the youngest
    generation at ``GEN0_THRESHOLD`` objects instead of 700.

    What startup made (modules, routes, models, the compiled policy) lives as long as the
    process. Frozen, the collections that run later no longer walk it: 8% of a secured
    read's time (bench/README.md). The objects of a request, or of a worker's batch, die by
    reference counting; the collector only has to find cycles. At 700 objects made and not
    yet freed, the requests in flight set it off about every 20 secured reads under load (4%
    of the serving process's CPU with the older generations after it); at 5,000 it did not
    run at all in 10 s of load. The access-notice worker parses a thousand audit entries a
    round, about fifty objects each: its process's main thread spent about half its CPU per
    notice in collections (bench/README.md, "The notice worker's collections")."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GEN0_THRESHOLD, *gc.get_threshold()[1:])
