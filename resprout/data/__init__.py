"""Data: small image datasets held in memory as uint8 tensors, and the sources that load them.

* :mod:`.dataset`: the data model (:class:`Split`, :class:`Dataset`, :func:`channel_stats`);
* :mod:`.sources`: the source registry (:func:`register_source`, :func:`load_source`) and the built-in sources;
* :mod:`.preparation`: :func:`prepare`, the dataset a run trains on; :mod:`.stratify`: its seeded choices;
* :mod:`.readers`: the on-disk formats; :mod:`.loader`, :mod:`.samplers`, :mod:`.augment`: batches for training.
"""

from resprout.data.dataset import Dataset, Split, channel_stats
from resprout.data.preparation import prepare
from resprout.data.sources import available_sources, load_source, register_source

__all__ = [
    "Dataset",
    "Split",
    "available_sources",
    "channel_stats",
    "load_source",
    "prepare",
    "register_source",
]
