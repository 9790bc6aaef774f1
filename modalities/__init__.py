"""One codec per modality behind one interface (`ModalityCodec`: raw <-> `HybridTokens`), plus the
text tokenizer. See DESIGN.md; imports only `hart_core`."""

from hart_core.quantizer import Grid, HybridTokens

from .audio import AudioCodec, AudioCodecConfig, debug_audio_codec
from .audio_io import AudioReadError, load_audio, read_audio, save_audio
from .base import CODEC_REGISTRY, ModalityCodec, load_codec, register_codec
from .image import ImageBatch, ImageCodec, debug_image_codec
from .latent import LatentCodec, LatentCodecConfig, debug_latent_codec
from .text import (
    AUDIO_SPECIALS,
    DEFAULT_SPECIALS,
    VIDEO_SPECIALS,
    HFTextTokenizer,
    SentencePieceTextTokenizer,
    TextTokenizer,
    item_specials,
    specials_for,
)
from .video import VideoCodec
from .video_io import VideoReader, VideoReadError, open_video, read_video, sample_indices
from .video_write import write_video

__all__ = [
    "AUDIO_SPECIALS",
    "AudioCodec",
    "AudioCodecConfig",
    "AudioReadError",
    "CODEC_REGISTRY",
    "DEFAULT_SPECIALS",
    "Grid",
    "HFTextTokenizer",
    "HybridTokens",
    "ImageBatch",
    "ImageCodec",
    "LatentCodec",
    "LatentCodecConfig",
    "ModalityCodec",
    "SentencePieceTextTokenizer",
    "TextTokenizer",
    "VIDEO_SPECIALS",
    "VideoCodec",
    "VideoReadError",
    "VideoReader",
    "debug_audio_codec",
    "debug_image_codec",
    "debug_latent_codec",
    "item_specials",
    "load_audio",
    "load_codec",
    "open_video",
    "read_audio",
    "read_video",
    "register_codec",
    "sample_indices",
    "save_audio",
    "specials_for",
    "write_video",
]
