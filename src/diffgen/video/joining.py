"""Joining encoded pieces into one video: the pieces are remuxed, without encoding them again, together with the
source's sound and subtitle packets, copied unchanged, into the output container. Packets of all streams are
merged by time, so memory stays bounded whatever the length."""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

from diffgen.video import require_av
from diffgen.video.streams import Probe

def join(pieces: list[Path], src: Path, probe: Probe, target: Path, fmt: str, *, matrix: list[int] | None,
         until: float | None = None) -> None:
    """Remux the encoded pieces, in order, and the source's sound and subtitles into one `fmt` file.

    `until`: copy only sound and subtitle packets that start before this many seconds (a partial output).
    """
    av = require_av(src)
    options = {"movflags": "+faststart"} if fmt in ("mp4", "mov") else {}  # the index first: plays while it loads
    with av.open(str(pieces[0])) as first, av.open(str(src)) as source, \
            av.open(str(target), "w", format=fmt, options=options) as out:
        video = out.add_stream_from_template(first.streams.video[0])
        if fmt in ("mp4", "mov") and video.codec_context.name in ("hevc", "libx265"):
            video.codec_context.codec_tag = "hvc1"  # FFmpeg's default, hev1, does not play in Apple's players
        if matrix:
            video.set_display_matrix(matrix)
        copies = {i: copy_stream(out, source.streams[i]) for i in probe.copied}
        out.metadata.update({k: v for k, v in source.metadata.items() if k not in MUXER_TAGS})
        packets = heapq.merge(video_packets(av, pieces, video), copied_packets(source, copies, until),
                              key=packet_time)
        for packet in packets:
            out.mux(packet)


MUXER_TAGS = {"major_brand", "minor_version", "compatible_brands", "encoder"}  # describe the old file, not the new


def copy_stream(out, stream):
    copy = out.add_stream_from_template(stream)
    copy.metadata.update(stream.metadata)  # language, title
    copy.disposition = stream.disposition  # default, forced, ...
    return copy


def video_packets(av, pieces: list[Path], stream) -> Iterator:
    for path in pieces:
        with av.open(str(path)) as piece:
            for packet in piece.demux(piece.streams.video[0]):
                if packet.size:  # the demuxer's empty flush packet carries nothing
                    packet.stream = stream
                    yield packet


def copied_packets(source, copies: dict, until: float | None) -> Iterator:
    if not copies:
        return
    for packet in source.demux(*(source.streams[i] for i in copies)):
        if packet.dts is None and packet.pts is None:
            continue  # the demuxer's empty flush packet
        if until is not None and packet_time(packet) >= until:
            continue
        packet.stream = copies[packet.stream.index]
        yield packet


def packet_time(packet) -> Fraction:
    """When a packet is decoded, in seconds: the order packets of different streams are stored in."""
    ts = packet.dts if packet.dts is not None else packet.pts
    return ts * packet.time_base
