"""The transcriber's audio handling: format from magic bytes, validity by decoding.

Fixtures: tests/fixtures/audio (made by make_fixtures.sh, described by manifest.json).
"""

import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypedDict

import av
import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.transcriber.audio import (
    MIME_TYPES,
    SAMPLE_RATE,
    AudioError,
    Clip,
    detect_format,
    load_clip,
)
from services.transcriber.settings import TranscriberSettings

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "audio"


class Entry(TypedDict):
    name: str
    format: str | None
    text: str | None
    duration_s: float | None
    error: str | None
    note: str
    size_bytes: int


MANIFEST: list[Entry] = json.loads((FIXTURES / "manifest.json").read_text())["files"]
GOOD = [e for e in MANIFEST if e["error"] is None]
BAD = [e for e in MANIFEST if e["error"] is not None]
SPEECH = [e for e in GOOD if e["text"] is not None]

# The service's limits (v1: 25 MB, 60 s), read from its settings' defaults.
MAX_BYTES: int = TranscriberSettings.model_fields["max_audio_bytes"].default
MAX_SECONDS: float = TranscriberSettings.model_fields["max_audio_duration"].default


def read(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def load(data: bytes, *, max_bytes: int = MAX_BYTES, max_seconds: float = MAX_SECONDS) -> Clip:
    return load_clip(data, max_bytes=max_bytes, max_duration_s=max_seconds)


def refusal(data: bytes, **limits: Any) -> AudioError:
    with pytest.raises(AudioError) as caught:
        load(data, **limits)
    return caught.value


def wav(
    pcm: bytes,
    *,
    rate: int = SAMPLE_RATE,
    data_size: int | None = None,
    riff_size: int | None = None,
) -> bytes:
    """A 16-bit mono WAV whose header sizes can say something else than the data."""
    size = len(pcm) if data_size is None else data_size
    riff = 36 + size if riff_size is None else riff_size
    fmt = struct.pack("<HHIIHH", 1, 1, rate, rate * 2, 2, 16)
    return (
        b"RIFF" + struct.pack("<I", riff) + b"WAVE"
        + b"fmt " + struct.pack("<I", len(fmt)) + fmt
        + b"data" + struct.pack("<I", size) + pcm
    )  # fmt: skip


def tone(seconds: float, rate: int = SAMPLE_RATE) -> bytes:
    t = np.arange(round(seconds * rate)) / rate
    return (np.sin(2 * np.pi * 440 * t) * 8000).astype("<i2").tobytes()


def rms(samples: npt.NDArray[np.float32]) -> float:
    return float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))


# -- The fixtures themselves -------------------------------------------------------


def test_manifest_describes_the_folder() -> None:
    on_disk = {p.name for p in FIXTURES.iterdir()} - {"manifest.json", "make_fixtures.sh"}
    assert on_disk == {e["name"] for e in MANIFEST}
    assert {e["format"] for e in SPEECH} == {"wav", "mp3", "ogg", "webm"}
    assert len({e["text"] for e in SPEECH}) >= 3
    assert sum(p.stat().st_size for p in FIXTURES.iterdir()) < 1_500_000
    for e in MANIFEST:
        assert (FIXTURES / e["name"]).stat().st_size == e["size_bytes"], e["name"]


# -- Detection ------------------------------------------------------------------------


@pytest.mark.parametrize("entry", MANIFEST, ids=lambda e: e["name"])
def test_detects_the_format_from_the_bytes(entry: Entry) -> None:
    assert detect_format(read(entry["name"])) == entry["format"]


def test_the_claimed_type_plays_no_role() -> None:
    # Only bytes go in: a WebM recording named "clip.wav" by its sender is WebM.
    clip = load(read("sentence1.webm"))
    assert clip.format == "webm"
    assert clip.filename == "clip.webm"
    assert MIME_TYPES[clip.format] == "audio/webm"


def test_mime_types_and_file_names() -> None:
    assert MIME_TYPES == {
        "wav": "audio/wav",
        "mp3": "audio/mpeg",
        "ogg": "audio/ogg",
        "webm": "audio/webm",
    }
    for name in ("sentence1.wav", "sentence1.mp3", "sentence1.ogg", "sentence1.webm"):
        assert load(read(name)).filename == "clip." + name.rsplit(".", 1)[1]


