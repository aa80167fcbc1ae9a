"""Re-identification data: :class:`ReidDataset` (train, query and gallery images with an identity and a camera
each), the Market-1501 and DukeMTMC-reID folder readers (:mod:`.folders`), the Fashion-MNIST open-set analog
(:mod:`.fashion`) and what a run trains on and is evaluated with (:mod:`.prepared`; the sources ``fashion-reid``,
``market1501`` and ``dukemtmc`` are :mod:`resprout.data.sources.reid`). The metrics are in
:mod:`resprout.metrics.reid`, the task that evaluates a run with them in :mod:`resprout.engine.task`."""

from resprout.data.reid.dataset import ReidDataset, ReidSplit
from resprout.data.reid.folders import read_dukemtmc, read_market1501, read_reid_folder, write_market1501

__all__ = ["ReidDataset", "ReidSplit", "read_dukemtmc", "read_market1501", "read_reid_folder", "write_market1501"]
