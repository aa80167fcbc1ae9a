"""Small consumers of the engine, used by tests/test_engine.py (and by the subprocesses it starts): a toy
adversarial pair with its own update steps, mid-epoch surgery that grows a layer, and peers that average their
weights after every epoch (one process, or one peer per rank). None is registered: runs get them as objects,
``resprout.train(..., methods=[ToyAdversarial])``."""

from __future__ import annotations

import copy
import os

import torch
import torch.nn.functional as F
from torch import nn

from resprout.engine.distributed import ring_exchange
from resprout.engine.members import UpdateStep
from resprout.engine.method import Method


class Discriminator(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(channels, 16)
        self.fc2 = nn.Linear(16, 1)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(f.mean(dim=(2, 3)))))


def adversarial_losses(d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
    ones, zeros = torch.ones_like(d_real), torch.zeros_like(d_fake)
    return F.binary_cross_entropy_with_logits(d_real, ones) + F.binary_cross_entropy_with_logits(d_fake, zeros)


class ToyAdversarial(Method):
    """A student's last feature map against a discriminator that tells it from a fixed "teacher" map: step 1 trains
    the discriminator on detached features, step 2 the student on CE plus fooling the (just updated) discriminator."""

    name = "test_adversarial"
    snapshots: list | None = None  # (step name, {member: parameters}) after every optimizer step, when recording

    def setup(self, trainer):
        student = trainer.members["model"].model
        self.channels = student.conv3.out_channels
        trainer.add_member("discriminator", Discriminator(self.channels), manual=True, evaluate=False, task=False,
                           logits=False)
        trainer.tap("model", "relu3")

    def update_steps(self, trainer):
        return [UpdateStep("discriminator", ["discriminator"]), UpdateStep("student", ["model"], ("ce", "adv"))]

    def on_loss(self, trainer):
        d = trainer.members["discriminator"]
        feats = trainer.taps.output("model", "relu3")
        real = torch.tanh(F.adaptive_avg_pool2d(trainer.inputs[:, :1], feats.shape[2:])).expand_as(feats)
        if trainer.updates("discriminator"):
            trainer.add_loss("discriminator", "d", adversarial_losses(d(real), d(feats.detach())))
        if trainer.updates("model"):
            trainer.add_loss("model", "adv", 0.1 * F.binary_cross_entropy_with_logits(
                d(feats), torch.ones(len(feats), 1)))

    def on_after_step(self, trainer):
        if ToyAdversarial.snapshots is not None:
            ToyAdversarial.snapshots.append(
                (trainer.update_step.name, {n: {k: p.detach().clone() for k, p in m.model.named_parameters()}
                                            for n, m in trainer.members.items()}))


def grow_conv3(trainer, extra: int, seed: int) -> None:
    """Grow the CNN's conv3 group by ``extra`` channels with the real resize surgery (new outgoing weights zero)."""
    c = trainer.members["model"].model.conv3.out_channels
    trainer.apply_surgery("model", "resize", plan={"conv3": list(range(c)) + [-1] * extra},
                          input_shape=list(trainer.input_shape), seed=seed)


class GrowMidEpoch(Method):
    """Widens conv3 at generation 1, epoch 2, step 3 (inside an epoch, with live optimizer state)."""

    name = "test_grow_mid_epoch"
    at = (0, 1, 3)
    resized: list = []

    def on_batch_start(self, trainer):
        if (trainer.generation, trainer.epoch, trainer.step) == self.at and not trainer.surgery:
            grow_conv3(trainer, extra=3, seed=7)

    def on_member_resized(self, trainer):
        GrowMidEpoch.resized.append((trainer.resized, trainer.replaying))


def average_into(a: dict, b: dict) -> dict:
    return {k: (a[k] + b[k]) / 2 if a[k].is_floating_point() else a[k] for k in a}


class PeerAverage(Method):
    """Two peers with their own data order that average their weights after every epoch: both in one process, or
    one per rank exchanging through the ring."""

    name = "test_peer_average"

    def setup(self, trainer):
        base = trainer.members["model"].model
        trainer.remove_member("model")
        for k in range(2):
            trainer.add_member(f"peer_{k + 1}", copy.deepcopy(base), placement="per_rank", rank=k,
                               data_seed=100 + k)

    def on_batch_end(self, trainer):
        # RESPROUT_TEST_CRASH="g,e,s:marker" crashes once at that position (every rank, marked per rank)
        spec = os.environ.get("RESPROUT_TEST_CRASH")
        if spec:
            where, marker = spec.split(":", 1)
            marker = f"{marker}.{trainer.dist.rank}"
            if where == f"{trainer.generation},{trainer.epoch},{trainer.step}" and not os.path.exists(marker):
                open(marker, "w").close()
                raise RuntimeError("simulated crash")

    def on_epoch_end(self, trainer):
        local = [m for m in trainer.members.values() if m.local]
        with torch.no_grad():
            if len(local) == 2:
                a, b = (m.model.state_dict() for m in local)
                mixed = average_into(a, b)
                for m in local:
                    m.model.load_state_dict(mixed)
            else:
                mine = local[0].model.state_dict()
                other = ring_exchange(mine, trainer.dist)
                local[0].model.load_state_dict(average_into(mine, other))

