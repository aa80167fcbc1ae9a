"""Detection as a trainer task: the task's metrics against detection_map called by hand on the model's own
predictions, a tiny ce run whose stored mAP equals a re-evaluation of its checkpoint, a resume that is bit-identical,
the loader's seeded order and flips, the sources, and every refusal (one line, exit 2, nothing written).

The tests marked ``vision`` need torchvision and pycocotools (make test-vision); the others run anywhere."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import resprout
from resprout.cli import main
from resprout.data.detection import DetectionDataset, write_coco, write_voc
from resprout.data.detection.canvas import make_canvases
from resprout.data.detection.loaders import DetectionData, DetectionEvalLoader, DetectionTrainLoader
from resprout.data.sources import load_source
from resprout.engine.store import Store
from tests.conftest import FASHION_DIR, needs_fashion

DETECTOR = "tv-det:fasterrcnn_mobilenet_v3_large_fpn"
# a detector small enough for a test: 64-pixel inputs, few proposals
TINY = {"min_size": 64, "max_size": 64, "rpn_pre_nms_top_n_train": 50, "rpn_post_nms_top_n_train": 20,
        "rpn_pre_nms_top_n_test": 50, "rpn_post_nms_top_n_test": 20, "box_batch_size_per_image": 32}


def blob_items(n: int = 60) -> tuple[torch.Tensor, torch.Tensor]:
    """Items like Fashion-MNIST's: a bright blob on black, 28x28, three classes whose blobs differ in shape."""
    g = np.random.default_rng(1)
    items = np.zeros((n, 1, 28, 28), dtype=np.uint8)
    labels = g.integers(0, 3, size=n)
    for i, k in enumerate(labels):
        h, w = ((20, 8), (8, 20), (16, 16))[k]
        y, x = g.integers(0, 28 - h), g.integers(0, 28 - w)
        items[i, 0, y:y + h, x:x + w] = g.integers(80, 256)
    return torch.from_numpy(items), torch.from_numpy(labels)


def tiny_canvases(n_train: int = 8, n_test: int = 4) -> dict[str, DetectionDataset]:
    items, labels = blob_items()
    common = dict(canvas_size=64, objects=(1, 2), scale=(1.0, 1.5))
    return {split: make_canvases(items, labels, ["tall", "wide", "square"], n, seed=s, id_prefix=f"{split}_",
                                 **common)
            for split, n, s in (("train", n_train, 0), ("test", n_test, 1))}


@pytest.fixture
def voc(tmp_path) -> Path:
    root = tmp_path / "voc"
    for split, ds in tiny_canvases().items():
        write_voc(ds, root, split)
    return root


def voc_keys(root: Path) -> list[str]:
    return ["data=voc", f"data_path={root}", "data.train_set=train", "data.test_set=test"]


def one_line(text: str, *fragments: str) -> None:
    assert text.count("\n") <= 1 and text.strip(), text
    for f in fragments:
        assert f in text, f"{f!r} not in {text!r}"


def assert_nothing_written(tmp_path: Path) -> None:
    assert not (tmp_path / "run").exists()
    runs = tmp_path / "runs"
    if (runs / "resprout.db").exists():
        with Store(runs / "resprout.db") as store:
            assert [r.status for r in store.runs()] in ([], ["failed"])


