"""Videos end to end: real clips encoded with PyAV, hashed by the pool's workers, matched by
their frames, decided by policy, shown and searched."""

from __future__ import annotations

import os
import random
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

from dedupd.actions import Actions
from dedupd.cli import dedupctl
from dedupd.config import DEFAULT_POLICY, Config, HashingConfig, load_config
from dedupd.engine import ScanReport, scan
from dedupd.errors import ConfigError
from dedupd.hashers import Hasher
from dedupd.index import ClipVotes
from dedupd.pool import Failure, HasherPool, hash_file
from dedupd.scanner import Entry
from dedupd.store import Store
from dedupd.video import video_key
from tests import clips, photos

HASHER = Hasher("phash", 16)


@pytest.fixture(scope="session")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A few tiny clips (192x108, 10 fps, a keyframe a second), made once: a 10 s camera move
    over a photo, a 6 s cut of it, a chat app's re-encode of the cut (smaller, lower quality,
    another container), an unrelated clip, the cut as an animated GIF, and a clip whose first
    seconds are black."""
    d = tmp_path_factory.mktemp("clips")
    long = clips.render(photos.photo("astronaut"), d / "long.mp4", seconds=10)
    cut = clips.transcode(long, d / "cut.mp4", keep=[(2, 8)], crf=20)
    clips.transcode(cut, d / "cut-wa.mov", size=(160, 90), crf=34)
    clips.render(photos.photo("coffee"), d / "other.mp4", seconds=6)
    clips.to_gif(cut, d / "cut.gif")
    clips.sideways(cut, d / "cut-portrait.mp4")
    clips.transcode(cut, d / "cut-letterbox.mp4", size=(192, 144), frame=clips.letterbox)
    clips.render(photos.photo("chelsea"), d / "dark.mp4", seconds=4, black_lead=2)
    return d


def _config(tmp_path: Path, root: Path, *, act: bool = False) -> Config:
    config = replace(
        Config(),
        database=tmp_path / "state" / "dedupd.db",
        hashing=HashingConfig(workers=1),
        quarantine=replace(Config().quarantine, path=tmp_path / "quarantine"),
    )
    if act:
        policy = replace(config.policies[DEFAULT_POLICY], exact="quarantine", near="quarantine")
        config = replace(config, policies={**config.policies, DEFAULT_POLICY: policy})
    return config.with_roots([root])


def _place(clip_dir: Path, root: Path, *names: str) -> None:
    """Copy clips into `root` in the order given, each a second older than the next: the
    first is "already there", the later ones arrive."""
    root.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        dst = root / name
        shutil.copyfile(clip_dir / name, dst)
        os.utime(dst, ns=(1_600_000_000_000_000_000 + i * 10**9,) * 2)


def _scan(config: Config) -> ScanReport:
    with Store(config.database) as store:
        return scan(config, store, actions=Actions(store, config.quarantine.path))


def _matches(config: Config, name: str) -> list[tuple[str, str, dict[str, object] | None]]:
    key = video_key(HASHER, config.hashing.video_fps)
    with Store(config.database) as store:
        record = store.file_at(config.roots[0].path / name)
        assert record is not None
        return sorted(
            (m.other.relpath, m.kind, None if m.detail is None else dict(m.detail))
            for m in store.matches_of(record.id, key)
        )


@pytest.mark.slow
def test_a_reencoded_copy_is_found_and_quarantined_by_policy(
    clip_dir: Path, tmp_path: Path
) -> None:
    """A chat app's copy of a clip (smaller, recompressed, another container) arriving after
    it is a `video` match, and a policy that quarantines near copies moves it (the original
    has more pixels: it is the keeper)."""
    root = tmp_path / "videos"
    _place(clip_dir, root, "cut.mp4", "cut-wa.mov")
    config = _config(tmp_path, root, act=True)
    report = _scan(config)
    assert not report.failed
    (outcome,) = report.outcomes
    assert (outcome.decision.kind, outcome.decision.action, outcome.result) == (
        "video",
        "quarantine",
        "done",
    )
    assert outcome.decision.target is not None and outcome.decision.keeper is not None
    assert outcome.decision.target.relpath == "cut-wa.mov"
    assert outcome.decision.keeper.relpath == "cut.mp4"
    assert sorted(p.name for p in root.iterdir()) == ["cut.mp4"]
    assert [p.name for p in (tmp_path / "quarantine").rglob("*.mov")] == ["cut-wa.mov"]


def _take(dst: Path, tail: str) -> Path:
    """10 s: 7 s of a camera move over one photo, then 3 s over `tail`'s."""
    from PIL import Image

    size, fps = (192, 108), 10
    with Image.open(photos.photo("astronaut")) as im:
        shared = im.convert("RGB")
    with Image.open(photos.photo(tail)) as im:
        own = im.convert("RGB")
    out, stream = clips._writer(dst, size, fps, fps, 23, "libx264")
    for i in range(7 * fps):
        clips._encode(out, stream, clips._view(shared, i / (7 * fps - 1), size))
    for i in range(3 * fps):
        clips._encode(out, stream, clips._view(own, i / (3 * fps - 1), size))
    clips._finish(out, stream)
    return dst


