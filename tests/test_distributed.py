"""Data-parallel training under torchrun: 2 processes, gloo, on 127.0.0.1."""

from __future__ import annotations

import json
import socket
import subprocess

from resprout.engine.store import Store
from tests.conftest import PYTHON, cli_env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(args: list[str], tmp_path, nproc: int = 2) -> subprocess.CompletedProcess:
    cmd = [PYTHON, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1",
           f"--master_port={free_port()}", "-m", "resprout", *args]
    env = cli_env(tmp_path)
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)


def test_ddp_two_processes_train_one_member_and_only_rank_0_writes(tmp_path):
    out = tmp_path / "run"
    proc = torchrun(["train", "data=digits", "model=cnn", "epochs=3", "seed=0", "--out", str(out), "--json"],
                    tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)  # one JSON object: rank 1 prints nothing
    assert result["final"]["model"]["top1"] > 0.8
    with Store(tmp_path / "runs" / "resprout.db") as store:
        runs = store.runs()
        assert len(runs) == 1 and runs[0].status == "finished" and runs[0].env["world_size"] == 2
        # evaluation is reduced over both processes: it covers the whole test split exactly once
        rows = [r for r in store.epoch_metrics(runs[0].id) if r[3] == "test" and r[4] == "top1"]
        assert len(rows) == 3
    assert (out / "checkpoint.pt").is_file()
    epoch_lines = [l for l in proc.stderr.splitlines() if l.startswith("gen 1/1 ep ")]
    assert len(epoch_lines) == 3  # progress from rank 0 only


def test_ddp_refuses_several_trainable_members():
    import pytest

    from resprout.config import make_config
    from resprout.engine.distributed import DistInfo
    from resprout.errors import ConfigError
    from resprout.run import _check_multi_member, create_trainer
    from tests.conftest import synthetic
    from tests.test_trainer import Peers  # noqa: F401  (registers the two-member method)

    trainer = create_trainer(make_config(**synthetic(method="test_peers")), run_dir=None, run_id=None,
                             store_path=None)
    with pytest.raises(ConfigError, match="distributed training supports one trainable member"):
        _check_multi_member(trainer, DistInfo(rank=0, world_size=2))
