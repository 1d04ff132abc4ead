"""Two data-parallel ranks (gloo, this CPU): the real stage scripts under `torchrun`.

The test launches `torchrun --standalone --nproc_per_node 2` on this very file. Run that way
(`__main__`), each rank records what it did while running stages/train_head.py and then
stages/finetune.py: the training samples of every step, a digest of the trainable weights at
every step, and every file it opened for writing (a Python audit hook sees all of them). The
test process then checks those records and evaluates the checkpoints in one plain process.
"""

from __future__ import annotations

import hashlib
import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
STAGES = ("train_head", "finetune")

PARAMS = {
    "base": {
        "seed": 3,
        "image_size": 64,
        "device": "cpu",
        "threads": 1,
        "backbone": "efficientnet_lite0",
    },
    "data": {"batch_size": 8, "views": 2},
    # the AdamW stages are what runs data-parallel (the probe fits once, on every rank alike)
    "train_head": {"method": "sgd", "refit": False, "epochs": 2},
    "finetune": {"enabled": True, "epochs": 2, "unfreeze_blocks": 1},
}


def _digest(module) -> str:
    h = hashlib.sha256()
    for k, v in module.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _rank_main(probe: Path) -> None:
    """One rank: run both stages (arguments in probe/args.json), record, dump probe/rank<r>.json."""
    import torch

    import snakeid.train.loop as train_mod
    from snakeid.train import distributed

    rank = int(os.environ["RANK"])
    cwd = Path.cwd().resolve()
    written: set[str] = set()
    recording = [True]

    def note(path: str | Path) -> None:
        path = Path(path).resolve()
        if recording[0] and path.is_relative_to(cwd):
            written.add(str(path.relative_to(cwd)))

    def audit(event: str, args: tuple) -> None:
        if event == "open" and isinstance(args[0], str | Path):
            mode, flags = args[1], args[2]
            if any(c in mode for c in "wax+") if isinstance(mode, str) else flags & 0o3:
                note(args[0])

    sys.addaudithook(audit)
    save = torch.save  # writes through C++, past the audit hook

    def recording_save(obj, f, *args, **kw):
        if isinstance(f, str | Path):
            note(f)
        return save(obj, f, *args, **kw)

    torch.save = recording_save

    steps: dict[str, list] = {}
    fit_tail = train_mod.fit_tail

    def recording_fit_tail(model, tail, groups, **kw):
        # Every training batch passes through `train.batch`; the weights it sees are those
        # after the previous step, so the digests are the model after each all-reduced step.
        log = steps.setdefault(current[0], [])
        epoch = [0]
        train = kw["train"]
        read = train.batch

        def batch(view, idx):
            log.append({"epoch": epoch[0], "idx": [int(i) for i in idx], "digest": _digest(tail)})
            return read(view, idx)

        outer = kw.pop("on_epoch", None)

        def on_epoch(row):
            epoch[0] += 1
            if outer:
                outer(row)

        train.batch = batch
        result = fit_tail(model, tail, groups, on_epoch=on_epoch, **kw)
        log.append({"epoch": epoch[0], "idx": [], "digest": _digest(tail)})  # after the last step
        train.batch = read  # later reads (finetune's pass for the unknown score) are no steps
        return result

    train_mod.fit_tail = recording_fit_tail
    current = [""]
    for stage, argv in json.loads((probe / "args.json").read_text()).items():
        current[0] = stage
        sys.argv = argv
        try:
            runpy.run_path(argv[0], run_name="__main__")
        except SystemExit as e:
            if e.code:
                raise
        distributed.barrier()  # as torchrun waits for every rank before dvc runs the next stage
    recording[0] = False
    out = {"world": distributed.world_size(), "steps": steps, "written": sorted(written)}
    (probe / f"rank{rank}.json").write_text(json.dumps(out))