def test_two_takes_that_share_their_first_seconds_are_reported_never_moved(
    tmp_path: Path,
) -> None:
    """The red team's vidprefix: two 10 s takes sharing their first 7 s are "the same video"
    (70% of each clip's frames match), and the later one was quarantined; a purge then
    deleted its last 3 s, which the clip kept lacks. A clip moves only when the clip kept
    holds (nearly) every frame of it; this pair is only reported, saying why."""
    root = tmp_path / "videos"
    root.mkdir()
    for i, (name, tail) in enumerate([("take1.mp4", "coffee"), ("take2.mp4", "chelsea")]):
        _take(root / name, tail)
        os.utime(root / name, ns=(1_600_000_000_000_000_000 + i * 10**9,) * 2)
    config = _config(tmp_path, root, act=True)
    report = _scan(config)
    assert not report.failed
    (outcome,) = report.outcomes
    assert (outcome.decision.kind, outcome.decision.action) == ("video", "report")
    assert outcome.decision.rule.startswith("not moved: ")
    assert "of its frames are in the clip kept" in outcome.decision.rule
    assert sorted(p.name for p in root.iterdir()) == ["take1.mp4", "take2.mp4"]


def test_a_clip_with_a_still_tail_is_longer_than_the_clip_kept_and_is_never_moved(
    tmp_path: Path,
) -> None:
    """The red team's e19: clip L, then its copy N with 6 s of a still scene after it. The
    tail's frames repeat one another (one is counted), so N's every counted frame but one was
    in L (95% and more), N moved, and a purge deleted its tail. A clip runs no longer than
    the clip kept, or it is only reported."""
    from PIL import Image

    root = tmp_path / "videos"
    size, fps = (192, 108), 10
    with Image.open(photos.photo("astronaut")) as im:
        moving = im.convert("RGB")
    with Image.open(photos.photo("coffee")) as im:
        still = im.convert("RGB").resize(size)
    for name, tail, crf in (("L.mp4", 0, 23), ("N.mp4", 6, 35)):  # N: a chat app's copy
        out, stream = clips._writer(root / name, size, fps, fps, crf, "libx264")
        for i in range(20 * fps):
            clips._encode(out, stream, clips._view(moving, i / (20 * fps - 1), size))
        for _ in range(tail * fps):
            clips._encode(out, stream, still)
        clips._finish(out, stream)
    os.utime(root / "L.mp4", ns=(1_600_000_000_000_000_000,) * 2)
    os.utime(root / "N.mp4", ns=(1_600_000_001_000_000_000,) * 2)
    report = _scan(_config(tmp_path, root, act=True))
    assert not report.failed
    (outcome,) = report.outcomes
    decision = outcome.decision
    assert decision.target is not None and decision.target.relpath == "N.mp4"
    assert (decision.kind, decision.action) == ("video", "report")
    assert "runs 26.0 s, the clip kept 20.0 s" in decision.rule
    assert sorted(p.name for p in root.iterdir()) == ["L.mp4", "N.mp4"]


