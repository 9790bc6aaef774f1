"""The text side: ids for the backbone's token table, with the structural specials as single ids.

Two backends behind one interface:
  * `SentencePieceTextTokenizer`: trained in memory by `TextTokenizer.train` (BPE or unigram),
    byte fallback so any string round-trips exactly; saved as spm.model + text_tokenizer.json.
  * `HFTextTokenizer`: any local Hugging Face tokenizer folder; missing specials are appended, so
    check `vocab_size` and resize the backbone's embeddings.

Specials are never produced by `encode` (a caption that literally says "<eoi>" must not end an
image segment): sentencepiece stores them as control symbols, the HF backend splits them as text.
The sequence builder inserts them by id (`token_id("<boi>")`), and `decode` drops them.
"""

from __future__ import annotations

import io
import json
import os
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import sentencepiece as spm

DEFAULT_SPECIALS: tuple[str, ...] = ("<pad>", "<bos>", "<eos>", "<boi>", "<eoi>", "<sep>")
VIDEO_SPECIALS: tuple[str, ...] = ("<bov>", "<eov>")  # e.g. train(specials=DEFAULT_SPECIALS + VIDEO_SPECIALS)
AUDIO_SPECIALS: tuple[str, ...] = ("<boa>", "<eoa>")
_ITEM_SPECIALS = {"image": ("<boi>", "<eoi>"), "video": VIDEO_SPECIALS, "audio": AUDIO_SPECIALS}


def item_specials(modality: str) -> tuple[str, str]:
    """The (begin, end) specials around an item of this modality: <boi>/<eoi> for images, <bov>/<eov>
    for video, <boa>/<eoa> for audio, <bo:NAME>/<eo:NAME> for any other."""
    return _ITEM_SPECIALS.get(modality, (f"<bo:{modality}>", f"<eo:{modality}>"))


def specials_for(modalities: Iterable[str]) -> tuple[str, ...]:
    """DEFAULT_SPECIALS plus the begin/end specials of the given modalities (for `TextTokenizer.train`)."""
    extra = [s for m in modalities for s in item_specials(m) if s not in DEFAULT_SPECIALS]
    return DEFAULT_SPECIALS + tuple(dict.fromkeys(extra))

META_NAME = "text_tokenizer.json"
SPM_NAME = "spm.model"


def _check_specials(specials: Iterable[str]) -> tuple[str, ...]:
    specials = tuple(specials)
    if len(set(specials)) != len(specials) or not all(isinstance(s, str) and s for s in specials):
        raise ValueError(f"specials must be distinct non-empty strings, got {specials}")
    return specials