# -- data: the loader and the sources ----------------------------------------------------------------------------------
def test_the_loader_is_seeded_and_flips_boxes_with_their_image():
    ds = tiny_canvases()["train"]
    loader = DetectionTrainLoader(ds, batch_size=3, seed=5, augment="flip")
    assert loader.steps(0, 0) == 3 and [len(b) for b in loader.plan(0, 0)] == [3, 3, 2]
    order = torch.cat(loader.plan(0, 0)).tolist()
    assert sorted(order) == list(range(8)) and order != torch.cat(loader.plan(0, 1)).tolist()
    flipped = unflipped = 0
    for seed, step in ((seed, step) for seed in (5, 6, 7) for step in range(3)):
        loader = DetectionTrainLoader(ds, batch_size=3, seed=seed, augment="flip")
        images, targets = loader.batch(0, 0, step)
        again = DetectionTrainLoader(ds, batch_size=3, seed=seed, augment="flip").batch(0, 0, step)
        for i, x, t, y, u in zip(loader.plan(0, 0)[step].tolist(), images, targets, *again, strict=True):
            assert torch.equal(x, y) and torch.equal(t["boxes"], u["boxes"])  # a pure function of the step
            plain = ds.images[i].float().div(255).expand(3, -1, -1)
            assert x.shape == (3, 64, 64) and torch.equal(t["labels"], ds.labels[i] + 1)
            if torch.equal(x, plain):
                unflipped += 1
                assert torch.equal(t["boxes"], ds.boxes[i])
            else:
                flipped += 1
                assert torch.equal(x, plain.flip(2))
                b = ds.boxes[i]
                assert torch.equal(t["boxes"], torch.stack([64 - b[:, 2], b[:, 1], 64 - b[:, 0], b[:, 3]], 1))
                if len(b) == 1:  # the object's bright pixels are inside its flipped box: it moved with its image
                    x1, y1, x2, y2 = (int(v) for v in t["boxes"][0])
                    bright = x[0] > 16 / 255  # make_canvases's box threshold
                    assert bright[y1:y2, x1:x2].sum() == bright.sum() > 0
    assert flipped and unflipped


def test_the_voc_and_coco_sources_read_both_splits(voc, tmp_path):
    ds = load_source("voc", voc, train_set="train", test_set="test")
    want = tiny_canvases()
    assert isinstance(ds, DetectionData) and ds.classes == sorted(["tall", "wide", "square"])
    assert len(ds.train) == 8 and len(ds.test) == 4 and ds.input_shape == (3, 64, 64)
    assert ds.train.num_objects == want["train"].num_objects
    coco = tmp_path / "coco"
    for split, part in want.items():
        write_coco(part, coco / f"{split}.json", coco / split)
    ds = load_source("coco", coco, train_json="train.json", test_json="test.json", train_images="train",
                     test_images="test")
    assert ds.classes == ["tall", "wide", "square"] and len(ds.test) == 4
    assert [torch.equal(a, b) for a, b in zip(ds.test.boxes, want["test"].boxes)] == [True] * 4


@needs_fashion
def test_the_fashion_canvas_source_is_seeded():
    opts = dict(n_train=3, n_test=2, canvas_size=64, objects=[1, 2], scale=[0.75, 1.5])
    a = load_source("fashion-canvas", FASHION_DIR, **opts, seed=1)
    b = load_source("fashion-canvas", FASHION_DIR, **opts, seed=1)
    c = load_source("fashion-canvas", FASHION_DIR, **opts, seed=2)
    assert len(a.train) == 3 and len(a.test) == 2 and a.num_classes == 10 and a.input_shape == (3, 64, 64)
    assert all(torch.equal(x, y) for x, y in zip(a.train.images, b.train.images))
    assert not all(torch.equal(x, y) for x, y in zip(a.train.images, c.train.images))


# -- refusals (the model is never built: they hold without torchvision too) --------------------------------------------
@pytest.mark.parametrize("keys,says", [
    (["model=cnn"], "data=voc is a detection set; model=cnn is not a detector: use model=tv-det:<name>"),
    ([f"model={DETECTOR}", "method=ls"],
     "method=ls: ls does not train a detector (data=voc); use method=ce, kd, fitnet, dln or ktan"),
    ([f"model={DETECTOR}", "method=graft"], "graft does not train a detector"),
    ([f"model={DETECTOR}", "method=at", "teacher=nowhere"], "at does not train a detector"),
    ([f"model={DETECTOR}", "method=ke"], "ke does not train a detector"),
    ([f"model={DETECTOR}", "per_class=2"], "per_class=2 does not apply to a detection set"),
    ([f"model={DETECTOR}", "image_size=32"], "image_size=32 does not apply to a detection set"),
    ([f"model={DETECTOR}", "augment=crop+flip"], "augment=crop+flip does not apply to a detection set"),
])
def test_bad_combinations_are_one_line_exit_2_and_write_nothing(voc, tmp_path, capsys, keys, says):
    assert main(["train", *voc_keys(voc), *keys, "epochs=1", "--out", str(tmp_path / "run")]) == 2
    one_line(capsys.readouterr().err, says)
    assert_nothing_written(tmp_path)


