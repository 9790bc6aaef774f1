import json
import pickle
import time

import pytest

from hart_core.debug import byte_level_tokenizer
from modalities import (
    DEFAULT_SPECIALS,
    VIDEO_SPECIALS,
    HFTextTokenizer,
    SentencePieceTextTokenizer,
    TextTokenizer,
)

CORPUS = [
    "a photo of a cat sitting on a red mat",
    "a painting of a lighthouse at sunset, oil on canvas",
    "two dogs playing in the snow near a wooden cabin",
    "the quick brown fox jumps over the lazy dog",
    "close-up of a bowl of ramen with a soft-boiled egg",
    "an astronaut riding a horse on the moon, 4k render",
    "a city street at night in the rain with neon signs",
    "Describe the image: a small boat on a calm lake.",
] * 4
UNSEEN = ["naïve café — 東京 🚀 ok", "tabs\tand\nnewlines  and   spaces ", " leading space", "", "<boi> literally"]


@pytest.fixture(scope="module", params=["bpe", "unigram"])
def spm_tok(request) -> SentencePieceTextTokenizer:
    start = time.perf_counter()
    tok = TextTokenizer.train(CORPUS, vocab_size=400, model_type=request.param)
    assert time.perf_counter() - start < 1.0  # in-memory training of a tiny corpus is instant
    return tok


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("hf")
    byte_level_tokenizer().save_pretrained(str(path))
    return path


def check_common(tok: TextTokenizer, specials=DEFAULT_SPECIALS) -> None:
    ids = tok.special_ids
    assert list(ids) == list(specials) and len(set(ids.values())) == len(specials)
    assert all(0 <= i < tok.vocab_size for i in ids.values()) and len(tok) == tok.vocab_size
    for text in CORPUS[:8] + UNSEEN:
        enc = tok.encode(text)
        assert all(isinstance(i, int) and 0 <= i < tok.vocab_size for i in enc)
        assert not set(enc) & set(ids.values())  # text never produces a special
        assert tok.decode(enc) == text
        wrapped = [tok.token_id("<bos>"), tok.token_id("<boi>"), *enc, tok.token_id("<eoi>"), tok.token_id("<eos>")]
        assert tok.decode(wrapped) == text  # specials are skipped
    with pytest.raises(KeyError, match="'<nope>' is not a special"):
        tok.token_id("<nope>")


def test_sentencepiece_round_trip(spm_tok):
    check_common(spm_tok)
    assert spm_tok.vocab_size <= 400
    # the corpus is compressed: common words are single pieces, not bytes
    assert len(spm_tok.encode(CORPUS[0])) < len(CORPUS[0])


def test_sentencepiece_save_load(spm_tok, tmp_path):
    spm_tok.save_pretrained(tmp_path)
    assert (tmp_path / "spm.model").is_file() and (tmp_path / "text_tokenizer.json").is_file()
    for loaded in (TextTokenizer.from_pretrained(tmp_path), SentencePieceTextTokenizer.from_pretrained(tmp_path),
                   pickle.loads(pickle.dumps(spm_tok))):
        assert isinstance(loaded, SentencePieceTextTokenizer)
        assert loaded.special_ids == spm_tok.special_ids and loaded.vocab_size == spm_tok.vocab_size
        for text in CORPUS[:8] + UNSEEN:
            assert loaded.encode(text) == spm_tok.encode(text)
    with pytest.raises(ValueError, match="not a HFTextTokenizer"):
        HFTextTokenizer.from_pretrained(tmp_path)


def test_bare_spm_model_gets_default_specials(tmp_path):
    tok = TextTokenizer.train(CORPUS, vocab_size=400, specials=("<pad>",))
    (tmp_path / "spm.model").write_bytes(tok.model_proto)
    loaded = TextTokenizer.from_pretrained(tmp_path)
    assert list(loaded.special_ids) == list(DEFAULT_SPECIALS)
    assert loaded.token_id("<pad>") == tok.token_id("<pad>")
    assert loaded.vocab_size == tok.vocab_size + len(DEFAULT_SPECIALS) - 1


def test_extra_specials(spm_tok, tmp_path):
    trained = TextTokenizer.train(CORPUS, vocab_size=400, specials=DEFAULT_SPECIALS + VIDEO_SPECIALS)
    check_common(trained, DEFAULT_SPECIALS + VIDEO_SPECIALS)

    tok = pickle.loads(pickle.dumps(spm_tok))  # a copy: add_specials modifies the tokenizer
    before, ids = tok.special_ids, [tok.encode(t) for t in CORPUS[:8]]
    assert tok.add_specials(VIDEO_SPECIALS) == spm_tok.vocab_size + 2
    assert tok.token_id("<bov>") == spm_tok.vocab_size and tok.token_id("<eov>") == spm_tok.vocab_size + 1
    assert {k: tok.special_ids[k] for k in before} == before
    assert [tok.encode(t) for t in CORPUS[:8]] == ids  # existing ids never move
    check_common(tok, DEFAULT_SPECIALS + VIDEO_SPECIALS)
    tok.save_pretrained(tmp_path)
    assert TextTokenizer.from_pretrained(tmp_path).special_ids == tok.special_ids


def test_train_errors():
    with pytest.raises(ValueError, match="vocab_size=100 is too small"):
        TextTokenizer.train(CORPUS, vocab_size=100)
    with pytest.raises(ValueError, match="model_type"):
        TextTokenizer.train(CORPUS, model_type="word")
    with pytest.raises(ValueError, match="distinct"):
        TextTokenizer.train(CORPUS, specials=("<a>", "<a>"))


def test_hf_backend(hf_dir, tmp_path):
    tok = TextTokenizer.from_hf(hf_dir)
    assert isinstance(tok, HFTextTokenizer)
    # 256 bytes + <pad> + <eos> exist; <bos> <boi> <eoi> <sep> are appended
    assert tok.vocab_size == 258 + 4
    assert tok.token_id("<pad>") == 256 and tok.token_id("<eos>") == 257
    assert [tok.token_id(s) for s in ("<bos>", "<boi>", "<eoi>", "<sep>")] == [258, 259, 260, 261]
    check_common(tok)

    tok.save_pretrained(tmp_path)
    loaded = TextTokenizer.from_pretrained(tmp_path)
    assert isinstance(loaded, HFTextTokenizer) and loaded.special_ids == tok.special_ids
    assert all(loaded.encode(t) == tok.encode(t) for t in CORPUS[:8] + UNSEEN)


def test_bare_hf_folder_is_detected(hf_dir):
    tok = TextTokenizer.from_pretrained(hf_dir)
    assert isinstance(tok, HFTextTokenizer) and list(tok.special_ids) == list(DEFAULT_SPECIALS)


def test_missing_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such tokenizer folder"):
        TextTokenizer.from_pretrained(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="spm.model"):
        TextTokenizer.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="no such tokenizer folder"):
        TextTokenizer.from_hf(tmp_path / "nope")


def test_folder_with_inconsistent_ids_is_refused(spm_tok, tmp_path):
    spm_tok.save_pretrained(tmp_path)
    meta = json.loads((tmp_path / "text_tokenizer.json").read_text())
    meta["special_ids"]["<boi>"] += 1
    (tmp_path / "text_tokenizer.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="differ from the saved"):
        TextTokenizer.from_pretrained(tmp_path)