def test_mp3_detected_by_frame_sync_needs_a_second_frame_where_the_first_ends() -> None:
    data = read("sentence2.mp3")  # no ID3 tag: starts with a frame header
    assert data[:2] == b"\xff\xf3"
    assert detect_format(data) == "mp3"
    assert detect_format(data[:4] + bytes(400)) is None
    # Too short to hold a second header: let decoding judge it.
    assert detect_format(data[:100]) == "mp3"


@pytest.mark.parametrize(
    "head",
    [
        b"\xff\xe0\x00\x00",  # reserved version, layer and bitrate
        b"\xff\xfb\xf0\x00",  # bitrate index 15
        b"\xff\xfb\x0c\x00",  # reserved sample rate
        b"\xff\xfd\x90\x00",  # Layer II, not MP3
        b"\xff\xfb\x90\x02",  # reserved emphasis
        b"\xff\xf1\x50\x80",  # AAC (ADTS)
    ],
)
def test_invalid_mpeg_headers_are_not_mp3(head: bytes) -> None:
    assert detect_format(head + bytes(2000)) is None


def test_random_bytes_rarely_pass_for_audio() -> None:
    rng = np.random.default_rng(7)
    # Longer than the longest MP3 frame (1441 bytes), so the second header is checked.
    blobs = rng.integers(0, 256, size=(10_000, 1500), dtype=np.uint8)
    assert sum(detect_format(row.tobytes()) is not None for row in blobs) == 0


def test_an_id3_tag_over_another_codec_is_not_mp3() -> None:
    tag = b"ID3\x04\x00\x00\x00\x00\x00\x00"
    assert detect_format(tag + read("sentence1.mp3")[20:]) == "mp3"
    flac = tag + b"fLaC" + bytes(100)
    assert detect_format(flac) is None
    assert "FLAC" in refusal(flac).message


def test_short_prefixes_of_magic_numbers_are_not_audio() -> None:
    for data in (b"R", b"RIFF", b"RIFF\x00\x00\x00\x00WAV", b"ID3", b"\xff"):
        assert detect_format(data) is None


# -- Decoding the good ones --------------------------------------------------------


@pytest.mark.parametrize("entry", GOOD, ids=lambda e: e["name"])
def test_decodes_to_16khz_mono_float32(entry: Entry) -> None:
    data = read(entry["name"])
    clip = load(data)
    assert clip.format == entry["format"]
    assert clip.data is data
    assert clip.samples.dtype == np.float32
    assert clip.samples.ndim == 1
    assert clip.duration_s == pytest.approx(clip.samples.size / SAMPLE_RATE)
    assert entry["duration_s"] is not None
    assert abs(clip.duration_s - entry["duration_s"]) <= 0.3
    assert -1.0 <= float(clip.samples.min()) <= float(clip.samples.max()) <= 1.0
    assert not clip.samples.flags.writeable


@pytest.mark.parametrize("entry", SPEECH, ids=lambda e: e["name"])
def test_speech_decodes_to_sound(entry: Entry) -> None:
    assert rms(load(read(entry["name"])).samples) > 0.03


def test_silence_decodes_to_silence_and_noise_to_noise() -> None:
    assert rms(load(read("silence_2s.wav")).samples) < 1e-4
    assert rms(load(read("silence_2s.webm")).samples) < 1e-3
    assert rms(load(read("noise_2s.wav")).samples) > 0.05


def test_chrome_webm_has_no_duration_in_its_header() -> None:
    # The premise of measuring by decoding: the container does not say.
    with av.open(str(FIXTURES / "sentence1.webm")) as container:
        assert container.duration is None
    # Segment and clusters of unknown size, as MediaRecorder streams them.
    data = read("sentence1.webm")
    assert b"\x18\x53\x80\x67\x01\xff\xff\xff\xff\xff\xff\xff" in data
    assert data.count(b"\x1f\x43\xb6\x75\x7f\xff") >= 3
    expected = next(e["duration_s"] for e in MANIFEST if e["name"] == "sentence1.webm")
    assert load(read("sentence1.webm")).duration_s == pytest.approx(expected, abs=0.05)


def test_the_same_sentence_sounds_alike_in_every_format() -> None:
    levels = [rms(load(read(f"sentence1.{ext}")).samples) for ext in ("wav", "mp3", "ogg", "webm")]
    assert max(levels) / min(levels) < 1.2


def test_clips_compare_by_bytes_and_print_briefly() -> None:
    data = read("sentence3.ogg")
    clip = load(data)
    assert clip == load(data)
    assert repr(clip) == f"Clip(format='ogg', duration_s={clip.duration_s!r})"


