"""Detection data: VOC and COCO folders written here by hand (boxes checked against the formats' own coordinate
rules), written by resprout and read back (equal boxes, labels, images), the Fashion-MNIST canvas set (seeded, tight
boxes, overlaps within the bound, several scales), and every refusal as one DataError line naming the file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from resprout.data.detection import DetectionDataset, read_coco, read_voc, write_coco, write_voc
from resprout.data.detection.canvas import make_canvases, write_fashion_canvas_voc
from resprout.errors import DataError, ResproutError
from tests.conftest import FASHION_DIR, needs_fashion


def one_line_error(call, *fragments) -> str:
    with pytest.raises(DataError) as info:
        call()
    msg = str(info.value)
    assert "\n" not in msg, msg
    assert isinstance(info.value, ResproutError) and info.value.exit_code == 2
    for fragment in fragments:
        assert str(fragment) in msg, f"{fragment!r} not in {msg!r}"
    return msg


def small_dataset() -> DetectionDataset:
    """Three RGB images of different sizes, integer boxes, one image without objects, one difficult object."""
    g = torch.Generator().manual_seed(0)
    images = [torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g) for h, w in ((20, 30), (16, 16),
                                                                                           (12, 25))]
    boxes = [torch.tensor([[0, 0, 30, 20], [3, 4, 9, 11]], dtype=torch.float32),
             torch.zeros(0, 4),
             torch.tensor([[24, 11, 25, 12]], dtype=torch.float32)]
    labels = [torch.tensor([1, 0]), torch.zeros(0, dtype=torch.int64), torch.tensor([2])]
    crowd = [torch.tensor([False, True]), torch.zeros(0, dtype=torch.bool), torch.tensor([False])]
    return DetectionDataset("small", ["cat", "dog", "zebra"], images, boxes, labels, ["a1", "b2", "c3"], crowd)


def assert_same(got: DetectionDataset, want: DetectionDataset) -> None:
    assert got.classes == want.classes and got.ids == want.ids
    for i in range(len(want)):
        assert torch.equal(got.images[i], want.images[i])
        assert torch.equal(got.boxes[i], want.boxes[i])
        assert torch.equal(got.labels[i], want.labels[i])
        assert torch.equal(got.crowd[i], want.crowd[i])


# --- VOC ------------------------------------------------------------------------------------------------------------

VOC_XML = """<annotation>
  <filename>{name}</filename>
  <size><width>{w}</width><height>{h}</height><depth>3</depth></size>
  {objects}
