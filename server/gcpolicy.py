"""The garbage collector's settings for the long-running processes (``baychat serve`` and
``baychat worker``).

Every published message is a handful of container objects (its frame, message, log entry,
waiting ack) that live until the message is stored, and a gateway holds tens of thousands
of them under load, besides everything it holds for each connection. With CPython's
default thresholds (a collection every 700 net allocations, a full one every 100 of those)
the collector scanned that heap again and again: at 10,000 msgs/s it was about a tenth of
the gateway's CPU, and its full passes stalled the event loop while acks waited
(docs/BENCHMARKS.md, "The fourth session"). Nothing here turns collection off: cycles are
still found, only less often.
"""

from __future__ import annotations

import gc

# Young-generation collections every 10,000 net allocations instead of 700; a middle and a
# full collection after 20 of the generation below (10 by default). CPython still skips a
# full pass while fewer than a quarter of the long-lived objects are new.
THRESHOLDS = (10_000, 20, 20)


def tune() -> None:
    """Call once, after start-up imports and before serving: what exists by then (modules,
    classes, settings) lives as long as the process, so it is moved out of the collector's
    sight (``gc.freeze``) instead of being scanned by every full pass."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
