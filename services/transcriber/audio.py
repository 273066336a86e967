"""What a clip is and whether it can be heard: format detection and decoding.

The format comes from the bytes alone (magic numbers), never from a file name or
a MIME type the client claims. A clip is valid only once PyAV has decoded it:
that gives its real duration (Chrome's MediaRecorder writes WebM without one,
and a WAV header can say anything) and the 16 kHz mono samples the embedded
model takes. Everything wrong with a clip surfaces as one `AudioError` whose
message a learner can act on.

Decoding is CPU-bound and synchronous: callers run `load_clip` in a thread.
"""

import codecs
import io
import logging
import re
from dataclasses import dataclass, field
from typing import Literal

import av
import numpy as np
import numpy.typing as npt

__all__ = [
    "MIME_TYPES",
    "SAMPLE_RATE",
    "AudioError",
    "AudioFormat",
    "Clip",
    "detect_format",
    "load_clip",
]

log = logging.getLogger(__name__)

AudioFormat = Literal["wav", "mp3", "ogg", "webm"]

MIME_TYPES: dict[AudioFormat, str] = {
    "wav": "audio/wav",
    "mp3": "audio/mpeg",
    "ogg": "audio/ogg",
    "webm": "audio/webm",
}

SAMPLE_RATE = 16_000

_ErrorCode = Literal["invalid_audio", "audio_too_large", "audio_too_long"]

_NAMES: dict[AudioFormat, str] = {"wav": "WAV", "mp3": "MP3", "ogg": "Ogg", "webm": "WebM"}
_SUPPORTED = "send WAV, MP3, Ogg (Opus or Vorbis) or WebM audio"

# The demuxer is forced to the detected format: probing could otherwise pick a
# different one than the magic bytes said, and a clip must be what it looks like.
_DEMUXERS: dict[AudioFormat, str] = {
    "wav": "wav",
    "mp3": "mp3",
    "ogg": "ogg",
    "webm": "matroska",
}

# Codecs add a few ms of padding, and a browser stopped by a 60 s timer records a
# little more than 60 s: a clip is refused only past the limit plus this much.
_DURATION_GRACE_S = 0.25

_KiB = 1024
_MiB = 1024 * 1024