</annotation>"""
VOC_OBJECT = ("<object><name>{cls}</name><difficult>{hard}</difficult><bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin>"
              "<xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>")


def voc_folder(root: Path, annotations: dict[str, str], sizes: dict[str, tuple[int, int]],
               classes=("bird", "cat")) -> Path:
    """A VOC folder written by hand: ImageSets/Main/test.txt, <class>_test.txt, JPEG images and the given XML."""
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for image_id, xml in annotations.items():
        (root / "Annotations" / f"{image_id}.xml").write_text(xml)
        w, h = sizes[image_id]
        Image.new("RGB", (w, h), (10, 20, 30)).save(root / "JPEGImages" / f"{image_id}.jpg")
    (root / "ImageSets/Main/test.txt").write_text("".join(f"{i}\n" for i in annotations))
    for c in classes:
        (root / f"ImageSets/Main/{c}_test.txt").write_text("".join(f"{i} -1\n" for i in annotations))
    return root


def test_voc_boxes_follow_the_devkit_convention(tmp_path):
    # VOC boxes are 1-based inclusive pixel indices: xmin=1..xmax=W covers the whole width -> (0, W) continuous
    objects = "".join([VOC_OBJECT.format(cls="cat", hard=0, x1=1, y1=1, x2=40, y2=30),
                       VOC_OBJECT.format(cls="bird", hard=1, x1=5, y1=7, x2=5, y2=9)])
    root = voc_folder(tmp_path / "voc", {"000001": VOC_XML.format(name="000001.jpg", w=40, h=30, objects=objects)},
                      {"000001": (40, 30)})
    ds = read_voc(root, "test")
    assert ds.classes == ["bird", "cat"]  # from the <class>_test.txt files, sorted as the devkit lists them
    assert ds.ids == ["000001"] and ds.images[0].shape == (3, 30, 40)
    assert ds.boxes[0].tolist() == [[0, 0, 40, 30], [4, 6, 5, 9]]  # a one-pixel-wide box is 1 wide
    assert ds.labels[0].tolist() == [1, 0] and ds.crowd[0].tolist() == [False, True]
    # the targets a torchvision detector takes: label + 1 (0 is its background), difficult objects left out
    target = ds.target(0)
    assert target["labels"].tolist() == [2] and target["boxes"].tolist() == [[0, 0, 40, 30]]


def test_voc_write_then_read_gives_the_same_dataset(tmp_path):
    ds = small_dataset()
    write_voc(ds, tmp_path / "voc", "val")
    assert_same(read_voc(tmp_path / "voc", "val"), ds)
    # the per-class image-set files follow the devkit: 1 present, 0 only difficult, -1 absent
    rows = (tmp_path / "voc/ImageSets/Main/cat_val.txt").read_text().split("\n")
    assert [r.split()[1] for r in rows if r] == ["0", "-1", "-1"]


def test_voc_classes_can_be_fixed_and_an_unknown_class_is_refused(tmp_path):
    ds = small_dataset()
    write_voc(ds, tmp_path / "voc", "val")
    reordered = read_voc(tmp_path / "voc", "val", classes=["zebra", "dog", "cat", "horse"])
    assert reordered.labels[0].tolist() == [1, 2] and reordered.num_classes == 4
    one_line_error(lambda: read_voc(tmp_path / "voc", "val", classes=["cat", "zebra"]),
                   "a1.xml", "<object> 1", "class 'dog' is not one of the 2 classes (cat, zebra)")


@pytest.mark.parametrize("xml,fragments", [
    ("", ["is empty"]),
    ("  \n", ["is empty"]),
    ("<annotation><size><width>40</width>", ["is not well-formed XML"]),
    ("<annotations/>", ["root element is <annotations>"]),
    ("<annotation><filename>x.jpg</filename></annotation>", ["has no <size>"]),
    (VOC_XML.format(name="x.jpg", w=40, h=30, objects=VOC_OBJECT.format(cls="cat", hard=0, x1=1, y1=1, x2=41,
                                                                        y2=30)),
     ["<object> 1 (cat): box xmin=1 ymin=1 xmax=41 ymax=30 is empty or outside the 40x30 image"]),
    (VOC_XML.format(name="x.jpg", w=40, h=30, objects=VOC_OBJECT.format(cls="cat", hard=0, x1=0, y1=1, x2=4,
                                                                        y2=3)),
     ["outside the 40x30 image"]),
    (VOC_XML.format(name="x.jpg", w=40, h=30, objects=VOC_OBJECT.format(cls="cat", hard=0, x1=9, y1=1, x2=8,
                                                                        y2=3)),
     ["is empty or outside"]),
    (VOC_XML.format(name="x.jpg", w=40, h=30, objects=VOC_OBJECT.format(cls="dog", hard=0, x1=1, y1=1, x2=4,
                                                                        y2=3)),
     ["class 'dog' is not one of the 2 classes (bird, cat)"]),
    (VOC_XML.format(name="x.jpg", w=40, h=30, objects=VOC_OBJECT.format(cls="cat", hard=0, x1="a", y1=1, x2=4,
                                                                        y2=3)),
     ["<xmin> is 'a', not a number"]),
    (VOC_XML.format(name="x.jpg", w=40, h=30, objects=VOC_OBJECT.format(cls="cat", hard=2, x1=1, y1=1, x2=4,
                                                                        y2=3)),
     ["<difficult> is '2'"]),
    (VOC_XML.format(name="../x.jpg", w=40, h=30, objects=""), ["must be a plain file name"]),
])
def test_a_bad_voc_annotation_is_one_line_naming_the_file(tmp_path, xml, fragments):
    root = voc_folder(tmp_path / "voc", {"x": xml}, {"x": (40, 30)})
    one_line_error(lambda: read_voc(root, "test"), str(root / "Annotations" / "x.xml"), *fragments)


def test_a_voc_image_of_another_size_or_a_missing_file_is_refused(tmp_path):
    xml = VOC_XML.format(name="x.jpg", w=40, h=30, objects="")
    root = voc_folder(tmp_path / "voc", {"x": xml}, {"x": (41, 30)})
    one_line_error(lambda: read_voc(root, "test"), "x.jpg is 41x30 but", "says 40x30")
    (root / "JPEGImages/x.jpg").unlink()
    one_line_error(lambda: read_voc(root, "test"), "x.jpg does not exist")
    (root / "Annotations/x.xml").unlink()
    one_line_error(lambda: read_voc(root, "test"), "x.xml does not exist")
    one_line_error(lambda: read_voc(root, "train"), "train.txt does not exist (image sets there: test)")
    (root / "ImageSets/Main/test.txt").write_text("x\nx\n")
    one_line_error(lambda: read_voc(root, "test"), "line 2: image id 'x' is listed twice")
    one_line_error(lambda: read_voc(tmp_path / "nowhere", "test"), "is not a folder")


# --- COCO -----------------------------------------------------------------------------------------------------------


def coco_folder(root: Path, data) -> tuple[Path, Path]:
    (root / "images").mkdir(parents=True, exist_ok=True)
    for img in data.get("images", []) if isinstance(data, dict) else []:
        Image.new("L", (img["width"], img["height"]), 7).save(root / "images" / img["file_name"])
    path = root / "instances.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path, root / "images"


def coco_data(**changes):
    data = {"images": [{"id": 10, "file_name": "a.png", "width": 40, "height": 30},
                       {"id": 11, "file_name": "b.png", "width": 20, "height": 20}],
            "categories": [{"id": 7, "name": "zebra"}, {"id": 3, "name": "cat"}],
            "annotations": [{"id": 1, "image_id": 10, "category_id": 7, "bbox": [2.5, 3, 10, 4.5], "iscrowd": 0},
                            {"id": 2, "image_id": 10, "category_id": 3, "bbox": [0, 0, 40, 30], "iscrowd": 1}]}
    data.update(changes)
    return data


def test_coco_boxes_and_category_order(tmp_path):
    ds = read_coco(*coco_folder(tmp_path, coco_data()), mode="L")
    assert ds.classes == ["cat", "zebra"]  # by category id: 3, then 7
    assert ds.ids == ["10", "11"] and ds.images[0].shape == (1, 30, 40)
    assert ds.boxes[0].tolist() == [[2.5, 3, 12.5, 7.5], [0, 0, 40, 30]]  # [x, y, w, h] -> (x, y, x + w, y + h)
    assert ds.labels[0].tolist() == [1, 0] and ds.crowd[0].tolist() == [False, True]
    assert len(ds.boxes[1]) == 0  # an image with no annotation stays, as a background image


def test_coco_and_voc_written_from_one_dataset_read_back_equal(tmp_path):
    ds = small_dataset()
    write_coco(ds, tmp_path / "coco.json", tmp_path / "images")
    write_voc(ds, tmp_path / "voc", "val")
    from_coco, from_voc = read_coco(tmp_path / "coco.json", tmp_path / "images"), read_voc(tmp_path / "voc", "val")
    assert_same(from_voc, ds)
    assert from_coco.ids == ["1", "2", "3"]  # coco_dict numbers the images
    from_coco.ids = list(ds.ids)
    assert_same(from_coco, ds)


@pytest.mark.parametrize("data,fragments", [
    ("", ["is empty"]),
    ('{"images": [', ["is not valid JSON"]),
    ("[1, 2]", ["holds a JSON list"]),
    (coco_data(categories=[]), ["has no categories"]),
    ({"images": [], "annotations": [], "categories": [{"id": 1, "name": "a"}]}, ["lists no images"]),
    ({k: v for k, v in coco_data().items() if k != "annotations"}, ["has no 'annotations'"]),
    (coco_data(annotations=[{"image_id": 10, "category_id": 9, "bbox": [0, 0, 1, 1]}]),
     ["annotations[0]: category_id 9 is not one of the file's categories (3, 7)"]),
    (coco_data(annotations=[{"image_id": 99, "category_id": 3, "bbox": [0, 0, 1, 1]}]),
     ["annotations[0]: image_id 99 is not in the file's images"]),
    (coco_data(annotations=[{"image_id": 10, "category_id": 3, "bbox": [35, 0, 6, 1]}]),
     ["annotations[0]: bbox [35, 0, 6, 1] is empty or outside the 40x30 image 10"]),
    (coco_data(annotations=[{"image_id": 10, "category_id": 3, "bbox": [-0.5, 0, 6, 1]}]), ["outside"]),
    (coco_data(annotations=[{"image_id": 10, "category_id": 3, "bbox": [1, 1, 0, 1]}]), ["is empty or outside"]),
    (coco_data(annotations=[{"image_id": 10, "category_id": 3, "bbox": [1, 1, 2]}]), ["expected four numbers"]),
    (coco_data(annotations=[{"image_id": 10, "category_id": 3, "bbox": [1, "1", 2, 2]}]), ["expected four numbers"]),
    (coco_data(annotations=[{"image_id": 10, "category_id": 3, "bbox": [1, 1, 2, 2], "iscrowd": 2}]),
     ["iscrowd is 2"]),
    (coco_data(categories=[{"id": 3, "name": "cat"}, {"id": 3, "name": "dog"}]), ["category id 3 is used twice"]),
    (coco_data(images=[{"id": 10, "file_name": "a.png", "width": 40, "height": 30},
                       {"id": "10", "file_name": "b.png", "width": 20, "height": 20}]), ["image id '10' is used twice"]),
    (coco_data(images=[{"id": 10, "file_name": "a.png", "width": True, "height": 30}]), ["'width' is true"]),
])
def test_a_bad_coco_file_is_one_line_naming_it(tmp_path, data, fragments):
    path, images = coco_folder(tmp_path, data)
    one_line_error(lambda: read_coco(path, images), str(path), *fragments)


def test_coco_unknown_class_name_and_image_problems(tmp_path):
    path, images = coco_folder(tmp_path, coco_data())
    one_line_error(lambda: read_coco(path, images, classes=["cat", "horse"]),
                   "category 7 'zebra' is not one of the 2 classes (cat, horse)")
    Image.new("L", (39, 30)).save(images / "a.png")
    one_line_error(lambda: read_coco(path, images), "a.png is 39x30 but", "says 40x30")
    (images / "a.png").unlink()
    one_line_error(lambda: read_coco(path, images), "a.png does not exist (image 10 of")
    one_line_error(lambda: read_coco(tmp_path / "none.json", images), "none.json does not exist")


# --- the Fashion-MNIST canvas set -----------------------------------------------------------------------------------


def blob_items(n: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    """Items like Fashion-MNIST's: a bright random blob on black, 28x28, labels 0..3."""
    g = np.random.default_rng(1)
    items = np.zeros((n, 1, 28, 28), dtype=np.uint8)
    for i in range(n):
        h, w = g.integers(8, 27, size=2)
        y, x = g.integers(0, 28 - h), g.integers(0, 28 - w)
        items[i, 0, y:y + h, x:x + w] = g.integers(40, 256, size=(h, w))
    return torch.from_numpy(items), torch.from_numpy(g.integers(0, 4, size=n))