# -- Header lies: the duration is what decodes --------------------------------------


def test_wav_claiming_100_s_but_carrying_1_s_lasts_1_s() -> None:
    data = wav(tone(1.0), data_size=100 * SAMPLE_RATE * 2)
    assert load(data).duration_s == pytest.approx(1.0, abs=0.01)


def test_wav_claiming_70_s_but_carrying_2_s_is_not_too_long() -> None:
    assert load(wav(tone(2.0), data_size=70 * SAMPLE_RATE * 2)).duration_s == pytest.approx(2.0)


@pytest.mark.parametrize("unknown", [0, 0xFFFFFFFF])
def test_streamed_wav_of_unknown_size_is_measured(unknown: int) -> None:
    # Writers that cannot seek back leave the sizes 0 or 0xFFFFFFFF.
    data = wav(tone(3.0), data_size=unknown, riff_size=unknown)
    assert load(data).duration_s == pytest.approx(3.0, abs=0.01)
    longer = wav(tone(MAX_SECONDS + 1.5), data_size=unknown, riff_size=unknown)
    assert refusal(longer).code == "audio_too_long"


def test_wav_claiming_1_s_but_carrying_3_s_lasts_1_s() -> None:
    # The data chunk's size bounds the audio; bytes after it are not samples.
    # The hosted provider, given the same bytes, hears the same second.
    assert load(wav(tone(3.0), data_size=SAMPLE_RATE * 2)).duration_s == pytest.approx(1.0)


def test_resamples_8khz_to_16khz() -> None:
    clip = load(wav(tone(1.0, rate=8000), rate=8000))
    assert clip.samples.size == pytest.approx(SAMPLE_RATE, abs=64)
    # Still a 440 Hz tone after resampling.
    spectrum = np.abs(np.fft.rfft(clip.samples))
    assert np.argmax(spectrum) * SAMPLE_RATE / clip.samples.size == pytest.approx(440, abs=5)


def test_float_wav_out_of_range_is_clipped() -> None:
    # IEEE float WAV (format 3) may carry values past full scale, or NaN.
    values = np.array([0.5, 2.0, -3.0, np.nan] * 400, dtype="<f4").tobytes()
    fmt = struct.pack("<HHIIHH", 3, 1, SAMPLE_RATE, SAMPLE_RATE * 4, 4, 32)
    data = (
        b"RIFF" + struct.pack("<I", 36 + len(values)) + b"WAVE"
        + b"fmt " + struct.pack("<I", 16) + fmt
        + b"data" + struct.pack("<I", len(values)) + values
    )  # fmt: skip
    samples = load(data).samples
    assert np.isfinite(samples).all()
    assert float(samples.min()) >= -1.0 and float(samples.max()) <= 1.0


# -- Limits ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["long_62s.ogg", "long_62s.webm"])
def test_a_62_s_clip_is_too_long(name: str) -> None:
    error = refusal(read(name))
    assert error.code == "audio_too_long"
    assert error.message.startswith("the clip is longer than 60 s; the limit is 60 s")


def test_the_limit_is_a_parameter() -> None:
    # sentence1 lasts between 4 and 8 s (6.5 s as generated).
    assert load(read("sentence1.wav"), max_seconds=8.0).duration_s < 8.0
    assert refusal(read("sentence1.wav"), max_seconds=4.0).code == "audio_too_long"
    assert "longer than 4 s" in refusal(read("sentence1.ogg"), max_seconds=4.0).message


_REAL_RESAMPLER = av.AudioResampler


class _CountingResampler:
    """Wraps PyAV's resampler to count the samples it is given."""

    fed = 0

    def __init__(self, **kwargs: Any) -> None:
        self._inner = _REAL_RESAMPLER(**kwargs)

    def resample(self, frame: av.AudioFrame | None) -> list[av.AudioFrame]:
        if frame is not None:
            type(self).fed += frame.samples
        return self._inner.resample(frame)


def test_decoding_stops_soon_after_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    # Ten minutes of 8 kHz silence (9.6 MB, under the size limit): decoding it all
    # would be wasted work for a clip that is refused anyway.
    ten_minutes = wav(bytes(600 * 8000 * 2), rate=8000)
    monkeypatch.setattr(av, "AudioResampler", _CountingResampler)
    _CountingResampler.fed = 0
    assert refusal(ten_minutes).code == "audio_too_long"
    assert _CountingResampler.fed <= (MAX_SECONDS + 1) * 8000


