"""A clip moves only when the clip kept shows every moment of it, picture and sound
(`dedupd.cliplikeness`): a re-encode, a smaller copy or a cut may go; a copy with subtitles,
a logo, its colours taken away, or a sound track of its own is an edit and is only reported
(a voice-over copy moved and was purged in a red-team run)."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image

from dedupd.actions import Actions
from dedupd.cliplikeness import compare_clips, refusal
from dedupd.config import DEFAULT_POLICY, Config, HashingConfig
from dedupd.engine import Ingest, scan
from dedupd.filestat import FileStat, HashedVideo, Likeness
from dedupd.hashers import Hasher
from dedupd.pool import Failure
from dedupd.scanner import Entry
from dedupd.store import Store
from dedupd.video import hash_animation, hash_video
from tests import clips, photos

HASHER = Hasher("phash", 16)


@pytest.fixture(scope="session")
def made(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny clips (192x108, 10 fps): a 6 s cut of a camera move over a photo and what copies
    and edits make of it."""
    d = tmp_path_factory.mktemp("cliplikeness")
    long = clips.render(photos.photo("astronaut"), d / "long.mp4", seconds=10)
    cut = clips.transcode(long, d / "cut.mp4", keep=[(2, 8)], crf=20)
    clips.transcode(cut, d / "cut-wa.mov", size=(160, 90), crf=34)
    clips.transcode(cut, d / "cut-logo.mp4", frame=clips.logo, crf=20)
    clips.transcode(cut, d / "cut-subtitles.mp4", frame=clips.subtitles, crf=20)
    clips.transcode(cut, d / "cut-grey.mp4", frame=clips.greyscale, crf=20)
    clips.transcode(
        cut, d / "cut-subtitles-wa.mov", size=(160, 90), crf=34, frame=clips.subtitles
    )
    clips.transcode(cut, d / "cut-trimmed.mp4", keep=[(4, 9)], crf=20)
    clips.to_gif(cut, d / "cut.gif")
    voiced = clips.with_sound(cut, d / "cut-voice.mp4")
    clips.with_sound(voiced, d / "cut-voice-wa.mp4", beats=1.5, crf=34)  # its re-encode
    clips.with_sound(cut, d / "cut-music.mp4", beats=4.0, pitch=660.0)  # other sound
    clips.with_sound(cut, d / "cut-silent-track.mp4", beats=None)
    clips.with_sound(cut, d / "cut-voice-wa.mov", size=(160, 90), crf=34)  # a chat app's
    return d


def _hashed(path: Path) -> HashedVideo:
    if path.suffix == ".gif":
        clip = hash_animation(str(path), HASHER, max_pixels=10**8)
        assert clip is not None
        return clip
    return hash_video(str(path), HASHER, max_pixels=10**8)


def _compare(made: Path, a: str, b: str) -> Likeness:
    return compare_clips(
        str(made / a), _hashed(made / a), str(made / b), _hashed(made / b), HASHER, 10**8
    )


def _moves(found: Likeness, moving: str, *, newcomer: str) -> bool:
    return refusal(found, moving_is_newcomer=moving == newcomer) is None


def test_a_reencoded_smaller_copy_shows_every_moment_both_ways(made: Path) -> None:
    found = _compare(made, "cut.mp4", "cut-wa.mov")
    assert found.error is None and found.cover == (1.0, 1.0), found
    assert found.sides == (192, 160)
    assert _moves(found, "cut-wa.mov", newcomer="cut.mp4")


@pytest.mark.parametrize("edit", ["cut-logo.mp4", "cut-subtitles.mp4", "cut-grey.mp4"])
def test_an_edited_copy_is_not_shown_by_the_clip_and_never_moves(made: Path, edit: str) -> None:
    """A logo, burned-in subtitles or the colours taken away leave every frame hash within
    the threshold (the clips match), and the pixels of every moment tell the edit."""
    found = _compare(made, "cut.mp4", edit)
    assert found.cover[1] < 1.0, found
    why = refusal(found, moving_is_newcomer=False)
    assert why is not None and "frames differ" in why, why
    assert not _moves(found, "cut.mp4", newcomer="cut.mp4")  # nor the other way round