@pytest.mark.slow  # ~4-8 s: run with the long suites (make test-slow)
def test_a_better_clip_arriving_later_moves_no_existing_clip_without_act_on_existing(
    clip_dir: Path, tmp_path: Path
) -> None:
    """When the newcomer is the better copy (the original arriving after a chat app's copy),
    a clip match is only reported: acting on a file already there takes `act_on_existing`,
    as for near photos."""
    root = tmp_path / "videos"
    _place(clip_dir, root, "cut-wa.mov", "cut.mp4")
    report = _scan(_config(tmp_path, root, act=True))
    (outcome,) = report.outcomes
    assert (outcome.decision.kind, outcome.decision.action) == ("video", "report")
    assert "act_on_existing" in outcome.decision.rule
    assert sorted(p.name for p in root.iterdir()) == ["cut-wa.mov", "cut.mp4"]


def test_a_clip_stored_sideways_with_a_display_matrix_is_hashed_as_shown(
    clip_dir: Path, tmp_path: Path
) -> None:
    """A phone stores a clip filmed turned as sideways frames plus a display matrix; a chat
    app's re-encode stores the frames as shown. Frames are turned as the matrix says before
    hashing, so the two match, and the record gives the size as shown."""
    root = tmp_path / "videos"
    _place(clip_dir, root, "cut.mp4", "cut-portrait.mp4")
    config = _config(tmp_path, root)
    report = _scan(config)
    assert [o.decision.kind for o in report.outcomes] == ["video"]
    with Store(config.database) as store:
        turned = store.file_at(root / "cut-portrait.mp4")
        assert turned is not None and (turned.width, turned.height) == (192, 108)


def test_letterbox_bars_are_trimmed_before_hashing(clip_dir: Path, tmp_path: Path) -> None:
    """A copy padded into another frame shape with black bars matches the clip."""
    root = tmp_path / "videos"
    _place(clip_dir, root, "cut.mp4", "cut-letterbox.mp4")
    report = _scan(_config(tmp_path, root))
    assert [o.decision.kind for o in report.outcomes] == ["video"]


def test_a_clip_inside_a_longer_one_is_contains_and_only_reported(
    clip_dir: Path, tmp_path: Path
) -> None:
    """A 6 s cut of a 10 s clip matches it as `contains` (the detail names the longer one as
    the container), and is only reported even under a quarantining policy: the cut may be
    the part someone chose to keep."""
    root = tmp_path / "videos"
    _place(clip_dir, root, "long.mp4", "cut.mp4")
    config = _config(tmp_path, root, act=True)
    report = _scan(config)
    (outcome,) = report.outcomes
    assert (outcome.decision.kind, outcome.decision.action) == ("contains", "report")
    assert "only reported" in outcome.decision.rule
    assert sorted(p.name for p in root.iterdir()) == ["cut.mp4", "long.mp4"]
    ((other, kind, detail),) = _matches(config, "cut.mp4")
    assert (other, kind) == ("long.mp4", "contains")
    assert detail is not None
    with Store(config.database) as store:
        long = store.file_at(root / "long.mp4")
        assert long is not None and detail["container"] == long.id
    assert detail["matched"] == detail["frames"]  # every frame of the cut is in the long clip
    assert isinstance(detail["other_matched"], int) and isinstance(detail["other_frames"], int)
    assert detail["other_matched"] < detail["other_frames"]


def test_unrelated_clips_are_not_matched(clip_dir: Path, tmp_path: Path) -> None:
    """Clips of other scenes (another photo; a clip that opens on black) share no frames:
    no match, no group. The black lead-in is skipped, not matched to anything."""
    root = tmp_path / "videos"
    _place(clip_dir, root, "cut.mp4", "other.mp4", "dark.mp4")
    config = _config(tmp_path, root, act=True)
    report = _scan(config)
    assert (report.hashed, report.outcomes, report.groups) == (3, [], [])
    assert _matches(config, "other.mp4") == [] and _matches(config, "dark.mp4") == []