def pixel_iou(a, b, size: int) -> float:
    """IoU of two integer boxes counted on pixel masks (another way than the generator's formula)."""
    masks = np.zeros((2, size, size), dtype=bool)
    for m, (x1, y1, x2, y2) in zip(masks, (a, b), strict=True):
        m[int(y1):int(y2), int(x1):int(x2)] = True
    return (masks[0] & masks[1]).sum() / (masks[0] | masks[1]).sum()


def test_canvases_are_seeded_with_tight_boxes_bounded_overlaps_and_several_scales(tmp_path):
    items, labels = blob_items()
    kw = dict(canvas_size=96, objects=(2, 5), scale=(0.75, 2.5), max_iou=0.3, threshold=16)
    ds = make_canvases(items, labels, ["a", "b", "c", "d"], 30, seed=3, **kw)
    again = make_canvases(items, labels, ["a", "b", "c", "d"], 30, seed=3, **kw)
    assert_same(again, ds)
    assert not all(torch.equal(a, b) for a, b in zip(ds.images, make_canvases(
        items, labels, ["a", "b", "c", "d"], 30, seed=4, **kw).images, strict=True))
    counts = [len(b) for b in ds.boxes]
    assert min(counts) >= 1 and max(counts) <= 5 and max(counts) >= 4
    ious = []
    for image, boxes in zip(ds.images, ds.boxes, strict=True):
        bright = image[0].numpy() > 16
        for k, (x1, y1, x2, y2) in enumerate(boxes.int().tolist()):
            # tight: every edge row and column of the box holds a pixel above the threshold
            inside = bright[y1:y2, x1:x2]
            assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()
            ious += [pixel_iou(boxes[k].tolist(), other, 96) for other in boxes[k + 1:].tolist()]
    assert max(ious) <= 0.3 + 1e-9 and sum(i > 0 for i in ious) >= 5  # overlaps happen, within the bound
    sides = torch.cat([b[:, 2:] - b[:, :2] for b in ds.boxes]).max(dim=1).values
    assert sides.max() / sides.min() > 3  # several scales