def test_a_copy_with_a_sound_track_of_its_own_never_moves_but_the_silent_clip_may(
    made: Path,
) -> None:
    """The red team's voice-over: the same frames, and a sound track the clip kept lacks."""
    found = _compare(made, "cut.mp4", "cut-voice.mp4")
    assert found.cover[0] == 1.0 and found.cover[1] < 1.0, found
    why = refusal(found, moving_is_newcomer=False)
    assert why is not None and "the other clip has no sound track" in why, why
    assert _moves(found, "cut.mp4", newcomer="cut.mp4")  # nothing of it is lost


def test_other_sound_over_the_same_frames_is_not_shown_and_the_same_sound_is(
    made: Path,
) -> None:
    other = _compare(made, "cut-voice.mp4", "cut-music.mp4")
    assert other.cover[0] < 1.0 and other.cover[1] < 1.0, other
    assert "sound differs" in other.unshown[0], other.unshown
    same = _compare(made, "cut-voice.mp4", "cut-voice-wa.mp4")
    assert same.cover == (1.0, 1.0), same


def test_a_chat_apps_copy_of_a_clip_with_sound_shows_all_of_it(made: Path, tmp_path: Path) -> None:
    """Picture and sound decoded and encoded again (the sound at 32 kbit/s): the same clip,
    both ways (the sound's bands part by a few dB, other sound by 15 and more)."""
    copy = clips.chat_copy(made / "cut-voice.mp4", tmp_path / "chat.mp4")
    found = _compare_paths(made / "cut-voice.mp4", copy)
    assert found.cover == (1.0, 1.0), found


def test_sound_is_told_by_its_bands_not_its_loudness_alone() -> None:
    """Red team 9: other music at the same level, or a voice laid over steady noise at its
    level, kept the loudness curve and moved. Band levels tell them; the same sound 3 dB
    quieter (one gain) is the same."""
    import numpy as np

    from dedupd import cliplikeness

    rng = np.random.default_rng(7)
    rate = cliplikeness._SOUND_RATE
    block = round(rate * cliplikeness.SOUND_BLOCK)
    t = np.arange(rate) / rate

    def levels(x: np.ndarray) -> np.ndarray:  # the same on both channels
        return cliplikeness._blocks(np.stack([x, x]).astype(np.float32).reshape(2, -1, block))

    noise = np.convolve(rng.standard_normal(rate), np.ones(8) / 8, mode="same") * 0.1
    syllables = np.clip(np.sin(2 * np.pi * 4 * t), 0, 1)
    voice = syllables * sum(np.sin(2 * np.pi * k * 150 * t) / k for k in range(1, 8))
    voice *= np.sqrt(np.mean(noise**2) / np.mean(voice**2))  # at the level of the noise
    chords = np.sin(2 * np.pi * 262 * t) + np.sin(2 * np.pi * 330 * t)
    other = np.sin(2 * np.pi * 196 * t) + np.sin(2 * np.pi * 587 * t)
    same = cliplikeness._apart(levels(noise), levels(noise * 10 ** (-3 / 20)))
    assert same <= cliplikeness.SOUND_CELLS
    for a, b in ((noise, noise + voice), (chords * 0.1, other * 0.1)):
        assert cliplikeness._apart(levels(a), levels(b)) > cliplikeness.SOUND_CELLS
    # Red team 10: a voice on the side channel (L + voice, R - voice) cancels in a mono mix;
    # chirps at 5-7 kHz were above an 8 kHz sampling's reach. Both channels, up to 8 kHz.
    def stereo(left: np.ndarray, right: np.ndarray) -> np.ndarray:
        pair = np.stack([left, right]).astype(np.float32)
        return cliplikeness._blocks(pair.reshape(2, -1, block))

    music = chords * 0.1
    side = cliplikeness._apart(stereo(music, music), stereo(music + voice, music - voice))
    assert side > cliplikeness.SOUND_CELLS
    sweep = (t * 4) % 1 < 0.6
    chirps = 0.3 * sweep * np.sin(2 * np.pi * np.cumsum(5000 + 2000 * ((t * 4) % 1)) / rate)
    assert cliplikeness._apart(levels(music), levels(music + chirps)) > cliplikeness.SOUND_CELLS


