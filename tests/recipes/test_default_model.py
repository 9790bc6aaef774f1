"""The default-model recipe end to end at a few steps: data, tokenizer, unified stage, self-correction stage and
evaluation run in order, the last stage starts from the one before it with self-correction on, and a second call
finds every stage done and trains nothing."""

from __future__ import annotations

import json

from recipes.default_model import main


def test_the_recipe_runs_every_stage_and_continues(tmp_path, capsys):
    args = ["--work", str(tmp_path), "--shapes", "64", "--eval-n", "4", "steps=2", "warmup_steps=1",
            "global_batch=8", "micro_batch=8", "save_every=2"]
    assert main(args) == 0
    for stage in ("tokenizer", "unified", "corrected"):
        assert (tmp_path / stage / "final").is_dir(), stage
    recipe = json.loads((tmp_path / "corrected" / "recipe.json").read_text())
    assert recipe["model"]["self_correction"] == 0.2 and recipe["model"]["init_from"] == "unified/final"
    assert recipe["seed"] == 1 and recipe["steps"] == 2  # the stage's own settings, the caller's overrides last
    config = json.loads((tmp_path / "corrected" / "final" / "config.json").read_text())
    assert config["self_correction"] == 0.2
    evaluation = json.loads((tmp_path / "eval.json").read_text())
    assert evaluation["shapes_t2i"]["n"] == 4
    capsys.readouterr()

    assert main(args) == 0  # everything exists: straight to the evaluation
    assert "recipes.train" not in capsys.readouterr().out