class TextTokenizer(ABC):
    """text <-> ids; `encode` adds no specials, `decode` skips them."""

    backend: ClassVar[str]

    def __init__(self) -> None:
        self._special_ids: dict[str, int] = {}

    # ------------------------------------------------------------------ the interface
    @abstractmethod
    def encode(self, text: str) -> list[int]: ...

    @abstractmethod
    def decode(self, ids: Iterable[int]) -> str: ...

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Number of ids, specials included (the size of the backbone's token table)."""

    @abstractmethod
    def _add_missing(self, names: Sequence[str]) -> None:
        """Append the given new specials to the vocabulary."""

    @abstractmethod
    def _id_of(self, name: str) -> int | None:
        """Id of an existing token, None if it is not in the vocabulary."""

    @abstractmethod
    def _save_files(self, folder: Path) -> None: ...

    @classmethod
    @abstractmethod
    def _load_files(cls, folder: Path, specials: tuple[str, ...]) -> TextTokenizer: ...

    # ------------------------------------------------------------------ specials
    @property
    def specials(self) -> tuple[str, ...]:
        return tuple(self._special_ids)

    @property
    def special_ids(self) -> dict[str, int]:
        return dict(self._special_ids)

    def token_id(self, name: str) -> int:
        try:
            return self._special_ids[name]
        except KeyError:
            raise KeyError(f"{name!r} is not a special token of this tokenizer; known: "
                           f"{list(self._special_ids)} (add_specials adds more)") from None

    def add_specials(self, names: Iterable[str]) -> int:
        """Make each name a special with a single id (existing ids never change); returns the new
        vocab_size, so a backbone can resize its embeddings."""
        names = _check_specials(names)
        self._add_missing([n for n in names if self._id_of(n) is None])
        for n in names:
            self._special_ids[n] = self._id_of(n)
        return self.vocab_size

    def __len__(self) -> int:
        return self.vocab_size

    def _ids_for_decode(self, ids: Iterable[int]) -> list[int]:
        skip = set(self._special_ids.values())
        return [i for i in map(int, ids) if i not in skip]

    # ------------------------------------------------------------------ construction / folders
    @staticmethod
    def train(corpus: Iterable[str], vocab_size: int = 1024, specials: Iterable[str] = DEFAULT_SPECIALS,
              model_type: str = "bpe", **spm_kwargs: Any) -> SentencePieceTextTokenizer:
        """Train a sentencepiece model in memory (see `SentencePieceTextTokenizer.train`)."""
        return SentencePieceTextTokenizer.train(corpus, vocab_size, specials, model_type, **spm_kwargs)

    @staticmethod
    def from_hf(path: str | os.PathLike, specials: Iterable[str] = DEFAULT_SPECIALS) -> HFTextTokenizer:
        """A local Hugging Face tokenizer folder, with the missing specials appended."""
        return HFTextTokenizer.from_hf(path, specials)

    def save_pretrained(self, folder: str | os.PathLike) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self._save_files(folder)
        meta = {"backend": self.backend, "specials": list(self._special_ids),
                "special_ids": self._special_ids, "vocab_size": self.vocab_size}
        (folder / META_NAME).write_text(json.dumps(meta, indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike) -> TextTokenizer:
        """Load a folder from `save_pretrained`, or a bare one: spm.model (sentencepiece) or a
        Hugging Face tokenizer folder, which get DEFAULT_SPECIALS."""
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: no such tokenizer folder")
        meta_path = folder / META_NAME
        if meta_path.is_file():
            meta = json.loads(meta_path.read_text())
            backend, specials = meta.get("backend"), tuple(meta.get("specials", DEFAULT_SPECIALS))
        elif (folder / SPM_NAME).is_file():
            backend, specials, meta = SentencePieceTextTokenizer.backend, DEFAULT_SPECIALS, {}
        elif (folder / "tokenizer.json").is_file() or (folder / "tokenizer_config.json").is_file():
            backend, specials, meta = HFTextTokenizer.backend, DEFAULT_SPECIALS, {}
        else:
            raise FileNotFoundError(f"{folder}: no {META_NAME}, {SPM_NAME} or Hugging Face tokenizer files")
        backends = {c.backend: c for c in (SentencePieceTextTokenizer, HFTextTokenizer)}
        if backend not in backends:
            raise ValueError(f"{meta_path}: unknown backend {backend!r}; known: {sorted(backends)}")
        impl = backends[backend]
        if cls is not TextTokenizer and not issubclass(impl, cls):
            raise ValueError(f"{folder} holds a {backend!r} tokenizer, not a {cls.__name__}")
        tok = impl._load_files(folder, specials)
        # the ids are baked into a trained backbone: refuse a folder whose files disagree with them
        saved = meta.get("special_ids")
        if saved is not None and saved != tok.special_ids:
            raise ValueError(f"{folder}: special ids {tok.special_ids} differ from the saved {saved}")
        return tok


class SentencePieceTextTokenizer(TextTokenizer):
    backend = "sentencepiece"

    def __init__(self, model_proto: bytes, specials: Iterable[str] = DEFAULT_SPECIALS):
        super().__init__()
        self._set_proto(model_proto)
        self.add_specials(specials)

    def _set_proto(self, model_proto: bytes) -> None:
        self.model_proto = model_proto
        self.sp = spm.SentencePieceProcessor(model_proto=model_proto)

    @classmethod
    def train(cls, corpus: Iterable[str], vocab_size: int = 1024, specials: Iterable[str] = DEFAULT_SPECIALS,
              model_type: str = "bpe", **spm_kwargs: Any) -> SentencePieceTextTokenizer:
        """Train on an iterable of sentences, in memory.

        vocab_size is a soft limit (a small corpus gets fewer pieces) but must cover 256 byte
        pieces + <unk> + the specials + every distinct character. The defaults make decode(encode(s))
        == s for any string: identity normalisation, no dummy prefix, whitespace kept, byte
        fallback for unseen characters. spm_kwargs override any trainer option.
        """
        if model_type not in ("bpe", "unigram"):
            raise ValueError(f"model_type must be 'bpe' or 'unigram', got {model_type!r}")
        specials = _check_specials(specials)
        options = dict(
            vocab_size=vocab_size, model_type=model_type, hard_vocab_limit=False,
            # specials are control symbols: single ids that plain text can never produce
            control_symbols=list(specials), unk_id=0, bos_id=-1, eos_id=-1, pad_id=-1,
            byte_fallback=True, character_coverage=1.0, normalization_rule_name="identity",
            add_dummy_prefix=False, remove_extra_whitespaces=False, split_digits=True,
            allow_whitespace_only_pieces=True, minloglevel=2,
        )
        options.update(spm_kwargs)
        buf = io.BytesIO()
        try:
            spm.SentencePieceTrainer.train(sentence_iterator=iter(corpus), model_writer=buf, **options)
        except RuntimeError as e:
            if "Vocabulary size is smaller than required_chars" in str(e):
                raise ValueError(f"vocab_size={vocab_size} is too small for this corpus: it must hold 256 byte "
                                 f"pieces, <unk>, {len(specials)} specials and every distinct character ({e})") from e
            raise
        return cls(buf.getvalue(), specials)

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text, out_type=int)

    def decode(self, ids: Iterable[int]) -> str:
        return self.sp.decode(self._ids_for_decode(ids))

    def _id_of(self, name: str) -> int | None:
        i = self.sp.piece_to_id(name)
        # unknown pieces map to <unk>; only <unk> itself maps there legitimately
        return None if i == self.sp.unk_id() and self.sp.id_to_piece(i) != name else i

    def _add_missing(self, names: Sequence[str]) -> None:
        if not names:
            return
        from sentencepiece import sentencepiece_model_pb2 as pb  # needs protobuf; only here

        model = pb.ModelProto()
        model.ParseFromString(self.model_proto)
        for name in names:
            piece = model.pieces.add()
            piece.piece, piece.score, piece.type = name, 0.0, pb.ModelProto.SentencePiece.CONTROL
        self._set_proto(model.SerializeToString())

    def _save_files(self, folder: Path) -> None:
        (folder / SPM_NAME).write_bytes(self.model_proto)

    @classmethod
    def _load_files(cls, folder: Path, specials: tuple[str, ...]) -> SentencePieceTextTokenizer:
        try:
            return cls((folder / SPM_NAME).read_bytes(), specials)
        except RuntimeError as e:  # sentencepiece's parse error on a truncated or foreign file
            raise ValueError(f"{folder / SPM_NAME}: not a readable sentencepiece model ({e})") from None

    def __getstate__(self) -> dict:  # picklable for DataLoader workers
        return {"model_proto": self.model_proto, "special_ids": self._special_ids}

    def __setstate__(self, state: dict) -> None:
        self._set_proto(state["model_proto"])
        self._special_ids = state["special_ids"]


class HFTextTokenizer(TextTokenizer):
    backend = "hf"

    def __init__(self, tokenizer: Any, specials: Iterable[str] = DEFAULT_SPECIALS):
        """tokenizer: a transformers `PreTrainedTokenizerBase` (it is modified: specials appended)."""
        super().__init__()
        self.tokenizer = tokenizer
        self.add_specials(specials)

    @classmethod
    def from_hf(cls, path: str | os.PathLike, specials: Iterable[str] = DEFAULT_SPECIALS) -> HFTextTokenizer:
        from transformers import AutoTokenizer

        if not Path(path).is_dir():
            raise FileNotFoundError(f"{path}: no such tokenizer folder")
        # never the code a folder's auto_map names (transformers would otherwise ask, or run it)
        return cls(AutoTokenizer.from_pretrained(str(path), local_files_only=True, trust_remote_code=False), specials)

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)  # the base vocab_size attribute leaves out added tokens

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False, split_special_tokens=True)

    def decode(self, ids: Iterable[int]) -> str:
        return self.tokenizer.decode(self._ids_for_decode(ids), skip_special_tokens=True,
                                     clean_up_tokenization_spaces=False)

    def _id_of(self, name: str) -> int | None:
        return self.tokenizer.get_vocab().get(name)

    def _add_missing(self, names: Sequence[str]) -> None:
        from transformers import AddedToken

        self.tokenizer.add_tokens([AddedToken(n, special=True, normalized=False) for n in names],
                                  special_tokens=True)

    def _save_files(self, folder: Path) -> None:
        self.tokenizer.save_pretrained(str(folder))

    @classmethod
    def _load_files(cls, folder: Path, specials: tuple[str, ...]) -> HFTextTokenizer:
        return cls.from_hf(folder, specials)