def test_a_silent_sound_track_is_no_sound_to_lose(made: Path) -> None:
    found = _compare(made, "cut.mp4", "cut-silent-track.mp4")
    assert found.cover == (1.0, 1.0), found


def test_a_trimmed_copy_may_move_and_the_longer_clip_may_not(made: Path) -> None:
    found = _compare(made, "cut.mp4", "cut-trimmed.mp4")
    assert found.cover[1] == 1.0 and found.cover[0] < 1.0, found
    assert _moves(found, "cut-trimmed.mp4", newcomer="cut.mp4")
    why = refusal(found, moving_is_newcomer=True)
    assert why is not None and "beyond the other clip's ends" in why, why


def test_an_animated_gif_of_a_clip_is_shown_by_it_and_not_the_other_way_round(
    made: Path,
) -> None:
    """The GIF keeps every other frame in 256 colours: the clip shows all of it, and it
    lacks half of the clip's frames (a camera move: the frame between two differs)."""
    found = _compare(made, "cut.mp4", "cut.gif")
    assert found.cover[1] == 1.0 and found.cover[0] < 1.0, found


def test_seconds_of_other_film_between_two_even_moments_are_looked_at(tmp_path: Path) -> None:
    """A minute of film, and a copy with 1.8 s of it replaced by another scene: 2 of its 60
    sampled frames match nothing, under the 5% a clip match lets differ, and the even
    moments (24, one every 2.5 s) fall on either side of the seconds replaced. The frames
    whose hashes matched nothing are moments too: the copy is not shown, nor the original."""
    from PIL import Image

    size, fps = (192, 108), 10
    with Image.open(photos.photo("astronaut")) as im:
        film = im.convert("RGB")
    with Image.open(photos.photo("coffee")) as im:
        other = im.convert("RGB")
    n = 60 * fps
    for name, replaced in (("film.mp4", False), ("spliced.mp4", True)):
        out, stream = clips._writer(tmp_path / name, size, fps, fps, 20, "libx264")
        for i in range(n):
            t = i / fps
            source = other if replaced and 11.9 <= t < 13.7 else film
            clips._encode(out, stream, clips._view(source, i / (n - 1), size))
        clips._finish(out, stream)
    a, b = _hashed(tmp_path / "film.mp4"), _hashed(tmp_path / "spliced.mp4")
    found = compare_clips(
        str(tmp_path / "film.mp4"), a, str(tmp_path / "spliced.mp4"), b, HASHER, 10**8
    )
    for side in (0, 1):  # each lacks the other's seconds there
        why = r"at (\d+\.\d) s: (the frames differ|its frame there is like none)"
        at = re.match(why, found.unshown[side])
        assert found.cover[side] < 1.0 and at and 11.8 <= float(at[1]) < 13.7, found


def test_an_edit_of_a_few_seconds_anywhere_in_a_long_copy_is_found(tmp_path: Path) -> None:
    """Red team 8: in a long copy, a caption shown for a few seconds, or a sentence spoken,
    fell between two of the 24 moments compared then (here 1.2 s of a minute, between the
    moments at 6.25 and 8.75 s) and the copy moved. Frames are compared every second (up to
    10 minutes), and sound over every second."""
    film = clips.render(photos.photo("astronaut"), tmp_path / "film.mp4", seconds=60, crf=20)
    voiced = clips.with_sound(film, tmp_path / "voiced.mp4", crf=20)
    clips.transcode(film, tmp_path / "caption.mp4", frame=clips.subtitles, during=(6.9, 8.1))
    spoken = clips.with_sound(film, tmp_path / "spoken.mp4", crf=30, burst=(6.9, 8.1))
    for copy, source, why in (
        (tmp_path / "caption.mp4", film, "the frames differ"),
        (spoken, voiced, "its sound differs"),
    ):
        found = compare_clips(
            str(source), _hashed(source), str(copy), _hashed(copy), HASHER, 10**8
        )
        first = re.match(r"at (\d+\.\d) s: (.*)", found.unshown[1])
        assert first and 6.9 <= float(first[1]) <= 8.1 and first[2].startswith(why), found


