"""Data: small image datasets held in memory as uint8 tensors, and the sources that load them."""

from resprout.data.sources import (
    Dataset,
    Split,
    available_sources,
    channel_stats,
    load_source,
    prepare,
    register_source,
)

__all__ = [
    "Dataset",
    "Split",
    "available_sources",
    "channel_stats",
    "load_source",
    "prepare",
    "register_source",
]
