"""The task of a run: what its targets are, how a network is evaluated on a split, and which metrics it reports.

Three kinds today:

* :class:`ClassificationTask` (the default): targets are class labels; evaluation is loss, top-1 and top-5 accuracy
  (:func:`resprout.engine.evaluation.evaluate`) and keeps each image's top-1 correctness for paired comparisons;
* :class:`RetrievalTask`: targets are identities; evaluation embeds the split and reports Recall@1/2/4/8 and NMI
  (KE paper Sec. 4.2, Table 4; :mod:`resprout.engine.retrieval`), with ``top1`` = Recall@1 so that tables and the
  choice of the best epoch work unchanged. ``method=triplet`` sets it.
* :class:`ReidTask`: person re-identification as the grafting paper's Table 7 evaluates it (Sec. 4.2, Market1501
  and Duke): training is identity classification over the train identities (softmax cross-entropy, the
  torchreid/OSNet baseline it follows); evaluation ranks the gallery for every query by the distance of the
  network's penultimate features and reports CMC ``rank1``, ``rank5`` and ``map`` with Market-1501's protocol
  (:func:`resprout.metrics.reid.reid_metrics`), with ``top1`` = rank-1. A run on a re-id source (``fashion-reid``,
  ``market1501``, ``dukemtmc``) gets it from its data (:func:`resprout.inputs.data_task`);
  :func:`resprout.inputs.check_task` refuses a method that sets another task on a re-id set (``triplet``) and the
  re-id task on a classification set.

The fourth, :class:`resprout.engine.detection.DetectionTask`, lives in its own module: targets are boxes and labels
per image, the model computes its own losses from them, evaluation is mAP.

The loop asks the run's task to forward each member on a batch (:meth:`Task.forward`: the network on the inputs; a
detector in training mode also takes the targets) and to evaluate (``trainer.task``); a method that changes what
its networks output sets the task in ``setup`` (``ctx.task = RetrievalTask()``).
"""

from __future__ import annotations

from typing import ClassVar

from torch import nn

from resprout.data.reid.prepared import ReidEvalLoader
from resprout.engine.evaluation import evaluate
from resprout.engine.retrieval import embed, retrieval_metrics
from resprout.errors import ConfigError
from resprout.metrics.reid import DISTANCES, reid_metrics


class Task:
    """A kind of task. ``evaluate`` returns at least ``top1`` (the metric the best epoch is chosen on)."""

    name: ClassVar[str] = "task"
    #: the metrics ``evaluate`` returns, in report order
    metrics: ClassVar[tuple[str, ...]] = ()
    #: whether ``evaluate`` fills ``correct`` with each image's top-1 correctness
    keeps_correct: ClassVar[bool] = False
    #: whether a split's labels index the network's outputs (class logits): what an ensemble of the members' class
    #: probabilities on a split needs (grafting's and mutual learning's ensembles are left out when not)
    class_scores: ClassVar[bool] = False
    #: whether a member's training output is its own loss dict (a detector), read through :meth:`losses`
    model_loss: ClassVar[bool] = False

    def forward(self, member, inputs, targets):
        """A member's output on a batch: ``member(inputs)`` (a model that computes its own losses takes the targets
        too: :class:`~resprout.engine.detection.DetectionTask`)."""
        return member(inputs)

    def losses(self, output) -> dict:
        """The loss terms a member's training output holds, by name (only when ``model_loss``)."""
        raise ConfigError(f"the {self.name} task's networks do not compute their own losses")

    def targets(self, labels):
        """The training targets of a batch's labels; the loop asks this of every batch (every kind today trains on
        the labels as they are; detection would return its boxes here)."""
        return labels

    def evaluate(self, model: nn.Module, loader, dist=None, correct: list | None = None) -> dict[str, float]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class ClassificationTask(Task):
    """Class labels; loss, top-1 and top-5 accuracy, and per-image correctness."""

    name = "classification"
    metrics = ("loss", "top1", "top5")
    keeps_correct = True
    class_scores = True

    def evaluate(self, model: nn.Module, loader, dist=None, correct: list | None = None) -> dict[str, float]:
        return evaluate(model, loader, dist, **({} if correct is None else {"correct": correct}))


class RetrievalTask(Task):
    """Identities; Recall@K and NMI of the split's embeddings (the whole split in one process)."""

    name = "retrieval"
    metrics = ("top1", "recall@1", "recall@2", "recall@4", "recall@8", "nmi")

    def evaluate(self, model: nn.Module, loader, dist=None, correct: list | None = None) -> dict[str, float]:
        if dist is not None and dist.enabled:
            raise ConfigError("a retrieval task evaluates over the whole split; run it in one process")
        embeddings, labels = embed(model, loader)
        metrics = retrieval_metrics(embeddings, labels)
        return {"top1": metrics["recall@1"], **metrics}


class ReidTask(Task):
    """Re-identification: the gallery ranked for every query by the Euclidean (or cosine) distance of the network's
    penultimate features; CMC rank-1 and rank-5 and mAP with same-camera matches of the query's identity left out
    (:func:`resprout.metrics.reid.reid_metrics`), ``top1`` = rank-1. Per-image correctness is not kept: a query's
    result is a ranking, not one right-or-wrong answer, and the paired per-image record of classification runs has
    no counterpart here.

    **The features** are the input of the class layer, the ``nn.Linear`` whose output is the network's output
    (:func:`resprout.engine.retrieval.head_inputs`), as torchreid embeds a classifier trained with softmax: the
    logits of the train identities mean nothing for identities never seen in training. They are read by hooks during
    the evaluation forward itself, rather than through a ``features()`` method (torchvision, timm and users' models
    have none, or name it differently) or a copy of the network without its head (which surgery and grafting would
    have to keep in step): any network whose output comes straight from a linear layer works as it is, after surgery
    too, and a cosine classifier (AdaCos) gives the features it normalizes.

    The split must be a :class:`~resprout.data.reid.prepared.ReidEvalLoader` (queries, gallery, cameras), in one
    process."""

    name = "reid"
    metrics = ("top1", "rank1", "rank5", "map")

    def __init__(self, distance: str = "euclidean") -> None:
        if distance not in DISTANCES:
            raise ConfigError(f"re-id distance must be one of {', '.join(DISTANCES)}, got {distance!r}")
        self.distance = distance

    def evaluate(self, model: nn.Module, loader, dist=None, correct: list | None = None) -> dict[str, float]:
        if dist is not None and dist.enabled:
            raise ConfigError("a re-id task ranks the whole gallery for every query; run it in one process")
        if not isinstance(loader, ReidEvalLoader):
            raise ConfigError("the re-id task evaluates a query and a gallery split with identities and cameras "
                              "(data=fashion-reid, market1501 or dukemtmc); this split has none")
        features, ids = embed(model, loader, head_input=True)
        q, cams = loader.queries, loader.cameras
        metrics = reid_metrics(features[:q], ids[:q], cams[:q], features[q:], ids[q:], cams[q:], ranks=(1, 5),
                               distance=self.distance)
        return {"top1": metrics["rank1"], **metrics}

    def __repr__(self) -> str:
        return f"ReidTask(distance={self.distance!r})"