def test_a_copy_with_a_track_the_clip_lacks_is_not_shown(made: Path, tmp_path: Path) -> None:
    """Red team 8: a second sound track (a commentary) or a second video track (another
    camera) in the copy, which nothing read: the copy moved and the track was purged. Red
    team 10: so did one whose clip kept had a second video track too, another one: a clip
    with a track nothing compares never moves."""
    commentary = clips.with_sound(
        made / "cut-voice.mp4", tmp_path / "commentary.mp4", crf=30, tracks=2
    )
    found = compare_clips(
        str(made / "cut-voice.mp4"),
        _hashed(made / "cut-voice.mp4"),
        str(commentary),
        _hashed(commentary),
        HASHER,
        10**8,
    )
    assert "the other clip has no sound track 2" in found.unshown[1], found
    assert found.cover[0] == 1.0, found  # the first track is the same
    angles = clips.second_camera(made / "cut.mp4", photos.photo("coffee"), tmp_path / "two.mp4")
    found = _compare_paths(made / "cut.mp4", angles)
    assert "it has 2 video tracks, which are not compared" in found.unshown[1], found
    assert found.cover[1] == 0.0 and found.cover[0] == 1.0, found


def test_a_copy_carrying_an_attached_file_is_not_shown(made: Path, tmp_path: Path) -> None:
    """Red team 9: an MKV re-encode carrying a letter as an attachment moved as a copy of the
    clip, and a purge deleted the only copy of the letter."""
    import av

    decoded = clips.frames(made / "cut.mp4")
    out = av.open(str(tmp_path / "letter.mkv"), "w")
    stream = out.add_stream("libx264", rate=10)
    stream.width, stream.height = decoded[0][1].size
    stream.pix_fmt = "yuv420p"
    out.add_attachment("letter.txt", "text/plain", b"Dear grandma, ...")
    for _, im in decoded:
        clips._encode(out, stream, im)
    clips._finish(out, stream)
    found = _compare_paths(made / "cut.mp4", tmp_path / "letter.mkv")
    assert "it has 1 attachment or data tracks, which are not compared" in found.unshown[1], found
    assert found.cover[1] == 0.0 and found.cover[0] == 1.0, found


def _compare_paths(a: Path, b: Path) -> Likeness:
    return compare_clips(str(a), _hashed(a), str(b), _hashed(b), HASHER, 10**8)


def test_a_picture_flashed_between_two_compared_frames_is_seen(tmp_path: Path) -> None:
    """Red team 9: 0.3 s of another picture (a title card) between the frames compared at
    two moments moved, and the purge took it. Every frame between moments is looked at
    coarsely (64 px) against the other clip's frames where it aligns."""
    with Image.open(photos.photo("coffee")) as opened:
        card = opened.convert("RGB")
    film = clips.render(photos.photo("astronaut"), tmp_path / "film.mp4", seconds=20, crf=20)

    def flashed(im: Image.Image) -> Image.Image:
        return card.resize(im.size)

    clips.transcode(film, tmp_path / "flash.mp4", frame=flashed, during=(5.6, 5.9))
    found = _compare_paths(film, tmp_path / "flash.mp4")
    first = re.match(r"at (\d+\.\d) s: its frame there is like none", found.unshown[1])
    assert first and 5.6 <= float(first[1]) < 5.9, found
    assert found.cover[0] < 1.0, found  # nor are the film's frames there in the copy