def test_size_limit_comes_first() -> None:
    data = read("sentence1.mp3")
    assert load(data, max_bytes=len(data)).format == "mp3"
    error = refusal(data, max_bytes=len(data) - 1)
    assert error.code == "audio_too_large"
    # Sizes that round alike are given in bytes.
    assert error.message == (
        f"the file is {len(data):,} bytes; the limit is {len(data) - 1:,} bytes: "
        "record a shorter clip"
    )
    # Checked before the format: large garbage is "too large", not "not audio".
    assert refusal(b"x" * 2000, max_bytes=1000).code == "audio_too_large"


def test_size_message_in_megabytes() -> None:
    error = refusal(b"\0" * (26 * 1024 * 1024))
    assert error.code == "audio_too_large"
    assert error.message.startswith("the file is 26 MB; the limit is 25 MB")


# -- Bad inputs --------------------------------------------------------------------------


@pytest.mark.parametrize("entry", BAD, ids=lambda e: e["name"])
def test_bad_fixtures_are_refused_with_their_code(entry: Entry) -> None:
    error = refusal(read(entry["name"]))
    assert error.code == entry["error"]
    assert error.message == str(error)
    # A sentence for a person: no exception names, errno or FFmpeg jargon.
    assert error.message[0].islower() and len(error.message) > 20
    for jargon in ("Error", "errno", "avcodec", "av.", "0x"):
        assert jargon not in error.message


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("image.png", "this is not audio: it looks like a PNG image"),
        ("notes.txt", "this is not audio: it looks like plain text"),
        ("random.bin", "not recognised as audio"),
        ("truncated.wav", "this WAV file is truncated or damaged"),
        ("truncated.mp3", "this MP3 file is truncated or damaged"),
        ("video_only.ogg", "this Ogg file holds Theora video"),
        ("video_only.webm", "this WebM file has no audio track: it holds only video (vp8)"),
    ],
)
def test_bad_fixtures_are_named(name: str, words: str) -> None:
    assert words in refusal(read(name)).message


def test_empty() -> None:
    error = refusal(b"")
    assert error.code == "invalid_audio"
    assert error.message.startswith("the audio is empty")


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"\xff\xd8\xff\xe0\x00\x10JFIF\x00", "not audio: it looks like a JPEG image"),
        (b"GIF89a\x01\x00\x01\x00", "not audio: it looks like a GIF image"),
        (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3", "not audio: it looks like a PDF document"),
        (b"PK\x03\x04\x14\x00\x00\x00", "not audio: it looks like a ZIP archive"),
        (b"RIFF\x24\x00\x00\x00WEBPVP8 ", "not audio: it looks like a WebP image"),
        (b"\x00\x00\x00\x20ftypM4A \x00\x00\x00\x00", "not supported: it looks like an MP4/M4A"),
        (b"fLaC\x00\x00\x00\x22", "not supported: it looks like FLAC audio"),
        (b"\xff\xf1\x50\x80\x02\x1f\xfc", "not supported: it looks like AAC audio"),
        (b"FORM\x00\x00\x00\x00AIFFCOMM", "not supported: it looks like AIFF audio"),
        (b'{"type": "audio", "audio": "GkXfo..."}', "not audio: it looks like JSON text"),
        (b"data:audio/webm;base64,GkXfo59ChoEBQveBAULygQRC84EIQo", "a data URL"),
        (b"GkXfo59ChoEBQveBAULygQRC84EIQoKEd2VibUKHgQRChYECGFOA", "base64 text"),
        (b"<!DOCTYPE html><html>", "an HTML or XML document"),
        ("une note en fran\u00e7ais\n".encode(), "not audio: it looks like plain text"),
    ],
)
def test_what_it_is_when_it_is_not_a_supported_clip(data: bytes, words: str) -> None:
    error = refusal(data)
    assert error.code == "invalid_audio"
    assert words in error.message
    assert detect_format(data) is None


def test_ogg_without_opus_or_vorbis_names_what_it_holds() -> None:
    page = bytearray(read("sentence1.ogg")[:200])
    opus_at = page.index(b"OpusHead")
    page[opus_at : opus_at + 8] = b"\x7fFLAC\x01\x00\x00"
    error = refusal(bytes(page))
    assert error.code == "invalid_audio"
    assert "holds FLAC audio" in error.message


def test_truncated_ogg_and_webm_heads_are_damaged() -> None:
    for name in ("sentence1.ogg", "sentence1.webm"):
        for cut in (4, 30, 120):
            error = refusal(read(name)[:cut])
            assert error.code == "invalid_audio"
            assert "truncated or damaged" in error.message


