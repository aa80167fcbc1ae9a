"""Train on data from your own code, with your own network: ``python examples/own_data.py``.

The data here is scikit-learn's 8x8 digits, split by hand and wrapped in an ordinary torch ``Dataset`` that hands
out ``(image, label)`` pairs the way a torchvision dataset with ``transform=ToTensor()`` does: float images in
[0, 1], shape (C, H, W). Any map-style dataset works, and so does a plain ``(images, labels)`` pair of tensors.
resprout reads each split once into memory; ``per_class``, ``augment``, the seeded order and exact resume work as
with a built-in source (see ``resprout.data.user``).
"""

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import Dataset

import resprout

EPOCHS = globals().get("EPOCHS", 10)  # the tests run this file with fewer epochs
OUT = globals().get("OUT", "runs/own-data")


class Digits(Dataset):
    classes = [str(i) for i in range(10)]  # optional: names the classes in reports

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        # gray levels 0..16 -> 8-bit levels k/255 in [0, 1], as ToTensor() makes of an 8-bit image
        self.images = torch.from_numpy(np.round(images * 255.0 / 16.0) / 255.0).float()
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.images[i], int(self.labels[i])


class SmallNet(nn.Module):
    """Your own network: any nn.Module that maps (N, 1, 8, 8) images to (N, 10) class scores."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                      nn.Conv2d(16, 32, 3, padding=1, stride=2), nn.BatchNorm2d(32), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


if __name__ == "__main__":
    d = load_digits()
    order = np.random.default_rng(0).permutation(len(d.target))
    test_idx, train_idx = order[:360], order[360:]
    train = Digits(d.images[train_idx][:, None], d.target[train_idx])
    test = Digits(d.images[test_idx][:, None], d.target[test_idx])

    # module=SmallNet (the class, not an instance): the seed sets its initial weights, and `resprout slim` /
    # `resprout resume` can rebuild it by its import path when this file is importable.
    result = resprout.train(train=train, test=test, module=SmallNet, augment="crop",
                            epochs=EPOCHS, seed=0, out=OUT, progress="plain")
    print(f"test top-1 {100 * result['final']['model']['top1']:.2f}")
    # After a crash, resume needs the same data (the run stores its fingerprint) and the same network:
    #     resprout.resume(OUT, train=train, test=test, module=SmallNet)