@pytest.mark.parametrize("edit", ["greyscale", "sepia"])
def test_a_black_and_white_or_sepia_copy_of_a_clip_in_muted_colours_never_moves(
    tmp_path: Path, edit: str
) -> None:
    """bench/video.py: the greyscale and sepia copies of a clip over chelsea's muted fur
    moved (every frame within a cell's bound, colour fitted by one gain and shift). The
    frames' colours as a whole tell them (`likeness._colours`); its re-encode still moves."""
    film = clips.render(photos.photo("chelsea"), tmp_path / "film.mp4", seconds=4, crf=20)
    copy = clips.transcode(film, tmp_path / "copy.mp4", crf=30)
    found = _compare_paths(film, copy)
    assert refusal(found, moving_is_newcomer=False) is None, found
    version = clips.transcode(film, tmp_path / f"{edit}.mp4", frame=getattr(clips, edit), crf=20)
    found = _compare_paths(film, version)
    assert "the frames' colours differ" in found.unshown[1], found
    assert refusal(found, moving_is_newcomer=False) is not None
    assert refusal(found, moving_is_newcomer=True) is not None


def test_a_clip_changed_since_it_was_hashed_is_not_compared(made: Path, tmp_path: Path) -> None:
    copy = Path(shutil.copyfile(made / "cut-wa.mov", tmp_path / "cut-wa.mov"))
    hashed = _hashed(copy)
    with open(copy, "ab") as f:
        f.write(b"\0" * 16)
    found = compare_clips(
        str(made / "cut.mp4"), _hashed(made / "cut.mp4"), str(copy), hashed, HASHER, 10**8
    )
    assert found.error is not None and "changed" in found.error, found
    why = refusal(found, moving_is_newcomer=False)
    assert why is not None and why.startswith("clips not compared")


# -- decisions -----------------------------------------------------------------------------------


def _config(tmp_path: Path, root: Path) -> Config:
    config = replace(
        Config(),
        database=tmp_path / "state" / "dedupd.db",
        hashing=HashingConfig(workers=1),
        quarantine=replace(Config().quarantine, path=tmp_path / "quarantine"),
    )
    policy = replace(config.policies[DEFAULT_POLICY], exact="quarantine", near="quarantine")
    config = replace(config, policies={**config.policies, DEFAULT_POLICY: policy})
    return config.with_roots([root])


def _place(made: Path, root: Path, *names: str) -> None:
    """Copy clips into `root`, each a second older than the next: the first was there."""
    root.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        dst = root / name
        shutil.copyfile(made / name, dst)
        os.utime(dst, ns=(1_600_000_000_000_000_000 + i * 10**9,) * 2)


@pytest.mark.parametrize(
    ("copy", "moved", "because"),
    [
        ("cut-wa.mov", True, "every moment's frame and sound are in the clip kept"),
        ("cut-voice-wa.mov", False, "it has sound; the other clip has no sound track"),
        ("cut-subtitles-wa.mov", False, "the frames differ"),
    ],
)
def test_a_scan_moves_a_clip_copy_only_once_its_frames_and_sound_were_compared(
    made: Path, tmp_path: Path, copy: str, moved: bool, because: str
) -> None:
    root = tmp_path / "videos"
    _place(made, root, "cut.mp4", copy)
    config = _config(tmp_path, root)
    with Store(config.database) as store:
        report = scan(config, store, actions=Actions(store, config.quarantine.path))
    assert not report.failed
    (outcome,) = report.outcomes  # the held decision, replaced by what it came to
    assert outcome.decision.kind == "video"
    assert outcome.decision.action == ("quarantine" if moved else "report"), outcome
    assert because in outcome.decision.rule, outcome.decision.rule
    assert (root / copy).exists() is not moved
    assert (root / "cut.mp4").exists()