def test_canvases_round_trip_through_a_voc_folder(tmp_path):
    items, labels = blob_items()
    ds = make_canvases(items, labels, ["a", "b", "c", "d"], 12, canvas_size=64, scale=(0.5, 2.0), seed=0,
                       id_prefix="train_")
    write_voc(ds, tmp_path / "voc", "train")
    assert_same(read_voc(tmp_path / "voc", "train", mode="L"), ds)


@needs_fashion
def test_the_fashion_canvas_set_is_written_and_read_back(tmp_path):
    made = write_fashion_canvas_voc(tmp_path / "canvas", fashion_path=FASHION_DIR, n_train=8, n_test=4, seed=1)
    for split, ds in made.items():
        assert_same(read_voc(tmp_path / "canvas", split, mode="L"), ds)
    assert made["train"].classes == sorted(["t_shirt_top", "trouser", "pullover", "dress", "coat", "sandal", "shirt",
                                            "sneaker", "bag", "ankle_boot"])
    readme = (tmp_path / "canvas/README.md").read_text()
    assert f"| train | 8 | {made['train'].num_objects} |" in readme and "seed=1" in readme
    # RGB, as torchvision's detectors take it: the gray channel three times
    rgb = read_voc(tmp_path / "canvas", "test")
    assert rgb.images[0].shape[0] == 3 and torch.equal(rgb.images[0][1], made["test"].images[0][0])
