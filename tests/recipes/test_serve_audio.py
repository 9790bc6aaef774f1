"""The server's text-to-audio route on a tiny model with a real (random) audio codec: the WAV is what
`generate_audio` gives for the seed; bad requests are 4xx JSON."""

import base64
import io

import pytest
import soundfile
import torch

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from modalities import debug_audio_codec  # noqa: E402
from recipes.serve.app import create_app  # noqa: E402
from unified.debug import debug_model  # noqa: E402


def test_audio_generations_match_generate_audio():
    model = debug_model({"audio": debug_audio_codec()})
    with TestClient(create_app(model)) as c:
        r = c.post("/v1/audio/generations", json={"prompt": "a rising tone", "seconds": 0.3, "seed": 5})
        assert r.status_code == 200, r.text
        body = r.json()
        assert (body["format"], body["sample_rate"], body["seed"]) == ("wav", 8000, 5)
        wave, sr = soundfile.read(io.BytesIO(base64.b64decode(body["b64"])), dtype="float32")
        expected = model.generate_audio(["a rising tone"], 0.3, seed=[5])[0]
        assert sr == 8000 and wave.shape == expected.shape == (3 * 1024,)  # 0.3 s: 3 chunks of 0.128 s
        assert (torch.from_numpy(wave) - expected).abs().max() < 2 / 32768  # 16-bit PCM
        for bad, code in (({"prompt": "", "seconds": 1}, 400), ({"prompt": "x", "seconds": 0}, 400)):
            r = c.post("/v1/audio/generations", json=bad)
            assert r.status_code == code and "error" in r.json(), r.text
    with TestClient(create_app(debug_model())) as c:  # no audio head
        r = c.post("/v1/audio/generations", json={"prompt": "a red circle"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "unsupported_modality"