def test_vorbis_in_ogg_is_accepted() -> None:
    assert load(read("sentence2_vorbis.ogg")).format == "ogg"


def test_no_other_exception_escapes(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: Any, **kwargs: Any) -> Iterator[None]:
        raise RuntimeError("a PyAV bug")

    monkeypatch.setattr(av, "open", broken)
    error = refusal(read("sentence1.wav"))
    assert error.code == "invalid_audio"
    assert isinstance(error.__cause__, RuntimeError)


def test_keyboard_interrupt_is_not_swallowed(monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(*args: Any, **kwargs: Any) -> Iterator[None]:
        raise KeyboardInterrupt

    monkeypatch.setattr(av, "open", interrupted)
    with pytest.raises(KeyboardInterrupt):
        load(read("sentence1.wav"))


# -- Arbitrary bytes: a Clip or an AudioError, nothing else ------------------------------

SMALL_LIMITS = st.sampled_from([(MAX_BYTES, MAX_SECONDS), (MAX_BYTES, 1.0), (3000, MAX_SECONDS)])
# The 62 s clips are left out: decoding a minute per example would be the run.
HEADS = [read(e["name"]) for e in MANIFEST if e["format"] and e["error"] != "audio_too_long"]
PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def either_clip_or_audio_error(data: bytes, limits: tuple[int, float]) -> str:
    """The clip's format or the error's code; fails on anything else."""
    fmt = detect_format(data)
    assert fmt in (None, "wav", "mp3", "ogg", "webm")
    try:
        clip = load_clip(data, max_bytes=limits[0], max_duration_s=limits[1])
    except AudioError as error:
        assert error.code in ("invalid_audio", "audio_too_large", "audio_too_long")
        assert error.message
        return error.code
    assert clip.format == fmt
    assert clip.samples.dtype == np.float32 and clip.samples.size > 0
    assert clip.duration_s <= limits[1] + 0.3
    return clip.format


@PROPERTY
@given(data=st.binary(max_size=4096), limits=SMALL_LIMITS)
def test_arbitrary_bytes(data: bytes, limits: tuple[int, float]) -> None:
    either_clip_or_audio_error(data, limits)


@PROPERTY
@given(
    source=st.sampled_from(HEADS),
    keep=st.integers(min_value=0, max_value=600),
    tail=st.binary(max_size=2048),
    limits=SMALL_LIMITS,
)
def test_real_header_with_random_tail(
    source: bytes, keep: int, tail: bytes, limits: tuple[int, float]
) -> None:
    either_clip_or_audio_error(source[:keep] + tail, limits)


@PROPERTY
@given(
    source=st.sampled_from(HEADS),
    prefix=st.binary(max_size=64),
    skip=st.integers(min_value=0, max_value=64),
    limits=SMALL_LIMITS,
)
def test_random_prefix_with_real_body(
    source: bytes, prefix: bytes, skip: int, limits: tuple[int, float]
) -> None:
    either_clip_or_audio_error(prefix + source[skip:], limits)


@PROPERTY
@given(
    source=st.sampled_from(HEADS),
    flips=st.lists(st.tuples(st.integers(0, 4095), st.integers(0, 255)), max_size=8),
    limits=SMALL_LIMITS,
)
def test_real_file_with_corrupted_bytes(
    source: bytes, flips: list[tuple[int, int]], limits: tuple[int, float]
) -> None:
    data = bytearray(source)
    for at, value in flips:
        data[at % len(data)] = value
    either_clip_or_audio_error(bytes(data), limits)


def test_truncated_at_every_position() -> None:
    data = read("yes.webm")
    outcomes = {
        either_clip_or_audio_error(data[:cut], (MAX_BYTES, MAX_SECONDS))
        for cut in range(len(data) + 1)
    }
    # Short cuts are damaged; long ones still hold some of the word.
    assert outcomes == {"invalid_audio", "webm"}


@pytest.mark.parametrize("name", ["sentence1.wav", "sentence1.mp3", "sentence2.mp3",
                                  "sentence1.ogg", "sentence2_vorbis.ogg"])  # fmt: skip
def test_headers_truncated_at_every_position(name: str) -> None:
    data = read(name)
    for cut in range(min(len(data), 400) + 1):
        either_clip_or_audio_error(data[:cut], (MAX_BYTES, MAX_SECONDS))