class AudioError(Exception):
    """A clip that cannot be transcribed; `message` tells the learner why."""

    def __init__(self, code: _ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code: _ErrorCode = code
        self.message = message


@dataclass(frozen=True)
class Clip:
    """A decoded, validated clip."""

    # The original bytes: the hosted provider uploads these unchanged.
    data: bytes = field(repr=False)
    format: AudioFormat
    duration_s: float
    # float32, mono, 16 kHz, in [-1, 1]; read-only because clips are shared
    # between threads (copy before changing them). Arrays make `==` ambiguous,
    # so clips compare by their bytes.
    samples: npt.NDArray[np.float32] = field(repr=False, compare=False)

    @property
    def filename(self) -> str:
        # Hosted APIs infer the format from the extension.
        return f"clip.{self.format}"


# -- Format detection ---------------------------------------------------------

# MPEG audio Layer III tables, by version bits (3 = MPEG-1, 2 = MPEG-2, 0 = MPEG-2.5).
_MP3_BITRATES_KBPS = {
    3: (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    2: (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}
_MP3_SAMPLE_RATES = {
    3: (44100, 48000, 32000),
    2: (22050, 24000, 16000),
    0: (11025, 12000, 8000),
}


def _mp3_frame(data: bytes, offset: int) -> tuple[tuple[int, int], int] | None:
    """(version, sample rate) and byte length of the Layer III frame at `offset`."""
    if len(data) < offset + 4:
        return None
    b0, b1, b2, b3 = data[offset : offset + 4]
    if b0 != 0xFF or b1 & 0xE0 != 0xE0:
        return None
    version = (b1 >> 3) & 0x03
    layer = (b1 >> 1) & 0x03
    bitrate_index = b2 >> 4
    rate_index = (b2 >> 2) & 0x03
    # Version 1 and emphasis 2 are reserved; only Layer III (bits 01) is MP3;
    # "free" (0) and 15 bitrates are unusable, rate index 3 is reserved.
    if version == 1 or layer != 1 or b3 & 0x03 == 2:
        return None
    if bitrate_index in (0, 15) or rate_index == 3:
        return None
    bitrate = _MP3_BITRATES_KBPS[3 if version == 3 else 2][bitrate_index] * 1000
    rate = _MP3_SAMPLE_RATES[version][rate_index]
    padding = (b2 >> 1) & 0x01
    per_frame = 144 if version == 3 else 72
    return (version, rate), per_frame * bitrate // rate + padding


def _is_mp3_frame_sync(data: bytes) -> bool:
    first = _mp3_frame(data, 0)
    if first is None:
        return False
    kind, length = first
    # One valid-looking header passes for random bytes about once in 22,000
    # tries; a second one where the first frame ends, with the same version and
    # rate, makes that vanishingly rare. A clip too short to hold it is let
    # through: decoding judges it.
    if len(data) < length + 4:
        return True
    second = _mp3_frame(data, length)
    return second is not None and second[0] == kind


def _id3_size(data: bytes) -> int | None:
    """Total length of a leading ID3v2 tag, or None if there is no valid one."""
    if len(data) < 10 or data[:3] != b"ID3":
        return None
    major, minor, flags = data[3], data[4], data[5]
    size_bytes = data[6:10]
    if major not in (2, 3, 4) or minor == 0xFF or any(b >= 0x80 for b in size_bytes):
        return None
    size = 0
    for b in size_bytes:  # "synchsafe": 7 bits a byte
        size = (size << 7) | b
    footer = 10 if flags & 0x10 else 0
    return 10 + size + footer


def _is_adts(data: bytes) -> bool:
    # AAC's ADTS sync looks like MPEG audio with the reserved layer 00.
    return len(data) >= 2 and data[0] == 0xFF and data[1] & 0xF6 == 0xF0


def detect_format(data: bytes) -> AudioFormat | None:
    """The container the bytes hold, from their magic numbers only.

    Ogg is reported whatever its streams are; `load_clip` then requires Opus or
    Vorbis. MP3 is Layer III only, with an ID3v2 tag or two consecutive frame
    headers (one when the data is too short for a second).
    """
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        return "wav"
    if data[:4] == b"OggS":
        return "ogg"
    if data[:4] == b"\x1a\x45\xdf\xa3":
        return "webm"
    tag = _id3_size(data)
    if tag is not None:
        # Other codecs carry ID3 tags too; an MP3 demuxer would resync through a
        # FLAC or AAC stream and decode noise from it.
        after = data[tag : tag + 4]
        if after[:4] == b"fLaC" or _is_adts(after):
            return None
        return "mp3"
    if _is_mp3_frame_sync(data):
        return "mp3"
    return None


# -- Naming what is not a supported clip ----------------------------------------

_NOT_AUDIO: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF87a", "a GIF image"),
    (b"GIF89a", "a GIF image"),
    (b"%PDF-", "a PDF document"),
    (b"PK\x03\x04", "a ZIP archive (or an Office document)"),
    (b"PK\x05\x06", "a ZIP archive"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
    (b"\x7fELF", "a program"),
)
_OTHER_AUDIO: tuple[tuple[bytes, str], ...] = (
    (b"fLaC", "FLAC audio"),
    (b"#!AMR", "AMR audio"),
    (b"caff", "Core Audio (CAF) audio"),
    (b"MThd", "a MIDI file"),
)
_BASE64 = re.compile(rb"[A-Za-z0-9+/=\s]+")


def _describe(data: bytes) -> tuple[bool, str] | None:
    """(is audio, what it looks like) for a clip `detect_format` rejected."""
    for magic, what in _NOT_AUDIO:
        if data.startswith(magic):
            return False, what
    for magic, what in _OTHER_AUDIO:
        if data.startswith(magic):
            return True, what
    if data[:4] == b"RIFF" and len(data) >= 12:
        kind = data[8:12]
        if kind == b"WEBP":
            return False, "a WebP image"
        if kind == b"AVI ":
            return False, "an AVI video"
        return False, "a RIFF file that is not WAVE"
    if data[:4] == b"FORM" and data[8:12] in (b"AIFF", b"AIFC"):
        return True, "AIFF audio"
    if data[4:8] == b"ftyp":
        # Safari's MediaRecorder writes audio/mp4 (AAC).
        return True, "an MP4/M4A recording"
    tag = _id3_size(data)
    if tag is not None and data[tag : tag + 4] == b"fLaC":
        return True, "FLAC audio"
    if _is_adts(data) or (tag is not None and _is_adts(data[tag : tag + 2])):
        return True, "AAC audio"
    text = _as_text(data[:1024])
    if text is not None:
        return False, _describe_text(text)
    return None


def _as_text(head: bytes) -> str | None:
    """The head of the data as text, if it reads as UTF-8 text."""
    try:
        # Incremental: a character cut at the end of the head is not an error.
        text = codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError:
        return None
    if not text.strip():
        return None
    printable = sum(ch.isprintable() or ch in "\t\r\n" for ch in text)
    return text if printable >= 0.95 * len(text) else None


def _describe_text(text: str) -> str:
    body = text.strip()
    if body.startswith("data:") and "," in body:
        return "a data URL: send the decoded bytes"
    if body.startswith(("{", "[")):
        return "JSON text"
    if body.startswith("<"):
        return "an HTML or XML document"
    encoded = body.encode()
    if len(encoded) >= 16 and _BASE64.fullmatch(encoded):
        return "base64 text: send the decoded bytes"
    return "plain text"


def _unrecognised(data: bytes) -> AudioError:
    described = _describe(data)
    if described is None:
        return AudioError(
            "invalid_audio", f"the file's format was not recognised as audio: {_SUPPORTED}"
        )
    is_audio, what = described
    if is_audio:
        return AudioError(
            "invalid_audio",
            f"this audio format is not supported: it looks like {what}; {_SUPPORTED}",
        )
    return AudioError("invalid_audio", f"this is not audio: it looks like {what}")


# -- Ogg streams ----------------------------------------------------------------

_OGG_AUDIO = (b"OpusHead", b"\x01vorbis")
_OGG_OTHERS: tuple[tuple[bytes, str], ...] = (
    (b"\x80theora", "Theora video"),
    (b"\x7fFLAC", "FLAC audio"),
    (b"Speex   ", "Speex audio"),
    (b"CELT    ", "CELT audio"),
    (b"PCM     ", "raw PCM"),
    (b"\x80kate", "Kate subtitles"),
    (b"BBCD\x00", "Dirac video"),
    (b"\x01video", "video"),
    (b"\x01text", "text"),
)
# Skeleton is a metadata stream that may come first; the media streams follow.
_OGG_SKELETON = b"fishead\x00"
_OGG_MAX_BOS_PAGES = 16


def _ogg_refusal(data: bytes) -> AudioError | None:
    """Why an Ogg file holds no Opus or Vorbis stream, or None if it holds one.

    Every stream starts with a "beginning of stream" page whose first packet
    names its codec, and all of them come before any data page.
    """
    found: list[str] = []
    offset = 0
    for _ in range(_OGG_MAX_BOS_PAGES):
        header = data[offset : offset + 27]
        if len(header) < 27 or header[:4] != b"OggS" or not header[5] & 0x02:
            break
        segments = header[26]
        table = data[offset + 27 : offset + 27 + segments]
        packet = data[offset + 27 + segments : offset + 27 + segments + 8]
        if len(table) < segments or len(packet) < 8:
            break
        if packet.startswith(_OGG_AUDIO):
            return None
        if packet != _OGG_SKELETON:
            found.append(next((n for m, n in _OGG_OTHERS if packet.startswith(m)), "a stream"))
        offset += 27 + segments + sum(table)
    if not found:
        return AudioError(
            "invalid_audio", "this Ogg file is truncated or damaged: no audio stream was found"
        )
    return AudioError(
        "invalid_audio",
        f"this Ogg file holds {found[0]}, not audio the companion can hear: {_SUPPORTED}",
    )


# -- Decoding --------------------------------------------------------------------


def _size(n: float) -> str:
    if n >= _MiB:
        return f"{n / _MiB:.3g} MB"
    if n >= _KiB:
        return f"{n / _KiB:.3g} KB"
    return f"{int(n)} bytes"


def _seconds(s: float) -> str:
    return f"{s:.1f}".removesuffix(".0")


def _too_long(max_duration_s: float) -> AudioError:
    limit = _seconds(max_duration_s)
    # Decoding stopped at the limit, so the true length is unknown: say only
    # what is known.
    return AudioError(
        "audio_too_long",
        f"the clip is longer than {limit} s; the limit is {limit} s: record a shorter one",
    )


def _damaged(fmt: AudioFormat, why: str) -> AudioError:
    return AudioError("invalid_audio", f"this {_NAMES[fmt]} file is truncated or damaged: {why}")


def _decode(data: bytes, fmt: AudioFormat, max_duration_s: float) -> npt.NDArray[np.float32]:
    chunks: list[npt.NDArray[np.float32]] = []
    with av.open(
        io.BytesIO(data), mode="r", format=_DEMUXERS[fmt], metadata_errors="replace"
    ) as container:
        if not container.streams.audio:
            streams = container.streams
            held = ", ".join(sorted({f"{s.type} ({s.codec_context.name})" for s in streams}))
            what = f"only {held}" if held else "no streams"
            raise AudioError(
                "invalid_audio", f"this {_NAMES[fmt]} file has no audio track: it holds {what}"
            )
        resampler: av.AudioResampler | None = None
        shape: tuple[str, str, int] | None = None
        decoded_s = 0.0
        for frame in container.decode(container.streams.audio[0]):
            if frame.samples <= 0 or frame.sample_rate <= 0:
                continue
            decoded_s += frame.samples / frame.sample_rate
            if decoded_s > max_duration_s + _DURATION_GRACE_S:
                raise _too_long(max_duration_s)
            # A resampler is set up for one input shape; streams may change it
            # midway (chained MP3s, Ogg chains), so start another one then.
            frame_shape = (str(frame.format.name), str(frame.layout.name), frame.sample_rate)
            if resampler is None or frame_shape != shape:
                if resampler is not None:
                    chunks.extend(_flat(out) for out in resampler.resample(None))
                resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
                shape = frame_shape
            chunks.extend(_flat(out) for out in resampler.resample(frame))
        if resampler is not None:
            chunks.extend(_flat(out) for out in resampler.resample(None))
    if not chunks:
        return np.zeros(0, dtype=np.float32)
    return np.concatenate(chunks).astype(np.float32, copy=False)


def _flat(frame: av.AudioFrame) -> npt.NDArray[np.float32]:
    # Packed mono float comes out as one (1, n) plane.
    return np.asarray(frame.to_ndarray(), dtype=np.float32).reshape(-1)


def load_clip(data: bytes, *, max_bytes: int, max_duration_s: float) -> Clip:
    """Detect, check and decode a clip, or raise AudioError (and nothing else)."""
    if not data:
        raise AudioError("invalid_audio", "the audio is empty: nothing was recorded")
    if len(data) > max_bytes:
        size, limit = _size(len(data)), _size(max_bytes)
        if size == limit:
            # "25 MB; the limit is 25 MB" would read as a bug.
            size, limit = f"{len(data):,} bytes", f"{max_bytes:,} bytes"
        raise AudioError(
            "audio_too_large",
            f"the file is {size}; the limit is {limit}: record a shorter clip",
        )
    fmt = detect_format(data)
    if fmt is None:
        raise _unrecognised(data)
    if fmt == "ogg":
        refusal = _ogg_refusal(data)
        if refusal is not None:
            raise refusal
    try:
        samples = _decode(data, fmt, max_duration_s)
    except AudioError:
        raise
    except Exception as exc:
        # PyAV raises its own errors, but also ValueError, OSError, EOFError or
        # UnicodeDecodeError on odd input: every one of them means the bytes are
        # not a clip we can hear.
        log.debug("decoding a %s clip failed", fmt, exc_info=True)
        raise _damaged(fmt, "it could not be decoded") from exc
    if samples.size == 0:
        raise _damaged(fmt, "no audio could be decoded")
    # Float input (WAV IEEE float) may hold NaN or values past full scale.
    np.nan_to_num(samples, copy=False, nan=0.0, posinf=1.0, neginf=-1.0)
    np.clip(samples, -1.0, 1.0, out=samples)
    samples.flags.writeable = False
    return Clip(data=data, format=fmt, duration_s=samples.size / SAMPLE_RATE, samples=samples)
