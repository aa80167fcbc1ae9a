"""Re-identification as a trainer task: the re-id task's metrics against reid_metrics on features computed here
another way (the network cut before its class layer), tiny ce and graft runs on the Fashion-MNIST analog whose stored
metrics equal a re-evaluation of their checkpoints done by hand, the refusals (one line, exit 2, nothing written), a
resume across a graft that is bit-identical, and the reproduction file's mAP operand."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import resprout
from resprout.cli import main
from resprout.data.dataset import channel_stats
from resprout.data.loader import EvalLoader, Normalizer
from resprout.data.reid import ReidDataset, ReidSplit, write_market1501
from resprout.data.reid.prepared import ReidEvalLoader, prepare_reid
from resprout.engine.checkpoint import load_file
from resprout.engine.method import Method
from resprout.engine.rundir import read_run_file
from resprout.engine.store import Store
from resprout.engine.task import ReidTask
from resprout.errors import ConfigError
from resprout.metrics.reid import reid_metrics
from resprout.models import build_model
from tests.conftest import FASHION_DIR, needs_fashion
from tests.faults import crash_once_at


def tiny_reid(seed: int = 0, train_ids: int = 6, test_ids: int = 4, size=(16, 8)) -> ReidDataset:
    """Every identity a random RGB prototype plus noise, seen by cameras 1 and 2 twice each; each test identity has
    one query from camera 1 and its other images in the gallery, with identity 0 (distractors) in the gallery."""
    g = torch.Generator().manual_seed(seed)

    def split(first_id: int, count: int, name: str) -> ReidSplit:
        protos = torch.rand(count, 3, *size, generator=g) * 200
        ids = torch.arange(first_id, first_id + count).repeat_interleave(4)
        cams = torch.tensor([1, 1, 2, 2]).repeat(count)
        noise = torch.randn(len(ids), 3, *size, generator=g) * 20
        images = (protos.repeat_interleave(4, dim=0) + noise).clamp(0, 255).to(torch.uint8)
        return ReidSplit(images, ids, cams, [f"{name}_{i}" for i in range(len(ids))])

    train, test = split(1, train_ids, "train"), split(100, test_ids, "test")
    query = torch.arange(len(test)) % 4 == 0
    distractors = split(0, 1, "x")
    gallery = ReidSplit(torch.cat([test.images[~query], distractors.images]),
                        torch.cat([test.ids[~query], torch.zeros(4, dtype=torch.int64)]),
                        torch.cat([test.cameras[~query], distractors.cameras]), [f"g{i}" for i in range(16)])
    return ReidDataset("tiny", train, ReidSplit(test.images[query], test.ids[query], test.cameras[query],
                                                [f"q{i}" for i in range(test_ids)]), gallery)


def one_line(text: str, *fragments: str) -> None:
    assert text.count("\n") <= 1 and text.strip(), text
    for f in fragments:
        assert f in text, f"{f!r} not in {text!r}"


# -- the task against features computed another way -------------------------------------------------------------------
def toy_net(k: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                         nn.Linear(16, 8), nn.ReLU(), nn.Sequential(nn.Dropout(0.5), nn.Linear(8, k)))


def without_head(model: nn.Module) -> nn.Module:
    """The same network with its class layer replaced by the identity: the reference features."""
    cut = copy.deepcopy(model).eval()
    if isinstance(cut, nn.Sequential):
        cut[-1] = nn.Identity()
    else:
        cut.fc = nn.Identity()
    return cut


@pytest.mark.parametrize("net,distance", [("toy", "euclidean"), ("toy", "cosine"), ("resnet20", "euclidean")])
def test_the_task_is_reid_metrics_of_the_penultimate_features(net, distance):
    torch.manual_seed(0)
    data = prepare_reid(tiny_reid())
    k = data.num_classes
    model = toy_net(k) if net == "toy" else build_model("resnet20", in_channels=3, num_classes=k, width=0.25)
    model.train()
    mean, std = channel_stats(data.train)
    norm = Normalizer.from_stats(mean, std, torch.device("cpu"))
    loader = ReidEvalLoader(data, batch_size=5, normalizer=norm)  # several batches, the last one short
    got = ReidTask(distance).evaluate(model, loader)
    # by hand: normalize, forward the network without its head in one batch, split queries from gallery
    x = (data.test.images.float() / 255 - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)
    with torch.no_grad():
        features = without_head(model)(x)
    q, ids, cams = data.queries, data.test.labels, data.test_cameras
    want = reid_metrics(features[:q], ids[:q], cams[:q], features[q:], ids[q:], cams[q:], distance=distance)
    assert set(got) == {"top1", "rank1", "rank5", "map"} and got["top1"] == got["rank1"]
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-12), key
    assert model.training and all(not m._forward_hooks for m in model.modules())  # mode and hooks restored
    assert 0 < got["map"] < 1


def test_the_task_refuses_a_network_without_a_linear_head_and_a_split_without_cameras():
    data = prepare_reid(tiny_reid())
    norm = Normalizer.from_stats(*channel_stats(data.train), torch.device("cpu"))
    conv_head = nn.Sequential(nn.Conv2d(3, data.num_classes, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with pytest.raises(ConfigError) as e:
        ReidTask().evaluate(conv_head, ReidEvalLoader(data, batch_size=8, normalizer=norm))
    one_line(str(e.value), "does not come straight from an nn.Linear")
    plain = EvalLoader(data.test.images, data.test.labels, batch_size=8, normalizer=norm)
    with pytest.raises(ConfigError) as e:
        ReidTask().evaluate(toy_net(data.num_classes), plain)
    one_line(str(e.value), "query and a gallery split with identities and cameras")


# -- tiny runs on the Fashion-MNIST analog ----------------------------------------------------------------------------
FASHION = {"n_train_ids": 20, "n_test_ids": 10, "n_distractor_ids": 5}


def by_hand(model: nn.Module, ds: ReidDataset) -> dict[str, float]:
    """rank-1/5 and mAP of a network, from the raw re-id set: the train split's exact mean and std, the network
    without its class layer, one batch per split."""
    mean, std = channel_stats(ds.train)

    def feats(split):
        x = (split.images.float() / 255 - mean[0]) / std[0]
        with torch.no_grad():
            return without_head(model)(x)

    return reid_metrics(feats(ds.query), ds.query.ids, ds.query.cameras, feats(ds.gallery), ds.gallery.ids,
                        ds.gallery.cameras)


@needs_fashion
@pytest.mark.parametrize("method", ["ce", "graft"])
def test_a_tiny_run_stores_the_metrics_of_a_re_evaluation_of_its_checkpoint(tmp_path, method):
    from benchmarks.reproduction.results import export_run
    from resprout.data.reid.fashion import fashion_reid
    from resprout.data.sources import load_source

    out = tmp_path / method
    res = resprout.train(data="fashion-reid", data_path=str(FASHION_DIR), data_options=FASHION, model="cnn",
                         width=0.25, epochs=2, batch_size=32, method=method, out=out, progress="none")
    members = ["model"] if method == "ce" else ["peer_1", "peer_2"]
    assert sorted(res["final"]) == members  # no ensemble: the test identities are not the peers' classes
    ds = fashion_reid(load_source("fashion-mnist", FASHION_DIR), **FASHION)
    state = load_file(out / "checkpoint.pt")["members"]
    info = read_run_file(out)
    with Store(info["store"]) as store:
        rows = store.epoch_metrics(info["run_id"])
    for member in members:
        model = build_model("cnn", in_channels=1, num_classes=20, width=0.25)  # 20 classes: the train identities
        model.load_state_dict(state[member]["model"])
        model.eval()
        want = by_hand(model, ds)
        stored = {metric: value for m, g, e, split, metric, value in rows if (m, e, split) == (member, 1, "test")}
        assert stored.keys() == {"top1", "rank1", "rank5", "map"} and stored["top1"] == stored["rank1"]
        for key, value in want.items():
            assert stored[key] == pytest.approx(value, abs=1e-9), (member, key)
            assert res["final"][member][key] == pytest.approx(value, abs=1e-9)
    row = export_run(out, method)[0][0]  # the reproduction record: the mAP and the queries as its test size
    assert row["map"] == res["final"][members[0]]["map"] and row["test_images"] == len(ds.query) == 20
    assert row["top1"] == res["final"][members[0]]["rank1"]


# -- refusals ---------------------------------------------------------------------------------------------------------
@pytest.fixture
def market(tmp_path):
    return write_market1501(tiny_reid(), tmp_path / "market")


@pytest.mark.parametrize("keys,says", [
    (["method=triplet"], "evaluates with its own retrieval task, but data=market1501 is a re-identification set"),
    (["per_class=2"], "per_class=2 does not apply to a re-identification set"),
    (["val_split=0.2"], "val_split=0.2 does not apply to a re-identification set"),
    (["augment=imagenet"], "re-identification set held in memory at one size"),
    (["data_path="], "data source 'market1501' needs data_path=DIR"),
    (["data.size=16,8,3"], "data.size must be height,width in pixels"),
])
def test_bad_combinations_are_one_line_exit_2_and_write_nothing(market, tmp_path, capsys, keys, says):
    args = ["train", "data=market1501", f"data_path={market}", "model=cnn", "epochs=1", *keys,
            "--out", str(tmp_path / "run")]
    if "data_path=" in keys:
        args.remove(f"data_path={market}")
        args.remove("data_path=")
    assert main(args) == 2
    err = capsys.readouterr().err
    one_line(err, says)
    assert not (tmp_path / "run").exists()
    runs = tmp_path / "runs"
    assert not runs.exists() or not any(p.is_dir() for p in runs.iterdir())
    if (runs / "resprout.db").exists():
        with Store(runs / "resprout.db") as store:
            assert [r.status for r in store.runs()] in ([], ["failed"])


class SetsReid(Method):
    """A method that sets the re-id task, whatever the data."""

    name = "sets_reid"

    def setup(self, ctx):
        ctx.task = ReidTask()


def test_the_reid_task_on_a_classification_set_is_refused(tmp_path):
    with pytest.raises(ConfigError) as e:
        resprout.train(data="synthetic", method="ce+sets_reid", methods=[SetsReid], epochs=1, out=tmp_path / "run",
                       progress="none")
    one_line(str(e.value), "sets the re-identification task", "data=synthetic is a classification set")
    assert not (tmp_path / "run").exists()


# -- resume -----------------------------------------------------------------------------------------------------------
def test_a_graft_run_on_a_reid_folder_resumes_bit_identically(market, monkeypatch):
    from resprout.methods.grafting.method import Grafting

    keys = dict(data="market1501", data_path=str(market), model="cnn", width=0.25, epochs=3, batch_size=4,
                method="graft", progress="none")
    whole = resprout.train(**keys, out="whole")
    crash_once_at(monkeypatch, Grafting, 1, 3)  # after the graft at epoch 2's start
    with pytest.raises(RuntimeError, match="simulated"):
        resprout.train(**keys, out="crashed")
    monkeypatch.delattr(Grafting, "on_batch_start")
    again = resprout.resume("crashed", progress="none")
    a, b = load_file("whole/checkpoint.pt")["members"], load_file("crashed/checkpoint.pt")["members"]
    for member in ("peer_1", "peer_2"):
        assert a[member]["model"].keys() == b[member]["model"].keys()
        for k, v in a[member]["model"].items():
            assert torch.equal(v, b[member]["model"][k]), f"{member}.{k}"
    assert again["final"] == whole["final"] and set(whole["final"]["peer_1"]) == {"top1", "rank1", "rank5", "map"}


# -- the reproduction file's operand ----------------------------------------------------------------------------------
def test_a_claim_names_the_map_of_a_row_and_both_sides_must_measure_it(tmp_path):
    from benchmarks.reproduction.spec import load_spec

    base = ('title = "t"\npaper = "grafting"\ntables = "Table 7"\nanalog = "a"\nseeds = [0]\nbaseline = "CE"\n'
            '[[rows]]\nlabel = "CE"\nmethod = "ce"\n[[rows]]\nlabel = "G"\nmethod = "graft"\n')
    path = tmp_path / "t.toml"
    path.write_text(base + '[[claims]]\nclaim = "x"\na = "G:map"\nb = "CE:map"\n')
    claim = load_spec(path).claims[0]
    assert (claim.a.column, claim.b.column, claim.a.text()) == ("map", "map", "G mAP")
    path.write_text(base + '[[claims]]\nclaim = "x"\na = "G:map"\nb = "CE"\n')
    with pytest.raises(ConfigError, match="must measure the same thing"):
        load_spec(path)