def _stage_args(ws: Path, split: Path) -> dict[str, list[str]]:
    common = ["--split", str(split), "--features", "data/features", "--params", "params.yaml"]
    return {
        "train_head": [
            str(REPO / "stages/train_head.py"), *common, "--model-out", "models/head.pt",
            "--live", "dvclive/train_head", "--report", "reports/train_head.json",
        ],
        "finetune": [
            str(REPO / "stages/finetune.py"), *common, "--head", "models/head.pt",
            "--model-out", "models/model_final.pt",
            "--live", "dvclive/finetune", "--report", "reports/finetune.json",
        ],
    }  # fmt: skip


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> tuple[Path, list[dict]]:
    """Both stages run by two gloo ranks; returns the workspace and each rank's record."""
    from snakeid.train.distributed import launch_command
    from training_data import make_split, write_species

    root = tmp_path_factory.mktemp("ddp")
    split = make_split(root / "data")
    ws = root / "ws"
    ws.mkdir()
    params = PARAMS | {
        "base": PARAMS["base"] | {"species_file": str(write_species(root / "t.yaml"))}
    }
    (ws / "params.yaml").write_text(yaml.safe_dump(params))
    probe = root / "probe"
    probe.mkdir()
    (probe / "args.json").write_text(json.dumps(_stage_args(ws, split)))
    cmd = launch_command(2, __file__, [str(probe)])
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    p = subprocess.run(cmd, cwd=ws, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    return ws, [json.loads((probe / f"rank{r}.json").read_text()) for r in range(2)]


def test_ranks_see_disjoint_samples_covering_the_epoch(ranks):
    ws, records = ranks
    n = len(json.loads((ws / "data/features/features.json").read_text())["train_labels"])
    for stage in STAGES:
        per_rank = [[s for s in r["steps"][stage] if s["idx"]] for r in records]
        assert len(per_rank[0]) == len(per_rank[1])  # same number of steps: DDP needs it
        orders = []
        for epoch in sorted({s["epoch"] for s in per_rank[0]}):
            seen = [
                [i for s in steps if s["epoch"] == epoch for i in s["idx"]] for steps in per_rank
            ]
            assert not set(seen[0]) & set(seen[1]), (stage, epoch)
            assert sorted(seen[0] + seen[1]) == list(range(n))
            assert all(len(s["idx"]) == PARAMS["data"]["batch_size"] // 2 for s in per_rank[0])
            orders.append(seen[0])
        assert orders[0] != orders[1], "the order is reshuffled every epoch"


def test_all_reduced_weights_are_identical_on_both_ranks_after_every_step(ranks):
    _, records = ranks
    assert [r["world"] for r in records] == [2, 2]
    for stage in STAGES:
        digests = [[s["digest"] for s in r["steps"][stage]] for r in records]
        assert digests[0] == digests[1], stage
        assert len(set(digests[0])) == len(digests[0]), "every step changes the weights"


def test_only_rank_0_writes_outputs(ranks):
    ws, records = ranks
    rank0, rank1 = (set(r["written"]) for r in records)
    outputs = {
        "data/features/features.json",
        "models/head.pt",
        "models/model_final.pt",
        "reports/train_head.json",
        "reports/finetune.json",
        "dvclive/train_head/metrics.json",
        "dvclive/finetune/metrics.json",
        "dvclive/finetune/plots/metrics/finetune/val_macro_f1.tsv",
    }
    assert outputs <= rank0
    # rank 1 wrote only its rows of the shared feature memmaps (and of the scratch copies
    # mapped through the frozen middle blocks, removed afterwards)
    shared = {"data/features/train.npy", "data/features/val.npy"}
    assert shared <= rank1
    assert all(p in shared or p.startswith("data/.snakeid-scratch-") for p in rank1), rank1
    assert not list((ws / "data").glob(".snakeid-scratch-*"))


@pytest.mark.parametrize("stage", STAGES)
def test_gathered_val_metrics_equal_a_single_process_evaluation(ranks, stage, tmp_path):
    """The checkpoint loads without DDP; evaluated in one process on every val photo's cached
    features, it gives the metrics the two ranks computed from their gathered logits."""
    from snakeid.config import base_config, load_params, section
    from snakeid.data.dataset import DataConfig
    from snakeid.model.checkpoint import load_checkpoint
    from snakeid.model.metrics import macro_f1
    from snakeid.train.config import FinetuneConfig
    from snakeid.train.features import load_caches
    from snakeid.train.loop import predict_cached

    ws, _ = ranks
    params = load_params(ws / "params.yaml")
    base, data = base_config(params), section(params, "data", DataConfig)
    unfreeze = section(params, "finetune", FinetuneConfig).unfreeze_blocks
    ckpt_path = {"train_head": "models/head.pt", "finetune": "models/model_final.pt"}[stage]
    model, _ = load_checkpoint(ws / ckpt_path)
    split = Path(json.loads((ws.parent / "probe/args.json").read_text())["train_head"][2])
    caches = load_caches(
        ws / "data/features", split_dir=split, base=base, data=data, cut=model.cut(unfreeze)
    )
    trained = 0 if stage == "train_head" else unfreeze
    middle = model.frozen_between(caches.cut, trained)
    _, tail = model.split(trained)
    val = caches.val if middle is None else caches.val.mapped(middle, tmp_path, "val", "cpu")
    loss, logits = predict_cached(tail, val, device="cpu", labels=caches.val_labels)
    pred = logits.argmax(1)
    metrics = json.loads((ws / f"reports/{stage}.json").read_text())
    assert metrics["processes"] == 2
    labels = np.unique(caches.val_labels)
    assert metrics["val_macro_f1"] == pytest.approx(macro_f1(caches.val_labels, pred, labels))
    assert metrics["val_accuracy"] == pytest.approx(float((pred == caches.val_labels).mean()))
    assert metrics["val_loss"] == pytest.approx(loss, rel=1e-4)


def test_without_torchrun_everything_is_one_plain_process(tmp_path):
    from snakeid.train import distributed

    assert not distributed.launched() or os.environ.get("RANK") is not None
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
    order = np.array([3, 1, 2, 0])
    assert distributed.shard(order) is order
    assert distributed.gather_strided(order) is order
    assert distributed.launch_command(1, "s.py", ["-x"])[1:] == ["s.py", "-x"]
    two = distributed.launch_command(2, "s.py", ["-x"])
    assert "torch.distributed.run" in two and "--standalone" in two
    assert "--nproc_per_node=2" in two and two[-2:] == ["s.py", "-x"]


if __name__ == "__main__":
    _rank_main(Path(sys.argv[1]))