def test_a_corrupt_or_truncated_video_is_a_recorded_error_and_the_scan_goes_on(
    clip_dir: Path, tmp_path: Path
) -> None:
    """A clip cut off mid-transfer and a file of noise named .mp4 are recorded errors with a
    kind, like bad photos; the scan still matches the good clips around them."""
    root = tmp_path / "videos"
    _place(clip_dir, root, "cut.mp4", "cut-wa.mov")
    data = (clip_dir / "long.mp4").read_bytes()
    (root / "broken.mp4").write_bytes(data[: len(data) // 2])
    # Seeded: FFmpeg's probe, limited to the demuxers dedupd reads, refuses about one random
    # file in 20 as another format (`not_an_image`) and finds none in the rest (`corrupt`).
    (root / "noise.mkv").write_bytes(random.Random(0).randbytes(20_000))
    (root / "empty.mov").write_bytes(b"")
    config = _config(tmp_path, root)
    report = _scan(config)
    failed = {os.path.basename(path): f.kind for path, f in report.failed}
    assert failed == {"broken.mp4": "corrupt", "noise.mkv": "corrupt", "empty.mov": "empty"}
    assert [(o.decision.kind, o.decision.action) for o in report.outcomes] == [("video", "report")]
    with Store(config.database) as store:
        broken = store.file_at(root / "broken.mp4")
        assert broken is not None and broken.state == "error" and broken.error_kind == "corrupt"


def test_a_clip_cut_short_after_its_header_is_truncated(clip_dir: Path, tmp_path: Path) -> None:
    """A clip whose header (written first) announces more than its data holds (a copy still
    being written, a broken transfer) is `truncated`, not a shorter clip."""
    src = clip_dir / "faststart.mp4"
    if not src.exists():
        import av

        with (
            av.open(str(clip_dir / "long.mp4")) as inp,
            av.open(str(src), "w", options={"movflags": "faststart"}) as out,
        ):
            stream = out.add_stream_from_template(inp.streams.video[0])
            for packet in inp.demux(inp.streams.video[0]):
                if packet.dts is not None:
                    packet.stream = stream
                    out.mux(packet)
    data = src.read_bytes()
    cut = tmp_path / "cut-short.mp4"
    cut.write_bytes(data[: len(data) // 2])
    result = hash_file(str(cut), None, (HASHER,), 10**8)  # type: ignore[arg-type]
    assert isinstance(result, Failure) and result.kind == "truncated", result


@pytest.mark.parametrize(
    "content",
    [
        b"ffconcat version 1.0\nfile elsewhere/clip.mp4\n",  # FFmpeg's concat demuxer
        b"",  # a still image named like a clip (a JPEG here): FFmpeg's jpeg_pipe demuxer
    ],
    ids=["concat-playlist", "jpeg"],
)
def test_only_video_containers_are_parsed_and_no_other_file_is_read(
    content: bytes, clip_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FFmpeg picks a demuxer by a file's bytes, whatever its name: a playlist named .mp4 made
    the worker decode another file (relative to its working folder, as a symlink would) and
    record that file's frames as the upload's. Only QuickTime/MP4, Matroska/WebM and AVI are
    read; anything else is `not_an_image`, as an image format not allowed is."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "elsewhere").mkdir()
    shutil.copy(clip_dir / "other.mp4", tmp_path / "elsewhere" / "clip.mp4")
    upload = tmp_path / "upload.mp4"
    if content:
        upload.write_bytes(content)
    else:
        photos.copy(photos.photo("coffee"), upload)
    result = hash_file(str(upload), None, (HASHER,), 10**8)  # type: ignore[arg-type]
    assert isinstance(result, Failure) and result.kind == "not_an_image", result


def test_rescanning_decodes_no_unchanged_clip_again(
    clip_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A clip has no photo hash, only frames: a second scan must still count it unchanged
    (not lacking a hash) and hand nothing to the workers."""
    root = tmp_path / "videos"
    _place(clip_dir, root, "cut.mp4", "cut.gif")
    config = _config(tmp_path, root)
    assert _scan(config).hashed == 2
    seen: list[str] = []
    real = HasherPool.submit

    def spy(self: HasherPool, entry: Entry) -> None:
        seen.append(entry.path)
        real(self, entry)

    monkeypatch.setattr(HasherPool, "submit", spy)
    report = _scan(config)
    assert (report.hashed, report.unchanged, seen) == (0, 2, [])


def test_an_animated_gif_is_hashed_as_a_video_and_a_still_gif_as_a_photo(
    clip_dir: Path, tmp_path: Path
) -> None:
    """An animated GIF's frames are sampled like a clip's (it matches the clip it was made
    from); a one-frame GIF stays a photo with a photo hash."""
    root = tmp_path / "mixed"
    _place(clip_dir, root, "cut.mp4", "cut.gif")
    photos.reencode(photos.photo("rocket"), root / "rocket.jpg")
    from PIL import Image

    with Image.open(root / "rocket.jpg") as im:
        im.convert("P").save(root / "still.gif")
    config = _config(tmp_path, root)
    report = _scan(config)
    assert not report.failed
    key = video_key(HASHER, config.hashing.video_fps)
    with Store(config.database) as store:
        gif, still = store.file_at(root / "cut.gif"), store.file_at(root / "still.gif")
        assert gif is not None and still is not None
        clip = store.video_frames(gif.id, key)
        assert clip is not None and len(clip.frames) >= 3
        assert gif.duration is not None and 5 <= gif.duration <= 7
        assert store.hash_of(gif.id, HASHER.key) is None
        assert store.video_frames(still.id, key) is None
        assert store.hash_of(still.id, HASHER.key) is not None and still.duration is None
    assert [(m[0], m[1]) for m in _matches(config, "cut.gif")] == [("cut.mp4", "video")]


def test_search_by_a_still_finds_the_clip_and_by_a_clip_finds_its_copies(
    clip_dir: Path, tmp_path: Path
) -> None:
    """`dedupctl search` with a frame grabbed from a clip lists the clip (a frame of it, and
    when); with a clip, the clips that match it; `show` lists a clip's matches."""
    root = tmp_path / "videos"
    _place(clip_dir, root, "long.mp4", "cut-wa.mov", "other.mp4")
    config = _config(tmp_path, root)
    _scan(config)
    at, frame = clips.frames(clip_dir / "cut.mp4")[30]  # 3 s into the cut: 5 s into long
    still = tmp_path / "grab.jpg"
    frame.save(still, quality=90)
    cfg = tmp_path / "dedupd.yaml"
    cfg.write_text(f"database: {config.database}\nroots: [{{path: {root}}}]\n")
    assert load_config(cfg).hashing.video_fps == 1.0
    runner = CliRunner()
    found = runner.invoke(dedupctl, ["--config", str(cfg), "search", str(still), "--json"])
    assert found.exit_code == 0, found.output
    import json

    results = json.loads(found.stdout)["results"]
    kinds = {os.path.basename(r["path"]): r["kind"] for r in results}
    assert kinds == {"long.mp4": "frame", "cut-wa.mov": "frame"}
    long = next(r for r in results if r["path"].endswith("long.mp4"))
    assert any(abs(t - (at + 2)) <= 1.0 for t in long["at"])
    by_clip = runner.invoke(
        dedupctl, ["--config", str(cfg), "search", str(clip_dir / "cut.mp4"), "--json"]
    )
    assert by_clip.exit_code == 0, by_clip.output
    answer = sorted(
        (os.path.basename(r["path"]), r["kind"]) for r in json.loads(by_clip.stdout)["results"]
    )
    assert answer == [("cut-wa.mov", "video"), ("long.mp4", "contains")]
    shown = runner.invoke(dedupctl, ["--config", str(cfg), "show", str(root / "cut-wa.mov")])
    assert shown.exit_code == 0, shown.output
    assert "long.mp4  inside that clip" in shown.output
    assert "duration  6 s" in shown.output


def test_clip_votes_need_enough_distinct_frames_on_both_sides() -> None:
    """The same clip when most frames of each match; one inside the other when the shorter
    one's frames are (nearly) all in the longer one; a few shared frames are no match."""
    same = ClipVotes(frozenset(range(8)), frozenset(range(7)), 10)
    assert same.kind(10, 10) == "video"
    cut = ClipVotes(frozenset(range(6)), frozenset(range(2, 8)), 10)
    assert cut.kind(6, 20) == "inside"
    holds = ClipVotes(frozenset(range(2, 8)), frozenset(range(6)), 10)
    assert holds.kind(20, 6) == "contains"
    few = ClipVotes(frozenset({1, 2}), frozenset({4, 5}), 10)
    assert few.kind(10, 10) is None
    one = ClipVotes(frozenset({0}), frozenset({0}), 4)
    assert one.kind(1, 10) is None  # one frame of a clip of ten: no more than a look-alike
    assert one.kind(1, 1) == "video"


def test_video_fps_is_validated(tmp_path: Path) -> None:
    """`hashing.video_fps` takes a rate in (0, 30]; anything else names the key."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text("hashing: {video_fps: 2.5}\n")
    assert load_config(cfg).hashing.video_fps == 2.5
    for bad in ("0", "-1", "31", "fast", "true"):
        cfg.write_text(f"hashing: {{video_fps: {bad}}}\n")
        with pytest.raises(ConfigError, match=r"hashing\.video_fps"):
            load_config(cfg)


def test_a_dry_run_previews_a_clip_move_and_the_next_real_run_makes_it(
    clip_dir: Path, tmp_path: Path
) -> None:
    """A dry run decides on a clip without moving it; the next run (real) decides that clip
    again from its stored frames and quarantines it: a dry run consumes no decision."""
    root = tmp_path / "videos"
    _place(clip_dir, root, "cut.mp4", "cut-wa.mov")
    config = _config(tmp_path, root, act=True)
    first = _scan(replace(config, dry_run=True))
    assert [(o.decision.kind, o.result) for o in first.outcomes] == [("video", "dry run")]
    assert sorted(p.name for p in root.iterdir()) == ["cut-wa.mov", "cut.mp4"]
    second = _scan(config)
    assert second.hashed == 0  # decided again from the database, not decoded again
    assert [(o.decision.kind, o.result) for o in second.outcomes] == [("video", "done")]
    assert sorted(p.name for p in root.iterdir()) == ["cut.mp4"]


def test_the_daemon_quarantines_a_clip_copy_and_records_a_broken_clip(
    clip_dir: Path, tmp_path: Path
) -> None:
    """The daemon hashes clips that arrive in its workers: a broken one is a recorded error,
    and a copy arriving after it is still matched and quarantined by the camera policy."""
    from tests.test_daemon import Env, _idle, running, wait_for

    env = Env(tmp_path)
    env.write_config()
    shutil.copyfile(clip_dir / "cut.mp4", env.root / "cut.mp4")
    with running(env) as daemon:
        wait_for(lambda: env.state(env.root / "cut.mp4") == "ok", what="the clip")
        data = (clip_dir / "long.mp4").read_bytes()
        (env.root / "broken.mov").write_bytes(data[: len(data) // 3])
        wait_for(lambda: env.state(env.root / "broken.mov") == "error", what="the broken one")
        shutil.copyfile(clip_dir / "cut-wa.mov", env.root / "cut-wa.mov")
        wait_for(lambda: not (env.root / "cut-wa.mov").exists(), what="the copy to move")
        wait_for(lambda: _idle(daemon))
        assert daemon.stats.acted == 1
    assert [p.name for p in env.quarantine.rglob("*.mov")] == ["cut-wa.mov"]
    assert env.state(env.root / "cut.mp4") == "ok"


@pytest.mark.parametrize(
    ("moving", "kept", "moves"),
    [(20.0, 20.0, True), (21.5, 20.0, True), (22.0, 20.0, False), (None, 20.0, False)],
)
def test_a_clip_moves_only_when_it_runs_no_longer_than_the_clip_kept(
    moving: float | None, kept: float, moves: bool
) -> None:
    """Every frame of it in the clip kept is not enough: it must not run longer than that
    clip (by 5% and 0.5 s at most), and a clip whose length is unknown (recorded by an older
    dedupd) is only reported."""
    from collections.abc import Mapping

    from dedupd.engine import _keeper_holds_the_clip
    from dedupd.policy import Decision
    from dedupd.store import MatchKind
    from tests.test_policy import record

    target = replace(record("N.mp4"), duration=moving)
    keeper = replace(record("L.mp4"), duration=kept)
    decision = Decision("quarantine", "keep: test", target, keeper, 0, "video")
    kind: MatchKind = "video"
    found: dict[int, tuple[int, MatchKind, Mapping[str, object] | None]] = {
        keeper.id: (0, kind, {"matched": 20, "frames": 20})
    }
    judged = _keeper_holds_the_clip(decision, target.id, found)
    assert (judged.action == "quarantine") == moves
    if not moves:
        assert judged.rule.startswith("not moved: ")
