"""Task metrics that are pure functions over a model's outputs: detection mAP (:mod:`.detection`, through
pycocotools) and re-identification CMC and mAP (:mod:`.reid`).

They sit below the engine (they import torch, numpy and :mod:`resprout.data` only) so that a task's evaluation can
call them; classification accuracy and the triplet Recall@K stay where they are (engine/evaluation.py,
methods/metric.py). Import the submodules directly: this package imports nothing on its own.
"""
