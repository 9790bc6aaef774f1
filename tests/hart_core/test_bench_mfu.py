"""benchmarks/bench_mfu.py: the FLOPs formula against a hand count, and a short CPU run whose numbers agree."""

import json
import math

import pytest
import torch

from ..conftest import load_benchmark


def load_script():
    return load_benchmark("bench_mfu")


def test_flops_match_a_hand_count_of_the_debug_recipe(tmp_path):
    from unified.sequence import Item, Text

    bench = load_script()
    _, _, model = bench.build("debug", [], 2, tmp_path)
    # the recipe: Qwen2 hidden 64, 2 layers, 4 heads (head_dim 16), 2 KV heads, intermediate 128, text vocab 320;
    # the 16x16 debug codec: V=96, Cvae=8, scales 1, 2x2, 3x3, 4x4 (30 positions, 16 in the last); diffusion head
    # width 64, depth 2, diffusion_batch_mul 4
    layer = (64 * 64 + 64) + 2 * (64 * 32 + 32) + 64 * 64 + 3 * 64 * 128 + 2 * 64  # q, k, v (biases), o, MLP, norms
    body = 2 * layer + 64
    code_head, word_embed, cond_norm = 64 * 96 + 96, 8 * 64 + 64, 64
    diffusion = ((256 * 64 + 64) + (64 * 64 + 64) + (64 * 64 + 64) + (8 * 64 + 64)  # time MLP, cond, input
                 + 2 * (2 * 64 + 2 * (64 * 64 + 64) + 64 * 192 + 192)  # res blocks: LN, MLP, adaLN
                 + (64 * 16 + 16) + (64 * 128 + 128))  # final layer
    groups = bench.param_groups(model)
    names = ("backbone_body", "lm_head", "heads", "diffusion_heads", "other")
    assert [groups[k] for k in names] == [body, 64 * 320, code_head + word_embed + cond_norm, diffusion, 0]

    codec = model.codecs["image"]
    tokens = bench.random_tokens(codec, torch.Generator().manual_seed(0))
    rows = [[Text([1, 2, 3]), Item("image", tokens, loss=True), Text([4, 5])],  # 3 + 30 + 2 positions, writes the image
            [Text([1, 2]), Item("image", tokens, read=True), Text([6, 7, 8], loss=True)]]  # 2 + 16 + 3, 3 text targets
    flops = bench.model_flops(model, [model.builder.build(rows)])
    expected = {
        "backbone": 6 * body * (35 + 21),
        "attention": 12 * 2 * 64 * (35**2 + 21**2),
        "lm_head": 6 * 64 * 320 * 3,
        # code logits on the 30 written positions; word_embed on both segments' inputs (29 later-scale + 16
        # complete) and on the 16 diffusion conditions; cond_norm on those 16
        "item_heads": 6 * (code_head * 30 + word_embed * (2 * (29 + 16) + 16) + cond_norm * 16),
        "diffusion": 6 * diffusion * 16 * 4,
    }
    assert flops == {**expected, "total": sum(expected.values())}


def test_debug_cpu_run_reports_consistent_numbers(tmp_path, capsys):
    bench = load_script()
    out = tmp_path / "mfu.json"
    result = bench.main(["--model", "debug", "--device", "cpu", "--steps", "2", "--warmup", "1", "--batch-size", "4",
                         "--peak-size", "256", "--json", str(out)])
    assert json.loads(out.read_text())["summary"] == result["summary"]
    assert result["peak_measured"] and result["peak_tflops"] > 0
    assert "MEASURED" in capsys.readouterr().out
    rows = result["steps_detail"]
    assert [r["warmup"] for r in rows] == [True, False, False]
    body = result["params"]["backbone_body"]
    for r in rows:
        assert math.isfinite(r["loss"]) and r["samples"] == 4 and r["seconds"] > 0
        assert r["tokens_per_s"] == pytest.approx(r["tokens"] / r["seconds"])
        assert r["samples_per_s"] == pytest.approx(4 / r["seconds"])
        assert r["tflops"] == pytest.approx(r["flops"] / r["seconds"] / 1e12)
        assert r["mfu"] == pytest.approx(r["tflops"] / result["peak_tflops"])
        parts = r["flops_parts"]
        assert r["flops"] == parts["total"] == sum(v for k, v in parts.items() if k != "total")
        # the batches the hook saw are the ones whose valid tokens the trainer's loss counted
        assert parts["backbone"] == 6 * body * r["tokens"] and r["padded_positions"] >= r["tokens"]
    s = result["summary"]
    timed = rows[1:]
    assert s["tokens"] == sum(r["tokens"] for r in timed)
    assert s["seconds"] == pytest.approx(sum(r["seconds"] for r in timed))
    assert s["tokens_per_s"] == pytest.approx(s["tokens"] / s["seconds"])
    assert s["mfu"] == pytest.approx(s["flops"] / s["seconds"] / 1e12 / result["peak_tflops"])
    assert s["loss_last"] < s["loss_first"]


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_given_peak_is_used(dtype):
    result = load_script().main(["--model", "debug", "--device", "cpu", "--steps", "1", "--warmup", "0", "--dtype",
                                 dtype, "--batch-size", "2", "--peak-tflops", "2.5", "task_weights={t2i: 1.0}"])
    assert not result["peak_measured"] and result["peak_tflops"] == 2.5
    (r,) = result["steps_detail"]
    assert math.isfinite(r["loss"])
    assert r["mfu"] == pytest.approx(r["flops"] / r["seconds"] / 1e12 / 2.5)
    assert r["passes"] == 1 and r["flops_parts"]["lm_head"] == 0 and r["flops_parts"]["diffusion"] > 0  # t2i only


def test_gpu_model_is_counted_on_the_meta_device():
    info = load_script().main(["--model", "gpu", "--meta"])
    p = info["params"]
    assert 0.67e9 < p["backbone_body"] < 0.69e9 and 36e6 < p["diffusion_heads"] < 37e6 and p["other"] == 0
    f = info["flops_per_t2i_sample"]
    # a prompt of a few tokens + 2240 image positions (1 + 4 + ... + 32^2) + <eoi> <eos>
    tokens = f["backbone"] // (6 * p["backbone_body"])
    assert 2240 < tokens < 2300 and f["diffusion"] == 6 * p["diffusion_heads"] * 1024 * 4
