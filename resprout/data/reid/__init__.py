"""Re-identification data: :class:`ReidDataset` (train, query and gallery images with an identity and a camera
each), the Market-1501 and DukeMTMC-reID folder readers (:mod:`.folders`) and the Fashion-MNIST open-set analog
(:mod:`.fashion`). The metrics are in :mod:`resprout.metrics.reid`."""

from resprout.data.reid.dataset import ReidDataset, ReidSplit
from resprout.data.reid.folders import read_dukemtmc, read_market1501, read_reid_folder, write_market1501

__all__ = ["ReidDataset", "ReidSplit", "read_dukemtmc", "read_market1501", "read_reid_folder", "write_market1501"]