def test_without_torchvision_a_detector_is_one_line_naming_it():
    import importlib.util

    from resprout.errors import ConfigError
    from resprout.models import build_model

    if importlib.util.find_spec("torchvision") is not None:
        pytest.skip("torchvision is installed here: the line is for environments without it")
    with pytest.raises(ConfigError) as e:
        build_model(DETECTOR, in_channels=3, num_classes=3)
    one_line(str(e.value), f"model {DETECTOR!r} needs torchvision, which is not installed")


def test_a_detector_on_classification_data_is_refused(tmp_path, capsys):
    assert main(["train", "data=synthetic", f"model={DETECTOR}", "epochs=1", "--out", str(tmp_path / "run")]) == 2
    one_line(capsys.readouterr().err, f"model={DETECTOR} is a detector; data=synthetic is not a detection set")
    assert_nothing_written(tmp_path)


VOC_OBJECT = ("<object><name>{cls}</name><difficult>0</difficult><bndbox><xmin>{x1}</xmin><ymin>1</ymin>"
              "<xmax>{x2}</xmax><ymax>9</ymax></bndbox></object>")


@pytest.mark.parametrize("xml,says", [
    ("", "is empty"),
    ("<annotation><size><width>64</width>", "is not well-formed XML"),
    ("<annotation><filename>{name}</filename><size><width>64</width><height>64</height><depth>3</depth></size>"
     + VOC_OBJECT.format(cls="tall", x1=60, x2=70) + "</annotation>", "is empty or outside the 64x64 image"),
    ("<annotation><filename>{name}</filename><size><width>64</width><height>64</height><depth>3</depth></size>"
     + VOC_OBJECT.format(cls="zebra", x1=1, x2=7) + "</annotation>", "class 'zebra' is not one of the 3 classes"),
])
def test_a_bad_voc_file_is_one_line_through_the_cli(voc, tmp_path, capsys, xml, says):
    xml_file = sorted((voc / "Annotations").glob("test_*.xml"))[0]
    name = next(p.name for p in (voc / "JPEGImages").iterdir() if p.stem == xml_file.stem)
    xml_file.write_text(xml.format(name=name))
    assert main(["train", *voc_keys(voc), f"model={DETECTOR}", "epochs=1", "--out", str(tmp_path / "run")]) == 2
    one_line(capsys.readouterr().err, xml_file.name, says)
    assert_nothing_written(tmp_path)


def test_a_malformed_coco_file_is_one_line_through_the_cli(tmp_path, capsys):
    coco = tmp_path / "coco"
    for split, part in tiny_canvases().items():
        write_coco(part, coco / f"{split}.json", coco / split)
    (coco / "test.json").write_text('{"images": [')
    keys = ["data=coco", f"data_path={coco}", "data.train_json=train.json", "data.test_json=test.json",
            "data.train_images=train", "data.test_images=test", f"model={DETECTOR}"]
    assert main(["train", *keys, "epochs=1", "--out", str(tmp_path / "run")]) == 2
    one_line(capsys.readouterr().err, "test.json", "JSON")
    assert_nothing_written(tmp_path)
    data = json.loads((coco / "train.json").read_text())
    data["annotations"][0]["bbox"] = [60.0, 1.0, 10.0, 5.0]  # past the 64-pixel image's right edge
    (coco / "train.json").write_text(json.dumps(data))
    (coco / "test.json").write_text((coco / "train.json").read_text())
    assert main(["train", *keys, "epochs=1", "--out", str(tmp_path / "run")]) == 2
    one_line(capsys.readouterr().err, "train.json", "outside")
    assert_nothing_written(tmp_path)