@contextmanager
def _held(made: Path, tmp_path: Path) -> Iterator[tuple[Store, Ingest, Path]]:
    """A library of cut.mp4 and an `Ingest` that has just held the decision on its chat
    copy for the comparison (queued in `Ingest.confirm`)."""
    root = tmp_path / "videos"
    _place(made, root, "cut.mp4")
    config = _config(tmp_path, root)
    with Store(config.database) as store:
        scan(config, store, actions=Actions(store, config.quarantine.path))
        ingest = Ingest(store, config, [str(root)], Actions(store, config.quarantine.path))
        try:
            copy = Path(shutil.copyfile(made / "cut-wa.mov", root / "cut-wa.mov"))
            entry = Entry(str(root), copy.name, FileStat.of(os.stat(copy)))
            held = ingest.ingest(entry, _hashed(copy))
            assert held is not None and held.result.startswith("held: its frames and sound")
            yield store, ingest, copy
        finally:
            ingest.close()


def test_a_clip_comparison_that_times_out_is_only_reported_and_no_error_of_the_clip(
    made: Path, tmp_path: Path
) -> None:
    with _held(made, tmp_path) as (store, ingest, copy):
        (again,) = ingest.confirm
        assert again.compare and again.full_decode
        late = ingest.ingest(again, Failure("timeout", "decoding took too long"))
        assert late is not None and late.decision.action == "report", late
        assert late.decision.rule.startswith("clips not compared (the comparison's worker")
        record = store.file_at(copy)
        assert record is not None and record.state == "ok"
    assert copy.exists()


def test_frames_far_into_a_clip_with_keyframes_far_apart_are_reached(tmp_path: Path) -> None:
    """Review: a keyframe more than 2 s before a span sought made the reader seek to it again
    and again, for good (a clip over 48 s with a keyframe every 10 s never compared, its
    worker held for the whole timeout). Each span is sought once, then decoded to."""
    import signal

    from dedupd.cliplikeness import _Reader

    clip = clips.render(photos.photo("astronaut"), tmp_path / "gop.mp4", seconds=60, gop=100)

    def stuck(*_: object) -> None:
        raise TimeoutError("the reader did not come back")

    before = signal.signal(signal.SIGALRM, stuck)
    signal.alarm(20)
    try:
        with _Reader(str(clip), FileStat.of(os.stat(clip))) as reader:
            got = [round(at, 1) for at, _ in reader.frames([(5.0, 5.3), (48.5, 48.8)])]
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, before)
    assert got == [5.0, 5.1, 5.2, 5.3, 48.5, 48.6, 48.7, 48.8]


def test_sound_that_runs_on_after_the_picture_is_compared_too(tmp_path: Path) -> None:
    """Review: a clip's seconds were its picture's; 20 s of sound after 6 s of picture were
    never compared, and the copy lacking them moved. The sound's own length counts."""
    import av
    import numpy as np

    film = clips.render(photos.photo("coffee"), tmp_path / "film.mp4", seconds=6)
    decoded = clips.frames(film)

    def write(dst: Path, seconds: int) -> Path:
        out, stream = clips._writer(dst, decoded[0][1].size, 10, 10, 23, "libx264")
        track = out.add_stream("aac", rate=44100)
        t = np.arange(seconds * 44100) / 44100
        wave = (0.3 * np.sin(2 * np.pi * 440 * t) * (np.sin(2 * np.pi * t) > 0)).astype(np.float32)
        for _, im in decoded:
            clips._encode(out, stream, im)
        for start in range(0, len(wave), 1024):
            piece = np.zeros(1024, np.float32)
            chunk = wave[start : start + 1024]
            piece[: len(chunk)] = chunk
            frame = av.AudioFrame.from_ndarray(piece.reshape(1, -1), format="fltp", layout="mono")
            frame.sample_rate = 44100
            for packet in track.encode(frame):
                out.mux(packet)
        for packet in track.encode():
            out.mux(packet)
        clips._finish(out, stream)
        return dst

    long, short = write(tmp_path / "long.mp4", 26), write(tmp_path / "short.mp4", 6)
    found = _compare_paths(long, short)
    assert found.cover[0] < 1.0 and "the other clip is silent there" in found.unshown[0], found
    assert refusal(found, moving_is_newcomer=True) is not None
