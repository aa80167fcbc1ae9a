"""Miniatures of the official layouts of the Knowledge Evolution paper's five datasets, generated in a folder.

Each writes small JPEG images of varied sizes and aspect ratios (a smooth class-coloured pattern plus noise, so a
network can tell the classes apart) and the official list files, and returns what a reader should find:
``{"train": [(relative file, class index)], "val": [...] (if the dataset has one), "test": [...],
"classes": [names]}``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

SIZES = [(40, 56), (48, 40), (36, 36), (60, 44), (44, 64)]  # (height, width): landscape, portrait, square


def write_image(path: Path, label: int, index: int, size: tuple[int, int] | None = None, fmt: str = "JPEG") -> None:
    from PIL import Image

    h, w = size or SIZES[index % len(SIZES)]
    rng = np.random.default_rng(1000 * label + index)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    base = np.stack([np.sin(3 * xx + label), np.cos(2 * yy + 2 * label), np.sin(xx * yy * 5 + label / 2)], -1)
    img = np.clip(128 + 90 * base + 20 * rng.standard_normal((h, w, 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path, fmt, **({"quality": 90} if fmt == "JPEG" else {}))


def cub200(root: Path, classes: int = 3, train: int = 4, test: int = 2) -> dict:
    """``CUB_200_2011/`` with images.txt, image_class_labels.txt, train_test_split.txt and classes.txt."""
    d = root / "CUB_200_2011"
    names = [f"{c + 1:03d}.Bird_{c}" for c in range(classes)]
    images, labels, split, out = [], [], [], {"train": [], "test": [], "classes": names}
    n = 0
    for c, name in enumerate(names):
        for k in range(train + test):
            n += 1
            rel = f"{name}/Bird_{c}_{k:04d}.jpg"
            write_image(d / "images" / rel, c, k)
            is_train = k % (train + test) < train
            images.append(f"{n} {rel}")
            labels.append(f"{n} {c + 1}")
            split.append(f"{n} {int(is_train)}")
            out["train" if is_train else "test"].append((f"images/{rel}", c))
    (d / "images.txt").write_text("\n".join(images) + "\n")
    (d / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    (d / "train_test_split.txt").write_text("\n".join(split) + "\n")
    (d / "classes.txt").write_text("\n".join(f"{c + 1} {name}" for c, name in enumerate(names)) + "\n")
    return out


def flower102(root: Path, classes: int = 3, per_split: int = 2) -> dict:
    """``jpg/image_NNNNN.jpg``, imagelabels.mat and setid.mat (1-based, as (1, N) rows like the official files)."""
    from scipy.io import savemat

    n = classes * 3 * per_split
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(1, classes + 1), 3 * per_split)
    order = rng.permutation(n) + 1  # image numbers not grouped by class or split
    for pos, number in enumerate(order):
        write_image(root / "jpg" / f"image_{number:05d}.jpg", int(labels[pos]) - 1, pos)
    image_labels = np.zeros(n, dtype=np.uint8)
    image_labels[order - 1] = labels
    savemat(root / "imagelabels.mat", {"labels": image_labels[None, :]})
    ids: dict[str, list[int]] = {"trnid": [], "valid": [], "tstid": []}
    for c in range(classes):
        numbers = order[labels == c + 1]
        for j, key in enumerate(ids):
            ids[key].extend(numbers[j * per_split:(j + 1) * per_split].tolist())
    savemat(root / "setid.mat", {k: np.array(v, dtype=np.uint16)[None, :] for k, v in ids.items()})
    out = {s: [(f"jpg/image_{i:05d}.jpg", int(image_labels[i - 1]) - 1) for i in ids[k]]
           for s, k in (("train", "trnid"), ("val", "valid"), ("test", "tstid"))}
    out["classes"] = [str(c + 1) for c in range(classes)]
    return out


def fgvc_aircraft(root: Path, classes: int = 3, per_split: int = 2) -> dict:
    """``fgvc-aircraft-2013b/data/`` with images/, variants/families/manufacturers.txt and their split lists."""
    d = root / "fgvc-aircraft-2013b" / "data"
    d.mkdir(parents=True)
    variants = [f"7{c}7-{c}00" for c in range(classes)]  # names with digits, dashes and (below) spaces
    variants[0] = "A300B4 F"
    families = [f"Family {c % 2}" for c in range(classes)]
    makers = [f"Maker{c % 2}" for c in range(classes)]
    (d / "variants.txt").write_text("\n".join(variants) + "\n")
    (d / "families.txt").write_text("\n".join(sorted(set(families))) + "\n")
    (d / "manufacturers.txt").write_text("\n".join(sorted(set(makers))) + "\n")
    out: dict = {"train": [], "val": [], "test": [], "classes": variants}
    lists = {(level, s): [] for level in ("variant", "family", "manufacturer") for s in ("train", "val", "test")}
    number = 1000000
    for c in range(classes):
        for s in ("train", "val", "test"):
            for k in range(per_split):
                number += 7
                write_image(d / "images" / f"{number}.jpg", c, k)
                out[s].append((f"images/{number}.jpg", c))
                lists[("variant", s)].append(f"{number} {variants[c]}")
                lists[("family", s)].append(f"{number} {families[c]}")
                lists[("manufacturer", s)].append(f"{number} {makers[c]}")
    for (level, s), lines in lists.items():
        (d / f"images_{level}_{s}.txt").write_text("\n".join(lines) + "\n")
    return out


def mit67(root: Path, classes: int = 3, train: int = 3, test: int = 2) -> dict:
    """``Images/<category>/*.jpg`` with TrainImages.txt and TestImages.txt."""
    names = [f"scene_{chr(ord('a') + c)}" for c in range(classes)]
    out: dict = {"train": [], "test": [], "classes": sorted(names)}
    lines: dict[str, list[str]] = {"train": [], "test": []}
    for c, name in enumerate(names):
        for k in range(train + test):
            rel = f"{name}/{name}_{k}.jpg"
            write_image(root / "Images" / rel, c, k)
            s = "train" if k < train else "test"
            lines[s].append(rel)
            out[s].append((f"Images/{rel}", sorted(names).index(name)))
    (root / "TrainImages.txt").write_text("\n".join(lines["train"]) + "\n")
    (root / "TestImages.txt").write_text("\n".join(lines["test"]) + "\n")
    return out


def stanford_dogs(root: Path, classes: int = 3, train: int = 3, test: int = 2) -> dict:
    """``Images/<wnid>-<breed>/*.jpg`` with train_list.mat and test_list.mat (cell arrays, as the official files)."""
    from scipy.io import savemat

    folders = [f"n0208{5620 + c}-Breed_{c}" for c in range(classes)]
    out: dict = {"train": [], "test": [], "classes": [f"Breed_{c}" for c in range(classes)]}
    entries: dict[str, list[tuple[str, int]]] = {"train": [], "test": []}
    for c, folder in enumerate(folders):
        for k in range(train + test):
            rel = f"{folder}/{folder[:9]}_{k}.jpg"
            write_image(root / "Images" / rel, c, k)
            s = "train" if k < train else "test"
            entries[s].append((rel, c + 1))
            out[s].append((f"Images/{rel}", c))
    for s, items in entries.items():
        cells = np.empty((len(items), 1), dtype=object)
        for i, (rel, _) in enumerate(items):
            cells[i, 0] = np.array([rel])
        savemat(root / f"{s}_list.mat", {"file_list": cells, "annotation_list": cells,
                                         "labels": np.array([[c] for _, c in items], dtype=np.float64)})
    return out


MAKERS = {"cub200": cub200, "flower102": flower102, "fgvc-aircraft": fgvc_aircraft, "mit67": mit67,
          "stanford-dogs": stanford_dogs}
