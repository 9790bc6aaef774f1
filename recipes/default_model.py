"""Reproduce the shipped default model: data -> tokenizer -> unified model -> evaluation.

    python -m recipes.default_model --work runs/default            # everything, on this CPU
    python -m recipes.default_model --work runs/default --install  # then copy it to recipes/pretrained/shapes

Stages (each skipped when its output already exists, so an interrupted run continues):
1. data: Shapes World training scenes and the real scikit-learn digits as webdataset shards;
2. tokenizer: `recipes/configs/shapes_tokenizer.yaml` (the HART tokenizer, 32x32 -> 8x8 latent, 6 scales);
3. unified: `recipes/configs/shapes_unified.yaml` (text-to-image, captioning and QA on one backbone);
4. self-correction: 3,000 more steps of stage 3 from its result with `model.self_correction=0.2` (a written
   image's earlier scales read with 20% of their codes wrong, the later scales trained to correct them;
   clean training first, then this, is what measured better than either alone) -> corrected/final;
5. eval: `recipes.eval.evaluate` on held-out prompts and images -> eval.json.
Extra `key=value` arguments go to every trainer (e.g. `steps=100` for a quick try).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

CONFIGS = Path(__file__).resolve().parent / "configs"
INSTALL_DIR = Path(__file__).resolve().parent / "pretrained" / "shapes"


# the self-correction stage: the unified stage's data and config, continued from its model with errors drawn in
SELF_CORRECTION = ["output_dir=corrected", "steps=3000", "lr=1.0e-3", "seed=1", "model.self_correction=0.2",
                   "model.init_from=unified/final", "model.codec=unified/final/codecs/image",
                   "model.text_tokenizer=unified/final/text_tokenizer"]


def run(cmd: list[str], cwd: Path, **extra_env: str) -> None:
    print("$", " ".join(cmd), flush=True)
    # PYTHONSAFEPATH: the working folder holds a run folder named `unified`, which must not shadow the package
    env = {**os.environ, "DS_ACCELERATOR": os.environ.get("DS_ACCELERATOR", "cpu"), "PYTHONSAFEPATH": "1",
           **extra_env}
    subprocess.run(cmd, cwd=cwd, env=env, check=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recipes.default_model", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="runs/default", help="working folder (default runs/default)")
    parser.add_argument("--shapes", type=int, default=20000, help="Shapes World training scenes")
    parser.add_argument("--eval-n", type=int, default=200)
    parser.add_argument("--ranks", type=int, default=1, help="data-parallel processes for the unified stages "
                        "(torch.distributed.run; 2 on a 2-core CPU with one thread each is faster than 1 x 2)")
    parser.add_argument("--install", action="store_true", help=f"copy the result to {INSTALL_DIR}")
    parser.add_argument("overrides", nargs="*", help="key=value overrides for every trainer")
    args = parser.parse_args(argv)
    work = Path(args.work)
    (work / "data").mkdir(parents=True, exist_ok=True)

    if not list((work / "data").glob("shapes-train-*.tar")):
        from recipes.data.digits import Digits
        from recipes.data.shapes import write_shards

        # rendered at the size the tokenizer trains on, so no stage resamples the images
        size = int(yaml.safe_load((CONFIGS / "shapes_tokenizer.yaml").read_text())["image_size"])
        print(write_shards(work / "data", "train", n=args.shapes, per_shard=1000, seed=0, image_size=size))
        print(Digits(image_size=size, seed=0).write_shards(work / "data", "train", per_shard=1000))
    shapes = f"data/shapes-train-{{000..{(args.shapes + 999) // 1000 - 1:03d}}}.tar"
    mix = (f"data={{mix: [{{source: '{shapes}', weight: %s, name: shapes}}, "
           f"{{source: 'data/digits-train-{{000..001}}.tar', weight: %s, name: digits}}]}}")
    py = sys.executable
    if not (work / "tokenizer" / "final" / "codec.json").is_file():
        run([py, "-m", "recipes.train", str(CONFIGS / "shapes_tokenizer.yaml"), mix % (0.7, 0.3), *args.overrides,
             *(["--resume"] if (work / "tokenizer" / "checkpoints" / "latest").is_file() else [])], work)
    launcher = [py, "-m", "recipes.train"] if args.ranks == 1 else [
        py, "-m", "torch.distributed.run", f"--nproc_per_node={args.ranks}", "-m", "recipes.train"]
    # one thread per rank for the training only: the evaluation after it times sampling with every core
    threads = {"OMP_NUM_THREADS": "1"} if args.ranks > 1 else {}
    for stage, stage_args in (("unified", []), ("corrected", SELF_CORRECTION)):
        if not (work / stage / "final" / "config.json").is_file():
            run([*launcher, str(CONFIGS / "shapes_unified.yaml"), mix % (0.75, 0.25), *stage_args, *args.overrides,
                 *(["--resume"] if (work / stage / "checkpoints" / "latest").is_file() else [])], work, **threads)
    run([py, "-m", "recipes.eval.evaluate", "corrected/final", "--out", "eval.json", "--n", str(args.eval_n)], work)
    print((work / "eval.json").read_text())
    if args.install:
        if INSTALL_DIR.exists():
            shutil.rmtree(INSTALL_DIR)
        shutil.copytree(work / "corrected" / "final", INSTALL_DIR)
        shutil.copy(work / "eval.json", INSTALL_DIR / "eval.json")
        print(f"installed {INSTALL_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