# -- the task (vision: torchvision's detectors, pycocotools) ------------------------------------------------------------
class Oracle(torch.nn.Module):
    """A stand-in detector that returns, for the images it is given in order, the ground truth of ``dataset`` with
    labels shifted by ``shift`` and scores 0.9: what the task must score as mAP 1 (shift 0) or 0 (another class)."""

    def __init__(self, dataset: DetectionDataset, shift: int = 0) -> None:
        super().__init__()
        self.dataset, self.shift, self.seen = dataset, shift, 0
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def forward(self, images, targets=None):
        out = []
        for image in images:
            t = self.dataset.target(self.seen)
            assert image.shape == (3, *self.dataset.images[self.seen].shape[1:])
            labels = (t["labels"] - 1 + self.shift) % self.dataset.num_classes + 1
            out.append({"boxes": t["boxes"], "labels": labels, "scores": torch.full((len(labels),), 0.9)})
            self.seen += 1
        return out


@pytest.mark.vision
def test_the_task_scores_the_ground_truth_1_and_another_class_0():
    from resprout.engine.detection import DetectionTask

    test = tiny_canvases()["test"]
    for shift, want in ((0, 1.0), (1, 0.0)):
        got = DetectionTask().evaluate(Oracle(test, shift), DetectionEvalLoader(test, batch_size=3))
        assert got == {"top1": want, "map_50": want, "map": want, "map_75": want}


def tiny_detector(num_classes: int = 3, seed: int = 0):
    from resprout.models import build_model

    torch.manual_seed(seed)
    return build_model(DETECTOR, in_channels=3, num_classes=num_classes, **TINY)


