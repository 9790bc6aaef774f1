"""benchmarks/bench_t2i.py runs end to end on a tiny model and reports consistent timings."""

import json

import pytest

from ..conftest import load_benchmark


def load_script():
    return load_benchmark("bench_t2i")


@pytest.mark.parametrize("autocast", ["off", "bf16"])
def test_debug_run_reports_parts_that_add_up(tmp_path, autocast):
    bench = load_script()
    out = tmp_path / "bench.json"
    profile = tmp_path / "profile.txt"
    payload = bench.main(["--config", "debug", "--batch-sizes", "1,2", "--iters", "2", "--warmup", "0",
                          "--steps", "2", "--autocast", autocast, "--json", str(out), "--profile", str(profile)])
    assert json.loads(out.read_text())["autocast"] == autocast
    assert [r["batch_size"] for r in payload["results"]] == [1, 2]
    for r in payload["results"]:
        raw = r["raw_s"]
        for i, total in enumerate(raw["total"]):
            parts = raw["transformer"][i] + raw["diffusion"][i] + raw["vae_decode"][i]
            assert parts == pytest.approx(total, rel=1e-9) and min(raw["diffusion"][i], raw["vae_decode"][i]) > 0
        assert r["images_per_s"] == pytest.approx(r["batch_size"] / r["latency_s_median"])
        assert r["image_shape"][0] == r["batch_size"]
    text = profile.read_text()
    assert text.startswith("batch 1, debug") and "aten::" in text


def test_meta_only_counts_the_official_model_without_memory():
    payload = load_script().main(["--meta-only"])
    counts = payload["params"]
    assert 0.72e9 < counts["transformer_incl_diffusion_head"] < 0.74e9
    assert 36e6 < counts["diffusion_head"] < 38e6


def test_launch_bound_twin_compares_paths_and_counts_ops(capsys):
    payload = load_script().main(["--config", "twin", "--batch-sizes", "1", "--paths", "eager,fast", "--iters", "1",
                                  "--warmup", "0", "--count-ops"])
    model = payload["model"]
    assert (model["depth"], model["embed_dim"], model["num_heads"], model["context"][0]) == (24, 4, 1, 16)
    assert model["patch_nums"] == list(range(1, 15))
    eager, fast = payload["results"]
    assert (eager["path"], fast["path"]) == ("eager", "fast")
    # the eager path spends ~80 aten ops a block and scale (24 x 14 of them); the fast one ~32
    assert eager["top_level_ops"] > 24 * 14 * 60 and fast["top_level_ops"] < eager["top_level_ops"] / 2
    assert "fast vs eager at batch 1" in capsys.readouterr().out
