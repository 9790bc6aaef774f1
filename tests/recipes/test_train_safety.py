"""The trainer against an adversarial user (issue 12): pickled payloads in checkpoints never run, a NaN run
never reaches a checkpoint or an export, a damaged latest checkpoint falls back to the previous one, and
setup errors are one line. Runs are tiny subprocesses, as in test_train."""

from __future__ import annotations

import json
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from recipes import checkpoints
from tests.hart_core.test_checkpoint import _WritesMarker

from .conftest import write_shape_shards
from .test_train import RECIPE, losses, run

ENV_EXPORT = {"DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_shape_shards(tmp_path_factory.mktemp("shards"))


@pytest.fixture(scope="module")
def base(tmp_path_factory, shards):
    """4 steps under ZeRO-2 (optimizer states pickled by DeepSpeed), checkpoints at steps 2 and 4, EMA on."""
    out = tmp_path_factory.mktemp("runs") / "base"
    run(out, shards, "steps=4", "save_every=2", "zero_stage=2")
    assert (out / "checkpoints" / "latest").read_text() == "step0000004"
    return out


def copy_run(base: Path, dst: Path) -> Path:
    shutil.copytree(base, dst)
    return dst


def plant_payload(path: Path, marker: Path, writer: str) -> None:
    payload = {"module": {"w": torch.zeros(2)}, "evil": _WritesMarker(marker)}
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(payload, f, protocol=2)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def export_cli(*args: str) -> subprocess.CompletedProcess:
    import os

    return subprocess.run([sys.executable, "-m", "recipes.export", *args], env={**os.environ, **ENV_EXPORT},
                          capture_output=True, text=True, timeout=300)


# -- item 1: pickled code never runs -------------------------------------------------------------


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
@pytest.mark.parametrize("target", ["mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt"])
def test_pickle_payload_never_runs_through_resume_or_export(tmp_path, base, shards, writer, target):
    out = copy_run(base, tmp_path / "run")
    shutil.rmtree(out / "checkpoints" / "step0000002")  # no older checkpoint to fall back to
    marker = tmp_path / "pwned"
    tag = out / "checkpoints" / "step0000004"
    plant_payload(tag / target, marker, writer)
    checkpoints.seal(tag)  # the attacker also rewrote the checksums: only the unpickler stands in the way
    proc = run(out, shards, "steps=6", "save_every=2", "zero_stage=2", extra=["--resume"], check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert not marker.exists()
    [line] = error_lines(proc.stderr)
    assert "refusing to load" in line and "execute code" in line and target in line
    assert "Traceback" not in proc.stderr
    proc = export_cli(str(out / "checkpoints"), str(tmp_path / "exported"))
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert not marker.exists() and not (tmp_path / "exported").exists()
    [line] = error_lines(proc.stderr)
    assert "refusing to load" in line and "Traceback" not in proc.stderr


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_deepspeed_loads_are_forced_weights_only(tmp_path, base, writer):
    """The guard itself, under DeepSpeed's own loaders: torch.load(weights_only=False) inside
    weights_only_loads() and zero_to_fp32 refuse the payload instead of running it."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    from hart_core.checkpoint import CheckpointError

    marker = tmp_path / "pwned"
    path = tmp_path / "payload.pt"
    plant_payload(path, marker, writer)
    original = torch.load
    with checkpoints.weights_only_loads(), pytest.raises(CheckpointError, match="execute code"):
        torch.load(path, map_location="cpu", weights_only=False)
    assert torch.load is original and not marker.exists()
    out = copy_run(base, tmp_path / "run")
    plant_payload(out / "checkpoints" / "step0000004" / "zero_pp_rank_0_mp_rank_00_optim_states.pt", marker, writer)
    with checkpoints.weights_only_loads(), pytest.raises(CheckpointError, match="execute code"):
        get_fp32_state_dict_from_zero_checkpoint(str(out / "checkpoints"), tag="step0000004")
    assert not marker.exists()


# -- item 6: a damaged latest checkpoint falls back; --resume needs a checkpoint; one row per step ---


@pytest.mark.parametrize("damage", ["truncated model states", "truncated EMA, no checksums", "payload"])
def test_damaged_latest_falls_back_to_the_previous_checkpoint(tmp_path, base, shards, damage):
    out = copy_run(base, tmp_path / "run")
    tag = out / "checkpoints" / "step0000004"
    marker = tmp_path / "pwned"
    if damage == "truncated model states":
        path = tag / "mp_rank_00_model_states.pt"
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "truncated EMA, no checksums":
        (tag / checkpoints.MANIFEST).unlink()  # older checkpoints carry none: the files must load
        path = tag / "ema_rank000.safetensors"
        path.write_bytes(path.read_bytes()[:100])
    else:
        plant_payload(tag / "mp_rank_00_model_states.pt", marker, "torch.save")
    proc = run(out, shards, "steps=4", "save_every=2", "zero_stage=2", extra=["--resume"])
    assert "resuming from step0000002 instead of the damaged latest step0000004" in proc.stderr
    assert not marker.exists()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]  # steps 3-4 again, each once
    torch.testing.assert_close(torch.tensor(losses(out)), torch.tensor(losses(base)), rtol=1e-4, atol=1e-4)
    assert (out / "checkpoints" / "latest").read_text() == "step0000004"
    checkpoints.verify(out / "checkpoints" / "step0000004")  # rewritten whole


def test_checkpoints_are_sealed_with_checksums(base):
    tag = base / "checkpoints" / "step0000004"
    listed = {line.split("  ")[1] for line in (tag / checkpoints.MANIFEST).read_text().splitlines()}
    assert listed == {p.name for p in tag.iterdir()} - {checkpoints.MANIFEST}
    checkpoints.verify(tag)


# -- item 2: a NaN run never reaches a checkpoint or an export ------------------------------------


@pytest.mark.parametrize("recipe, ranks", [("unified_debug.yaml", 1), ("tokenizer_debug.yaml", 1),
                                           ("unified_debug.yaml", 2)])
def test_nan_run_stops_and_keeps_the_last_good_checkpoint(tmp_path, shards, recipe, ranks):
    out = tmp_path / "nan"
    proc = run(out, shards, "lr=1e30", "steps=8", "save_every=1", "zero_stage=2" if ranks == 2 else "zero_stage=0",
               recipe=RECIPE.parent / recipe, ranks=ranks, check=False)
    # one process exits 3 (diverged); torchrun reports any failed worker as its own exit status 1
    assert proc.returncode == (3 if ranks == 1 else 1), proc.stderr[-3000:]
    [line] = error_lines(proc.stderr)
    assert "NaN or Inf" in line and "nothing exported" in line
    assert not (out / "final").exists()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    good = [r["step"] for r in rows if not r["skipped"]]
    assert rows[-1]["skipped"] and len(rows) < 8
    latest = (out / "checkpoints" / "latest").read_text()
    assert latest == f"step{good[-1]:07d}"  # the last step whose loss was finite
    assert f"({latest})" in line
    # the kept checkpoint exports, and everything in it is finite
    proc = export_cli(str(out / "checkpoints"), str(tmp_path / "exported"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    from safetensors.torch import load_file

    weights = next((tmp_path / "exported").rglob("model.safetensors"))
    assert all(torch.isfinite(v).all() for v in load_file(weights).values())


def test_export_refuses_non_finite_weights(tmp_path, base):
    from hart_core.checkpoint import safe_torch_load

    out = copy_run(base, tmp_path / "run")
    tag = out / "checkpoints" / "step0000004"
    path = tag / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    state = safe_torch_load(path, checkpoints.deepspeed_globals())
    with torch.no_grad():
        state["optimizer_state_dict"]["single_partition_of_fp32_groups"][0][:10] = float("nan")
    torch.save(state, path)
    checkpoints.seal(tag)
    proc = export_cli(str(out / "checkpoints"), str(tmp_path / "exported"))
    assert proc.returncode == 2 and not (tmp_path / "exported").exists()
    [line] = error_lines(proc.stderr)
    assert "non-finite weights" in line


# -- item 7: setup errors are one line ------------------------------------------------------------


def test_setup_errors_are_one_line(tmp_path, shards):
    import webdataset as wds

    (tmp_path / "empty.tar").write_bytes(b"")
    (tmp_path / "text.tar").write_text("not a tar file\n")
    with wds.TarWriter(str(tmp_path / "allbad.tar")) as sink:
        for i in range(8):
            sink.write({"__key__": f"k{i}", "png": b"garbage", "txt": "a red circle"})
    cases = [
        (str(tmp_path / "missing.tar"), [], "no such shard"),
        (str(tmp_path / "empty.tar"), [], "not a readable tar file"),
        (str(tmp_path / "text.tar"), [], "not a readable tar file"),
        (str(tmp_path / "allbad.tar"), [], "no decodable sample"),
        (shards, ["steps=-1"], "steps must be a whole number >= 1"),
        (shards, ["lr=.nan"], "lr must be a finite number"),
    ]
    for data, overrides, expected in cases:
        proc = run(tmp_path / "out", data, *overrides, check=False)
        assert proc.returncode == 2, (data, overrides, proc.stderr[-2000:])
        [line] = error_lines(proc.stderr)
        assert expected in line and "Traceback" not in proc.stderr, (expected, proc.stderr[-2000:])
    proc = run(tmp_path / "fresh", shards, extra=["--resume"], check=False)
    assert proc.returncode == 2
    [line] = error_lines(proc.stderr)
    assert "no checkpoint to resume from" in line
