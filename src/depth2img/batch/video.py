"""Video inputs with PyAV (extra ``[video]``): frames out to PNG files, and generated frames back into a video.

The input's frames are decoded once into ``OUTDIR/.frames/<name>/`` (atomically, with a ``frames.json``
written last, so a killed extraction is redone and a finished one is reused) and each becomes an ordinary image
job. When all of a video's frames are generated, they are encoded at the input's frame rate (H.264 when the
PyAV wheel has libx264, else MPEG-4 Part 2) and the input's first audio stream is copied packet by packet, not
re-encoded.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from PIL import Image

from ..cli.errors import CliError
from ..utils.files import atomic_path, atomic_write_text
from .store import Store

__all__ = ["VIDEO_SUFFIXES", "VideoInfo", "encode_video", "extract_frames", "output_suffix", "probe_video"]

VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi")
_MUXERS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska"}
FRAMES_MARKER = "frames.json"


def _av() -> Any:
    try:
        import av
    except ImportError:
        raise CliError("video inputs need PyAV: pip install 'depth2img[video]'") from None
    return av


@dataclass(frozen=True)
class VideoInfo:
    """What the header says: frame rate, frame size, whether there is audio to copy."""

    fps: Fraction
    width: int
    height: int
    has_audio: bool


def probe_video(path: Path) -> VideoInfo:
    """Read the container header; raise ``ValueError`` with a reason when it is not a usable video."""
    av = _av()
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ValueError(f"{path} has no video stream")
            stream = container.streams.video[0]
            fps = stream.average_rate or stream.guessed_rate
            if not fps:
                raise ValueError(f"{path}: the frame rate is unknown")
            return VideoInfo(Fraction(fps), stream.width, stream.height, bool(container.streams.audio))
    except av.FFmpegError as error:
        raise ValueError(f"{path} is not a video PyAV can read ({error})") from None


def extract_frames(path: Path, store: Store, folder: str) -> int:
    """Decode every frame of ``path`` into ``folder/NNNNNN.png`` in the store (once); return the frame count."""
    marker = f"{folder}/{FRAMES_MARKER}"
    if store.exists(marker):
        return int(json.loads(store.read_bytes(marker))["frames"])
    av = _av()
    count = 0
    try:
        with av.open(str(path)) as container:
            for count, frame in enumerate(container.decode(container.streams.video[0]), start=1):
                with store.output_file(frame_name(folder, count - 1)) as target, atomic_path(target) as tmp:
                    frame.to_image().save(tmp, format="PNG")
    except av.FFmpegError as error:
        raise ValueError(f"{path}: decoding failed at frame {count} ({error})") from None
    if count == 0:
        raise ValueError(f"{path} has no frames")
    with store.output_file(marker) as target:
        atomic_write_text(target, json.dumps({"frames": count}))
    return count


def frame_name(folder: str, index: int) -> str:
    """The file of frame ``index`` (from 0) in ``folder``."""
    return f"{folder}/{index:06d}.png"


def output_suffix(source: Path) -> str:
    """The output video's suffix: the input's when its container takes any codec we copy, else ``.mkv``."""
    suffix = source.suffix.lower()
    return suffix if suffix in _MUXERS else ".mkv"


def encode_video(source: Path, frame_count: int, read_frame: Callable[[int], bytes], target: Path) -> str:
    """Encode ``frame_count`` frames (PNG bytes from ``read_frame``) at ``source``'s frame rate into ``target``,
    atomically, copying ``source``'s first audio stream; return the video codec used."""
    av = _av()
    info = probe_video(source)
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    with (
        av.open(str(source)) as src,
        atomic_path(target) as tmp,
        av.open(str(tmp), mode="w", format=_MUXERS[output_suffix(source)]) as out,
    ):
        with Image.open(io.BytesIO(read_frame(0))) as first:
            size = first.size
        video = out.add_stream(codec, rate=info.fps)
        video.width, video.height = size
        video.pix_fmt = "yuv420p"
        audio_in = src.streams.audio[0] if info.has_audio else None
        audio_out = out.add_stream_from_template(audio_in) if audio_in is not None else None
        for index in range(frame_count):
            with Image.open(io.BytesIO(read_frame(index))) as image:
                frame = av.VideoFrame.from_image(image.convert("RGB"))
            frame.pts = index
            frame.time_base = 1 / info.fps
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
        if audio_in is not None:
            for packet in src.demux(audio_in):
                if packet.dts is None:  # the demuxer's flush packet
                    continue
                packet.stream = audio_out
                out.mux(packet)
    return codec