@pytest.mark.vision
def test_the_task_is_detection_map_of_the_models_own_predictions():
    from resprout.engine.detection import DetectionTask
    from resprout.metrics.detection import detection_map

    data = tiny_canvases()
    model = tiny_detector()
    loader = DetectionTrainLoader(data["train"], batch_size=4, seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    for step in range(4):  # a few steps, so that the detections are not all alike
        opt.zero_grad()
        sum(model(*loader.batch(0, step // 2, step % 2)).values()).backward()
        opt.step()
    test = data["test"]
    got = DetectionTask().evaluate(model, DetectionEvalLoader(test, batch_size=3))
    assert model.training  # its mode is restored
    model.eval()
    with torch.no_grad():  # by hand: the whole split in one call, the grayscale canvases as three channels
        predictions = model([img.float().div(255).repeat(3, 1, 1) for img in test.images])
    want = detection_map(predictions, test)
    assert got["top1"] == got["map_50"] and got["map_50"] == pytest.approx(want["map_50"], abs=1e-6)
    assert got["map"] == pytest.approx(want["map"], abs=1e-6) and got["map_75"] == pytest.approx(want["map_75"],
                                                                                                 abs=1e-6)
    assert sum(len(p["boxes"]) for p in predictions) > 0
    # under a run's bf16 autocast the evaluation still computes in fp32: the same boxes and scores to the bit
    loader = DetectionEvalLoader(test, batch_size=3)
    fp32 = DetectionTask().predictions(model, loader)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = DetectionTask().predictions(model, loader)
        assert DetectionTask().evaluate(model, loader) == got
    for a, b in zip(fp32, bf16, strict=True):
        assert torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["scores"], b["scores"])


def run_keys(root: Path, **more) -> dict:
    return {**dict(data="voc", data_path=str(root), data_options={"train_set": "train", "test_set": "test"},
                   model=DETECTOR, model_options=TINY, epochs=2, batch_size=4, lr=0.02, precision="fp32",
                   progress="none"), **more}


@pytest.mark.vision
def test_a_tiny_ce_run_stores_the_map_of_a_re_evaluation_of_its_checkpoint(voc, tmp_path):
    from resprout.data.detection import read_voc
    from resprout.engine.checkpoint import load_file
    from resprout.engine.rundir import read_run_file
    from resprout.metrics.detection import evaluate_detector

    out = tmp_path / "ce"
    res = resprout.train(**run_keys(voc), out=out)
    model = tiny_detector()
    model.load_state_dict(load_file(out / "checkpoint.pt")["members"]["model"]["model"])
    want = evaluate_detector(model, read_voc(voc, "test", classes=["square", "tall", "wide"]))  # the metrics' own path
    info = read_run_file(out)
    with Store(info["store"]) as store:
        rows = store.epoch_metrics(info["run_id"])
    stored = {metric: value for m, g, e, split, metric, value in rows if (m, e, split) == ("model", 1, "test")}
    assert stored.keys() == {"top1", "map_50", "map", "map_75"} and stored["top1"] == stored["map_50"]
    for key in ("map_50", "map", "map_75"):
        assert stored[key] == pytest.approx(want[key], abs=1e-6), key
        assert res["final"]["model"][key] == stored[key]
    train = {metric for m, g, e, split, metric, value in rows if (m, e, split) == ("model", 1, "train")}
    assert {"loss", "loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"} <= train
    from benchmarks.reproduction.results import export_run

    row = export_run(out, "ce")[0][0]  # the reproduction record: top-1 is mAP@0.5, map mAP@[.5:.95]
    assert (row["top1"], row["map"], row["test_images"]) == (stored["map_50"], stored["map"], 4)


@pytest.mark.vision
def test_a_ce_run_on_a_detector_resumes_bit_identically(voc, tmp_path, monkeypatch):
    from resprout.engine.checkpoint import load_file
    from resprout.methods.classification import CrossEntropy

    keys = run_keys(voc, epochs=3)
    whole = resprout.train(**keys, out=tmp_path / "whole")
    calls = {"n": 0}

    def crash(self, trainer):
        if (trainer.epoch, trainer.step) == (1, 1) and calls["n"] == 0:  # mid-epoch, after a checkpoint
            calls["n"] += 1
            raise RuntimeError("simulated crash")
    monkeypatch.setattr(CrossEntropy, "on_batch_start", crash, raising=False)
    with pytest.raises(RuntimeError, match="simulated"):
        resprout.train(**keys, out=tmp_path / "crashed")
    monkeypatch.delattr(CrossEntropy, "on_batch_start")
    again = resprout.resume(tmp_path / "crashed", progress="none")
    a = load_file(tmp_path / "whole/checkpoint.pt")["members"]["model"]["model"]
    b = load_file(tmp_path / "crashed/checkpoint.pt")["members"]["model"]["model"]
    assert a.keys() == b.keys() and all(torch.equal(v, b[k]) for k, v in a.items())
    assert again["final"] == whole["final"]


# -- kd on a detector ---------------------------------------------------------------------------------------------------
class Probe:
    """A method that keeps what kd's first step computed: its loss terms, the student's tapped class logits and
    proposals, the batch's images and the detector's own losses."""

    @staticmethod
    def make():
        from resprout.engine.method import Method
        from resprout.methods.detectors import CLS_SCORE, ROI_POOL

        class ProbeMethod(Method):
            name = "probe"
            detection = True
            seen: list = []

            def on_batch_end(self, ctx):
                if not self.seen:
                    _, proposals, sizes = ctx.taps.input("model", ROI_POOL)
                    self.seen.append(dict(terms={n: v.detach() for _, n, v in ctx.terms},
                                          student=ctx.taps.output("model", CLS_SCORE).detach(),
                                          proposals=proposals, sizes=sizes, images=ctx.inputs,
                                          losses={k: v.detach() for k, v in ctx.outputs["model"].items()}))

        return ProbeMethod


@pytest.mark.vision
def test_kd_on_a_detector_is_the_formula_on_the_teachers_logits_for_the_students_proposals(voc, tmp_path):
    from torchvision.models.detection.transform import resize_boxes

    from resprout.models import build_model

    probe = Probe.make()
    torch.manual_seed(1)
    teacher = build_model(DETECTOR, in_channels=3, num_classes=3, **{**TINY, "min_size": 96, "max_size": 96})
    teacher.eval()  # resizes to 96 pixels, the student to 64: the proposals are moved to its size
    resprout.train(**run_keys(voc, epochs=1, method="kd+probe", methods=[probe],
                              method_options={"kd": {"temperature": 2.0, "weight": 0.7}}),
                   teacher=teacher, out=tmp_path / "kd")
    seen = probe.seen[0]
    student, proposals, sizes = seen["student"], seen["proposals"], seen["sizes"]
    assert student.shape == (sum(len(p) for p in proposals), 4) and len(proposals) == 4
    with torch.no_grad():  # by hand: the teacher's pieces called one by one, torchvision's resize_boxes
        batch, _ = teacher.transform(seen["images"])
        assert batch.image_sizes[0] == (96, 96) and sizes[0] == (64, 64)
        boxes = [resize_boxes(p, s, t) for p, s, t in zip(proposals, sizes, batch.image_sizes)]
        pooled = teacher.roi_heads.box_roi_pool(teacher.backbone(batch.tensors), boxes, batch.image_sizes)
        logits = teacher.roi_heads.box_predictor.cls_score(teacher.roi_heads.box_head(pooled).flatten(1))
    t = 2.0
    p_t = torch.softmax(logits / t, 1)
    kl = (p_t * (p_t.log() - torch.log_softmax(student / t, 1))).sum(1).mean()
    terms = seen["terms"]
    assert terms["kd"] == pytest.approx(float(0.7 * t * t * kl), rel=1e-5) and float(terms["kd"]) > 0
    assert terms["classifier"] == pytest.approx(float(0.3 * seen["losses"]["loss_classifier"]), rel=1e-6)
    for name in ("box_reg", "objectness", "rpn_box_reg"):  # the teacher says nothing about boxes: kept as they are
        assert terms[name] == pytest.approx(float(seen["losses"][f"loss_{name}"]), rel=1e-6)


@pytest.mark.vision
def test_a_kd_run_takes_a_detector_run_as_its_teacher_and_refuses_a_classifier(voc, tmp_path, capsys):
    resprout.train(**run_keys(voc, epochs=1), out=tmp_path / "teacher")
    res = resprout.train(**run_keys(voc, epochs=1, method="kd"), teacher=str(tmp_path / "teacher"),
                         out=tmp_path / "student")
    assert set(res["final"]["model"]) == {"top1", "map_50", "map", "map_75"}
    with pytest.raises(Exception) as e:
        resprout.train(**run_keys(voc, epochs=1, method="kd"), teacher=torch.nn.Linear(3, 4), out=tmp_path / "x")
    one_line(str(e.value), "is not a torchvision two-stage detector")
    assert not (tmp_path / "x").exists()
    one_stage = {**run_keys(voc, epochs=1, method="kd"), "model": "tv-det:retinanet_resnet50_fpn",
                 "model_options": {"min_size": 64, "max_size": 64}}
    with pytest.raises(Exception) as e:  # a one-stage student has no box head on proposals
        resprout.train(**one_stage, teacher=str(tmp_path / "teacher"), out=tmp_path / "y")
    one_line(str(e.value), "method=kd's student 'model' (tv-det:retinanet_resnet50_fpn) is not a torchvision "
                           "two-stage detector")
    assert not (tmp_path / "y").exists()


# -- fitnet on a detector -----------------------------------------------------------------------------------------------
def hint_probe():
    import copy

    from resprout.engine.method import Method

    class HintProbe(Method):
        name = "probe"
        detection = True
        seen: list = []

        def on_loss(self, ctx):  # after fitnet's (the methods' order): its terms, the regressor before the step
            if not self.seen:
                self.seen.append(dict(terms={n: v.detach() for _, n, v in ctx.terms}, images=ctx.inputs,
                                      student=ctx.taps.output("model", "backbone.fpn.layer_blocks.1").detach(),
                                      regressor=copy.deepcopy(ctx.members["regressor"].model)))

    return HintProbe


@pytest.mark.vision
@pytest.mark.parametrize("stages", [1, 2])
def test_fitnet_on_a_detector_is_the_hint_formula_on_an_fpn_level(voc, tmp_path, stages):
    probe = hint_probe()
    teacher = tiny_detector(seed=3).eval()
    level = "backbone.fpn.layer_blocks.1"
    opts = {"fitnet": {"stages": stages, "weight": 0.5, "student_layer": level, "teacher_layer": level}}
    resprout.train(**run_keys(voc, epochs=2, method="fitnet+probe", methods=[probe], method_options=opts),
                   teacher=teacher, out=tmp_path / "fitnet")
    seen = probe.seen[0]
    with torch.no_grad():  # by hand: the teacher's FPN level "1" from its backbone, not from a hook
        batch, _ = teacher.transform(seen["images"])
        hint = teacher.backbone(batch.tensors)["1"]
        want = 0.5 * (seen["regressor"](seen["student"]) - hint).pow(2).mean()
    assert seen["student"].shape == hint.shape and seen["student"].shape[0] == 4
    assert seen["terms"]["hint"] == pytest.approx(float(want), rel=1e-5) and float(want) > 0
    if stages == 1:  # the detector's own losses beside the hint (ce, the task loss)
        assert set(seen["terms"]) == {"hint", "classifier", "box_reg", "objectness", "rpn_box_reg"}
    else:  # stage 1 of two: the hint alone
        assert set(seen["terms"]) == {"hint"}


@pytest.mark.vision
def test_fitnet_on_detectors_refuses_maps_of_other_sizes_and_another_resize(voc, tmp_path):
    from resprout.errors import ConfigError
    from resprout.models import build_model

    resnet = build_model("tv-det:fasterrcnn_resnet50_fpn", in_channels=3, num_classes=3, **TINY)
    with pytest.raises(ConfigError) as e:  # the finest levels: stride 4 in ResNet-50's FPN, coarser in MobileNet's
        resprout.train(**run_keys(voc, epochs=4, method="fitnet"), teacher=resnet, out=tmp_path / "a")
    one_line(str(e.value), "compares maps of the same size", "tap FPN levels of the same stride")
    other = build_model(DETECTOR, in_channels=3, num_classes=3, **{**TINY, "min_size": 96, "max_size": 96})
    with pytest.raises(ConfigError) as e:
        resprout.train(**run_keys(voc, epochs=4, method="fitnet"), teacher=other, out=tmp_path / "b")
    one_line(str(e.value), "both detectors must resize alike", "min_size=64", "min_size=96")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


# -- dln and ktan on a detector -----------------------------------------------------------------------------------------
def ktan_probe():
    import copy

    from resprout.engine.method import Method

    class KtanProbe(Method):
        """Keeps the regressor before Algorithm 1, then per update step of the first batch its terms, the maps and
        copies of the regressor and the discriminator as the step's loss saw them."""

        name = "probe"
        detection = True
        seen: dict = {}

        def setup(self, ctx):
            self.seen["initial"] = copy.deepcopy(ctx.members["regressor"].model)

        def on_loss(self, ctx):
            step = ctx.update_step.name if ctx.update_step else "default"
            if ctx.step == 0 and ctx.epoch == 0 and step not in self.seen:
                disc = ctx.members.get("discriminator")
                self.seen[step] = dict(
                    terms={n: v.detach() for _, n, v in ctx.terms}, images=ctx.inputs,
                    student=ctx.taps.output("model", "backbone.fpn.layer_blocks.0").detach(),
                    regressor=copy.deepcopy(ctx.members["regressor"].model),
                    disc=copy.deepcopy(disc.model) if disc is not None else None)

    return KtanProbe


def teacher_level(teacher, images, level: str = "0") -> torch.Tensor:
    """The teacher's FPN level from its backbone's output (not from a hook)."""
    with torch.no_grad():
        batch, _ = teacher.transform(images)
        return teacher.backbone(batch.tensors)[level]


@pytest.mark.vision
def test_dln_on_a_detector_is_the_mse_to_the_regressed_teacher_level_after_algorithm_1(voc, tmp_path):
    probe = ktan_probe()
    teacher = tiny_detector(seed=3).eval()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    resprout.train(**run_keys(voc, epochs=1, method="dln+probe", methods=[probe],
                              method_options={"dln": {"beta": 0.5, "regressor_epochs": 1.0}}),
                   teacher=teacher, out=tmp_path / "dln")
    seen = probe.seen["default"]
    rt = seen["regressor"](teacher_level(teacher, seen["images"]))
    want = 0.5 * (seen["student"] - rt).pow(2).mean()
    assert seen["terms"]["mse"] == pytest.approx(float(want), rel=1e-5) and float(want) > 0
    assert set(seen["terms"]) == {"mse", "classifier", "box_reg", "objectness", "rpn_box_reg"}
    # Algorithm 1 moved the regressor through the teacher's heads and left the teacher as it was
    initial, trained = probe.seen["initial"].state_dict(), seen["regressor"].state_dict()
    assert not all(torch.equal(initial[k], trained[k]) for k in initial)
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in before.items())


@pytest.mark.vision
def test_ktan_on_a_detector_is_the_discriminator_and_adversarial_formulas_on_the_tapped_maps(voc, tmp_path):
    import torch.nn.functional as F

    probe = ktan_probe()
    teacher = tiny_detector(seed=3).eval()
    opts = {"ktan": {"alpha": 0.6, "beta": 0.5, "mse_epochs": 0.0, "regressor_epochs": 0.0,
                     "generator_loss": "minimax"}}
    resprout.train(**run_keys(voc, epochs=1, method="ktan+probe", methods=[probe], method_options=opts),
                   teacher=teacher, out=tmp_path / "ktan")
    d_step, s_step = probe.seen["discriminator"], probe.seen["student"]
    rt = d_step["regressor"](teacher_level(teacher, d_step["images"]))
    ms = d_step["student"]
    with torch.no_grad():
        d_t, d_s = d_step["disc"](rt), d_step["disc"](ms)  # D before its step (Alg. 2 line 10)
        disc = F.binary_cross_entropy_with_logits(d_t, torch.ones_like(d_t)) + \
            F.binary_cross_entropy_with_logits(d_s, torch.zeros_like(d_s))
        adv = 0.6 * -F.softplus(s_step["disc"](ms)).mean()  # D after its step (line 11), minimax
    assert d_step["terms"]["disc"] == pytest.approx(float(disc), rel=1e-5)
    assert s_step["terms"]["adv"] == pytest.approx(float(adv), rel=1e-5)
    assert s_step["terms"]["mse"] == pytest.approx(float(0.5 * (ms - rt).pow(2).mean()), rel=1e-5)
    assert not all(torch.equal(a, b) for a, b in zip(d_step["disc"].state_dict().values(),
                                                     s_step["disc"].state_dict().values()))
    assert {"classifier", "box_reg", "objectness", "rpn_box_reg"} <= set(s_step["terms"])


@pytest.mark.vision
def test_ktan_on_a_detector_refuses_the_classifier_step_after(voc, tmp_path):
    from resprout.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        resprout.train(**run_keys(voc, epochs=1, method="ktan",
                                  method_options={"ktan": {"classifier_step": "after"}}),
                       teacher=tiny_detector(seed=3), out=tmp_path / "a")
    one_line(str(e.value), "classifier_step=after", "use classifier_step=joint")
    assert not (tmp_path / "a").exists()


def test_a_split_without_objects_is_refused(tmp_path, capsys):
    data = tiny_canvases()
    empty = data["test"]
    empty = DetectionDataset("empty", empty.classes, empty.images, [torch.zeros(0, 4)] * len(empty),
                             [torch.zeros(0, dtype=torch.int64)] * len(empty), empty.ids)
    write_voc(data["train"], tmp_path / "voc", "train")
    write_voc(empty, tmp_path / "voc", "test")
    assert main(["train", *voc_keys(tmp_path / "voc"), f"model={DETECTOR}", "epochs=1", "--out",
                 str(tmp_path / "run")]) == 2
    one_line(capsys.readouterr().err, "split (4 images) has no object")
    assert_nothing_written(tmp_path)


@pytest.mark.vision
def test_a_detector_is_built_untrained_with_the_background_class_and_bad_names_are_one_line():
    from resprout.errors import ConfigError
    from resprout.models import build_model

    model = build_model(DETECTOR, in_channels=3, num_classes=7, **TINY)
    assert model.roi_heads.box_predictor.cls_score.out_features == 8 and model.transform.min_size == (64,)
    for name, options, says in (("tv-det:nope", {}, "unknown torchvision detector 'nope'; known: "),
                                (DETECTOR, {"weights": "DEFAULT"}, "weights is set by resprout"),
                                (DETECTOR, {"min_sise": 64}, "min_sise"),
                                ("tv-det:maskrcnn_resnet50_fpn", {}, "trains on masks or keypoints")):
        with pytest.raises(ConfigError) as e:
            build_model(name, in_channels=3, num_classes=7, **options)
        one_line(str(e.value), says)
    with pytest.raises(ConfigError) as e:
        build_model(DETECTOR, in_channels=1, num_classes=7)
    one_line(str(e.value), "takes 3-channel images")
