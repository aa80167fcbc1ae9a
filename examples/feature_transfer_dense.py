"""Feature transfer for a task that is not classification: KTAN's pieces in your own training loop.

KTAN (Liu et al., Sec. I and IV-B) transfers the teacher's last conv feature map, not its softmax, so it applies to
detectors and other dense heads (the paper's Table II: Faster R-CNN). This example distils a toy *dense-prediction*
network (a backbone plus a per-pixel head that segments a bright square) with the pure functions of
``resprout.methods.ktan`` and ``resprout.methods.hints``; no resprout trainer is involved:

1. train a wide teacher (backbone + head) on the task;
2. Algorithm 1, with the task head in place of the classifier: pre-train the teacher-to-student regressor ``R``
   (``make_regressor``: the student's channel count, a kernel solving ``(M_t + 2P - K)/S + 1 = M_s``) so that a
   fresh dense head reads the task off ``R(m_t)``, the teacher frozen;
3. Algorithm 2: a narrow student learns ``task + beta * feature_mse(R(m_t), m_s)`` for ``k`` steps, then
   ``task + alpha * adversarial_loss(D(m_s)) + beta * feature_mse``, with the ``Discriminator`` updated first on
   each batch by ``discriminator_loss``.

For a real detector, tap the backbone's output (the map the RPN reads) with a forward hook and keep the detector's
own loss as the task loss. Run: ``python examples/feature_transfer_dense.py`` (about 20 s of CPU on one core).
Its output here (one seed; the example shows the plumbing, it is not a benchmark)::

    teacher (width 16, 512 images)       test IoU 0.755
    student alone (width 4, 64 images)   test IoU 0.646
    student + DLN (MSE only)             test IoU 0.679
    student + KTAN (MSE + adversarial)   test IoU 0.672
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from resprout.methods.hints import make_regressor
from resprout.methods.ktan import Discriminator, adversarial_loss, discriminator_loss, feature_mse

SIZE = 16


def make_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Noisy images with one bright square; the target is the square's mask."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, SIZE, SIZE, generator=g) * 0.5
    y = torch.zeros(n, 1, SIZE, SIZE)
    for i in range(n):
        s = int(torch.randint(3, 7, (1,), generator=g))
        r, c = (int(v) for v in torch.randint(0, SIZE - s, (2,), generator=g))
        x[i, 0, r:r + s, c:c + s] += 1.5
        y[i, 0, r:r + s, c:c + s] = 1.0
    return x, y


class DenseNet(nn.Module):
    """A backbone (two stride-2 conv stages: 16x16 -> 4x4) and a dense head that upsamples to a mask logit. The
    transferred map is the last conv's output before its ReLU (which opens the head): a regressed teacher map can
    be negative, and against a post-ReLU student map the discriminator would win on the sign alone."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, width, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1))
        self.head = nn.Sequential(nn.ReLU(), *dense_head(2 * width))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.backbone(x)
        return self.head(features), features  # a detector would return its boxes; we need its feature map too


def dense_head(channels: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(channels, 16, 3, padding=1), nn.ReLU(),
                         nn.Upsample(scale_factor=4, mode="bilinear", align_corners=False), nn.Conv2d(16, 1, 1))


def task_loss(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    # about 9% of the pixels are the square: weight them up, or a small net settles on "all background"
    return F.binary_cross_entropy_with_logits(logits, mask, pos_weight=torch.tensor(4.0))


def iou(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    net.eval()
    with torch.no_grad():
        pred = net(x)[0] > 0
    net.train()
    inter = (pred & (y > 0)).sum().item()
    union = (pred | (y > 0)).sum().item()
    return inter / max(union, 1)


def batches(x: torch.Tensor, y: torch.Tensor, steps: int, seed: int, size: int = 32):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (size,), generator=g)
        yield x[idx], y[idx]


def train_plain(net: nn.Module, x, y, steps: int, seed: int) -> None:
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for xb, yb in batches(x, y, steps, seed):
        loss = task_loss(net(xb)[0], yb)
        opt.zero_grad()
        loss.backward()
        opt.step()


def train_ktan(student: DenseNet, teacher: DenseNet, x, y, steps: int, seed: int, *, alpha: float = 0.6,
               beta: float = 0.5, mse_steps: int = 100, regressor_steps: int = 100) -> None:
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    with torch.no_grad():
        t_shape = teacher(x[:2])[1].shape[1:]
        s_shape = student(x[:2])[1].shape[1:]
    regressor = make_regressor(tuple(t_shape), tuple(s_shape))
    # Algorithm 1 with the task head as "C": R learns to keep what the task needs, the teacher stays frozen
    head = dense_head(s_shape[0])
    opt = torch.optim.Adam(list(regressor.parameters()) + list(head.parameters()), lr=3e-3)
    for xb, yb in batches(x, y, regressor_steps, seed + 1):
        with torch.no_grad():
            m_t = teacher(xb)[1]
        loss = task_loss(head(regressor(m_t)), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
    for p in regressor.parameters():
        p.requires_grad_(False)

    # Algorithm 2
    disc = Discriminator(s_shape[0])
    opt_s = torch.optim.Adam(student.parameters(), lr=3e-3)
    opt_d = torch.optim.SGD(disc.parameters(), lr=1e-2, momentum=0.9, weight_decay=1e-4)
    for step, (xb, yb) in enumerate(batches(x, y, steps, seed)):
        logits, m_s = student(xb)
        with torch.no_grad():
            r_t = regressor(teacher(xb)[1])
        adversarial = step >= mse_steps
        if adversarial:  # line 10: D first, on detached maps
            d = disc(torch.cat([r_t, m_s.detach()]))
            loss_d = discriminator_loss(d[:len(xb)], d[len(xb):])
            opt_d.zero_grad()
            loss_d.backward()
            opt_d.step()
        loss = task_loss(logits, yb) + beta * feature_mse(r_t, m_s)
        if adversarial:  # line 11: the student fools the updated D; D's weights get no update from this term
            loss = loss + alpha * adversarial_loss(disc(m_s))
        opt_s.zero_grad()
        torch.autograd.backward(loss, inputs=list(student.parameters()))
        opt_s.step()


def main() -> None:
    torch.set_num_threads(1)
    x, y = make_data(512, seed=0)  # the teacher's data
    x_small, y_small = x[:64], y[:64]  # the student's: the small-data case
    x_test, y_test = make_data(256, seed=1)
    steps = 200
    torch.manual_seed(0)
    teacher = DenseNet(width=16)
    train_plain(teacher, x, y, steps, seed=2)
    results = {"teacher (width 16, 512 images)": iou(teacher, x_test, y_test)}
    torch.manual_seed(1)
    student = DenseNet(width=4)
    init = {k: v.clone() for k, v in student.state_dict().items()}
    train_plain(student, x_small, y_small, steps, seed=3)
    results["student alone (width 4, 64 images)"] = iou(student, x_test, y_test)
    # the same initial weights and batches, now with feature transfer
    for name, alpha in (("student + DLN (MSE only)", 0.0), ("student + KTAN (MSE + adversarial)", 0.6)):
        student.load_state_dict(init)
        train_ktan(student, teacher, x_small, y_small, steps, seed=3, alpha=alpha)
        results[name] = iou(student, x_test, y_test)
    for name, value in results.items():
        print(f"{name:36s} test IoU {value:.3f}")


if __name__ == "__main__":
    main()
