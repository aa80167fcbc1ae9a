"""The task of a run: what its targets are, how a network is evaluated on a split, and which metrics it reports.

Two kinds today:

* :class:`ClassificationTask` (the default): targets are class labels; evaluation is loss, top-1 and top-5 accuracy
  (:func:`resprout.engine.evaluation.evaluate`) and keeps each image's top-1 correctness for paired comparisons;
* :class:`RetrievalTask`: targets are identities; evaluation embeds the split and reports Recall@1/2/4/8 and NMI
  (KE paper Sec. 4.2, Table 4; :mod:`resprout.engine.retrieval`), with ``top1`` = Recall@1 so that tables and the
  choice of the best epoch work unchanged. ``method=triplet`` sets it.

The loop asks the run's task to evaluate (``trainer.task``); a method that changes what its networks output sets the
task in ``setup`` (``ctx.task = RetrievalTask()``). A new kind (detection, re-identification) is a new class here,
with no change to the methods that do not care.
"""

from __future__ import annotations

from typing import ClassVar

from torch import nn

from resprout.engine.evaluation import evaluate
from resprout.engine.retrieval import embed, retrieval_metrics
from resprout.errors import ConfigError


class Task:
    """A kind of task. ``evaluate`` returns at least ``top1`` (the metric the best epoch is chosen on)."""

    name: ClassVar[str] = "task"
    #: the metrics ``evaluate`` returns, in report order
    metrics: ClassVar[tuple[str, ...]] = ()
    #: whether ``evaluate`` fills ``correct`` with each image's top-1 correctness
    keeps_correct: ClassVar[bool] = False

    def targets(self, labels):
        """The training targets of a batch's labels; the loop asks this of every batch (both kinds today train on
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
