from pathlib import Path

from recipes.eval.scale_errors import main, scale_errors, table

SHIPPED = Path(__file__).resolve().parents[2] / "recipes" / "pretrained" / "shapes"


def test_given_scales_raise_adherence_of_the_shipped_model():
    """With every code given the shipped model's images follow their captions (0.875 measured on 200
    training-split scenes) far more often than when it writes every code itself (0.325): a prefix that
    were ignored would leave every row at the S = 0 level."""
    from unified import UnifiedModel

    model = UnifiedModel.from_pretrained(SHIPPED).eval()
    result = scale_errors(model, n=24, batch_size=24, progress=False)
    rows = result["rows"]
    assert [r["given_scales"] for r in rows] == list(range(model.codecs["image"].num_scales + 1))
    assert all(0 <= r["overall"] <= 1 for r in rows)
    assert rows[-1]["overall"] >= 0.6 and rows[-1]["overall"] >= rows[0]["overall"] + 0.2
    assert sum(result["settings"]["objects"].values()) == 24
    assert "given scales" in table(result) and "by attribute" in table(result)
    # the S = 0 row is the mean over scenes, and a scene is right overall only if every attribute is
    attrs, objects = result["attributes"], result["settings"]["objects"]
    assert set(attrs) == {str(k) for k in objects}
    for k, a in attrs.items():
        assert all(0 <= a[x] <= 1 for x in ("colour", "shape", "position", "count"))
        assert rows[0][f"overall_{k}"] <= min(a["colour"], a["shape"], a["position"], a["count"]) + 1e-9
    overall0 = sum(rows[0][f"overall_{k}"] * n for k, n in objects.items()) / 24
    assert abs(overall0 - rows[0]["overall"]) < 1e-9


def test_cli_bad_folder(tmp_path, capsys):
    assert main([str(tmp_path / "nope")]) == 2
    assert "error" in capsys.readouterr().err


def test_without_residual_every_code_given_is_the_codes_own_decode():
    """--no-residual at S = K scores exactly the discrete-only reconstruction of the same scenes: the model
    adds nothing once every code is given and the residual head is off."""
    import numpy as np

    from recipes.data.shapes import ShapesWorld, parse_caption
    from recipes.eval.detector import detect, score
    from recipes.eval.evaluate import split_start
    from unified import UnifiedModel

    model = UnifiedModel.from_pretrained(SHIPPED).eval()
    result = scale_errors(model, n=12, batch_size=12, progress=False, use_residual=False)
    assert result["settings"]["use_residual"] is False
    codec = model.codecs["image"]
    samples = [ShapesWorld(seed=0, image_size=32).sample(split_start("train") + i, "train") for i in range(12)]
    images = codec.decode(codec.encode([s["image"] for s in samples]), with_residual=False)
    want = np.mean([score(parse_caption(s["caption"]), detect(im))["overall"]
                    for s, im in zip(samples, images, strict=True)])
    assert abs(result["rows"][-1]["overall"] - want) < 1e-9
