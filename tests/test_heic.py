"""The HEIC fast path: a HEIC is hashed from its embedded thumbnail when that is a scaled copy
of the image, the store says so, and no file moves on such a hash before a full decode
confirms the match (a thumbnail that shows another picture moves nothing)."""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pillow_heif
import pillow_heif.misc
import pytest
from PIL import Image

from dedupd.actions import Actions
from dedupd.config import DEFAULT_POLICY, Config, HashingConfig, Policy, QuarantineConfig
from dedupd.engine import scan
from dedupd.hashers import Hasher, second_opinion
from dedupd.imaging import hash_image
from dedupd.index import distance
from dedupd.store import Store
from tests import photos
from tests.workers import work_through

pillow_heif.register_heif_opener()

SIZE = (960, 720)
CONFIG = Config()
HASHER = Hasher(CONFIG.hashing.algorithm, CONFIG.hashing.hash_size)
HASHERS = (HASHER, second_opinion(HASHER))


def _picture(name: str) -> Image.Image:
    with Image.open(photos.photo(name)) as im:
        return im.convert("RGB").resize(SIZE, Image.Resampling.LANCZOS)


@contextmanager
def _thumbnail_shows(picture: Image.Image) -> Iterator[None]:
    """Make pillow-heif encode the thumbnail of the next grid-encoded image from `picture`
    instead of the image itself (a file whose thumbnail lies: an editor that saved new
    pixels and kept the old thumbnail)."""
    add_planes = pillow_heif.misc._add_planes

    def lying(
        im_out: object,
        size: tuple[int, int],
        mode: str,
        data: object,
        stride: int,
        bit_depth_out: int,
    ) -> None:
        if size == picture.size:  # the full-size pixels the thumbnail is scaled from
            data = picture.tobytes()
        add_planes(im_out, size, mode, data, stride, bit_depth_out)

    pillow_heif.misc._add_planes = lying
    try:
        yield
    finally:
        pillow_heif.misc._add_planes = add_planes


def write_heic(
    dst: Path,
    picture: Image.Image,
    *,
    thumbnail: bool = True,
    thumbnail_of: Image.Image | None = None,
) -> Path:
    """A HEIC of `picture` with a 320x240 thumbnail (an iPhone's size), or none; with
    `thumbnail_of`, the thumbnail shows that picture instead."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    kw: dict[str, object] = {"thumbnails": [320]} if thumbnail else {}
    if thumbnail_of is None:
        picture.save(dst, format="HEIF", quality=85, **kw)
        return dst
    with _thumbnail_shows(thumbnail_of):
        picture.save(dst, format="HEIF", quality=85, tile_size=512, **kw)
    return dst


def _with_other_aspect(heic: Path) -> Path:
    """The thumbnail's declared size (its `ispe`) made square: not a scaled copy."""
    data = heic.read_bytes()
    ispe = b"ispe" + bytes(4) + struct.pack(">II", 320, 240)
    at = data.index(ispe)
    heic.write_bytes(data[: at + 12] + struct.pack(">I", 320) + data[at + 16 :])
    return heic


def test_a_heic_is_hashed_from_its_thumbnail_when_it_is_a_scaled_copy(tmp_path: Path) -> None:
    heic = write_heic(tmp_path / "IMG_1.HEIC", _picture("rocket"))
    fast = hash_image(str(heic), HASHERS, max_pixels=10**9)
    full = hash_image(str(heic), HASHERS, max_pixels=10**9, thumbnails=False)
    assert fast.thumbnail and not full.thumbnail
    assert (fast.width, fast.height) == (full.width, full.height) == SIZE
    assert fast.sha256 == full.sha256
    bits = distance(fast.hashes[HASHER.key], full.hashes[HASHER.key])
    assert bits <= HASHER.radius(HASHER.default_threshold) // 2, bits


def test_a_thumbnail_of_another_aspect_ratio_is_refused(tmp_path: Path) -> None:
    heic = _with_other_aspect(write_heic(tmp_path / "IMG_1.HEIC", _picture("rocket")))
    fast = hash_image(str(heic), HASHERS, max_pixels=10**9)
    full = hash_image(str(heic), HASHERS, max_pixels=10**9, thumbnails=False)
    assert not fast.thumbnail
    assert fast.hashes == full.hashes


def test_a_heic_without_a_thumbnail_is_decoded_in_full(tmp_path: Path) -> None:
    heic = write_heic(tmp_path / "IMG_1.HEIC", _picture("rocket"), thumbnail=False)
    assert not hash_image(str(heic), HASHERS, max_pixels=10**9).thumbnail


def _config(tmp_path: Path, root: Path) -> Config:
    return replace(
        Config(),
        database=tmp_path / "d.db",
        hashing=HashingConfig(workers=1),
        quarantine=QuarantineConfig(path=tmp_path / "q"),
        policies={
            DEFAULT_POLICY: Policy(exact="quarantine", near="quarantine", keep=("oldest",))
        },
    ).with_roots([root])


def _older(path: Path) -> Path:
    os.utime(path, (1e9, 1e9))  # arrived first: the keeper
    return path


@pytest.mark.slow
def test_a_move_on_a_thumbnail_hash_waits_for_a_full_decode(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    root.mkdir()
    _picture("rocket").save(root / "rocket.jpg", quality=95)  # same pixels, more bytes
    _older(root / "rocket.jpg")
    heic = write_heic(root / "IMG_1.HEIC", _picture("rocket"))
    config = _config(tmp_path, root)
    with Store(config.database) as store:
        report = scan(config, store, actions=Actions(store, tmp_path / "q"))
        # what the held decision came to (after the full decode, and the pixel comparison)
        assert [o.result for o in report.outcomes] == ["done"]
        assert not heic.exists()
        record = store.file_at(heic.resolve())
        assert record is not None and record.state == "quarantined"
        assert store.from_thumbnail([record.id]) == set()  # its hashes are a full decode's


def test_a_thumbnail_that_lies_moves_nothing(tmp_path: Path) -> None:
    """The thumbnail shows the keeper's picture, the image another: the thumbnail's hash
    matches, the full decode does not, and the file stays."""
    root = tmp_path / "photos"
    root.mkdir()
    _picture("coffee").save(root / "coffee.jpg", quality=95)
    _older(root / "coffee.jpg")
    heic = write_heic(root / "IMG_2.HEIC", _picture("rocket"), thumbnail_of=_picture("coffee"))
    config = _config(tmp_path, root)
    with Store(config.database) as store:
        report = scan(config, store, actions=Actions(store, tmp_path / "q"))
        assert report.outcomes == []  # held, then no match: nothing acted or reported
        assert heic.exists()
        record = store.file_at(heic.resolve())
        assert record is not None and record.state == "ok"
        assert store.from_thumbnail([record.id]) == set()


@pytest.mark.slow
def test_a_crop_that_only_a_lying_thumbnail_shows_moves_nothing(tmp_path: Path) -> None:
    """The thumbnail shows a crop of the keeper, the image another picture: the crop found on
    the thumbnail's features waits for the full decode, whose features (stored for the same
    bytes) find no crop, and the file stays. The crop stage keeps the features it parsed: the
    thumbnail's must not stand in for the full decode's."""
    root = tmp_path / "photos"
    root.mkdir()
    with Image.open(photos.photo("coffee")) as im:
        big = im.convert("RGB").resize((1600, 1200), Image.Resampling.LANCZOS)
    big.save(root / "coffee.jpg", quality=95)
    _older(root / "coffee.jpg")
    crop = big.crop((160, 120, 1440, 1080)).resize((960, 720), Image.Resampling.LANCZOS)
    heic = write_heic(root / "IMG_3.HEIC", _picture("rocket"), thumbnail_of=crop)
    config = replace(
        _config(tmp_path, root),
        policies={
            DEFAULT_POLICY: Policy(
                exact="report", near="report", crop="quarantine", keep=("oldest",)
            )
        },
    )
    with Store(config.database) as store:
        report = scan(config, store, actions=Actions(store, tmp_path / "q"))
        assert report.outcomes == []  # held, then no crop: nothing acted or reported
        assert heic.exists()


@pytest.mark.parametrize("thumbnail", [True, False])
@pytest.mark.slow
def test_the_store_records_whether_a_hash_came_from_a_thumbnail(
    tmp_path: Path, thumbnail: bool
) -> None:
    root = tmp_path / "photos"
    heic = write_heic(root / "IMG_3.HEIC", _picture("hubble"), thumbnail=thumbnail)
    config = _config(tmp_path, root)
    with Store(config.database) as store:
        scan(config, store)
        record = store.file_at(heic.resolve())
        assert record is not None
        assert store.from_thumbnail([record.id]) == ({record.id} if thumbnail else set())


def test_an_exact_copy_of_a_thumbnail_hashed_heic_is_not_held(tmp_path: Path) -> None:
    """The same bytes: the thumbnail's hash decides nothing, so nothing waits for a decode."""
    root = tmp_path / "photos"
    heic = _older(write_heic(root / "IMG_4.HEIC", _picture("chelsea")))
    copy = photos.copy(heic, root / "IMG_4 (1).HEIC")
    config = _config(tmp_path, root)
    with Store(config.database) as store:
        report = scan(config, store, actions=Actions(store, tmp_path / "q"))
        assert [o.result for o in report.outcomes] == ["done"]
    assert heic.exists() and not copy.exists()


@pytest.mark.slow
def test_the_daemon_confirms_a_thumbnail_match_before_it_moves_the_upload(
    tmp_path: Path,
) -> None:
    """Through the daemon's pipeline: the held upload is hashed again in full by the pool,
    then quarantined; the one whose thumbnail lies stays."""
    from tests.test_daemon import Env, _idle, running, wait_for

    env = Env(tmp_path)
    env.write_config("{exact: quarantine, near: quarantine, keep: [oldest]}")
    for name in ("rocket", "coffee"):
        _picture(name).save(env.root / f"{name}.jpg", quality=95)
        _older(env.root / f"{name}.jpg")
    honest = write_heic(tmp_path / "IMG_5.HEIC", _picture("rocket"))
    liar = write_heic(tmp_path / "IMG_6.HEIC", _picture("chelsea"), thumbnail_of=_picture("coffee"))
    with running(env) as daemon:
        wait_for(lambda: daemon.stats.hashed == 2 and _idle(daemon), what="the keepers")
        os.rename(honest, env.root / honest.name)
        os.rename(liar, env.root / liar.name)
        wait_for(
            lambda: env.state(env.root / honest.name) == "quarantined" and _idle(daemon),
            timeout=60,
            what="the honest HEIC quarantined after its full decode",
        )
    assert (env.root / liar.name).exists()
    assert env.state(env.root / liar.name) == "ok"


def test_a_report_on_a_thumbnail_match_is_confirmed_by_a_full_decode_too(tmp_path: Path) -> None:
    """Whether a match moves or is only reported (the second opinion, low detail) is decided
    on a full decode's hashes as well, so that the fast path decides as the full decode."""
    root = tmp_path / "photos"
    root.mkdir()
    _picture("rocket").save(root / "rocket.jpg", quality=95)
    _older(root / "rocket.jpg")
    heic = write_heic(root / "IMG_7.HEIC", _picture("rocket"))
    config = replace(_config(tmp_path, root), policies={DEFAULT_POLICY: Policy(near="report")})
    with Store(config.database) as store:
        report = scan(config, store, actions=Actions(store, tmp_path / "q"))
        # the held decision replaced by what the full decode decided
        assert [o.result for o in report.outcomes] == ["reported"]
        record = store.file_at(heic.resolve())
        assert record is not None and store.from_thumbnail([record.id]) == set()


@pytest.mark.slow
def test_a_held_upload_is_decided_after_its_full_decode_when_another_hold_involves_it(
    tmp_path: Path,
) -> None:
    """B (a thumbnail-hashed HEIC) is held: its own decision waits for its full decode.
    Before that comes back, C's held decision names B as its keeper, which queues B's full
    decode too, as "another file of a held match" (stored, not decided). That must not
    cancel B's own decision: before, B's full decode was only stored, and B, a duplicate,
    stayed undecided for good (its note a report; its stat, marked stale, written back)."""
    from dedupd.engine import Ingest
    from dedupd.imaging import FileStat
    from dedupd.policy import Decision
    from dedupd.scanner import Entry

    root = (tmp_path / "photos").resolve()
    root.mkdir()
    _picture("rocket").save(root / "K.jpg", quality=95)
    _older(root / "K.jpg")
    b = write_heic(root / "B.HEIC", _picture("rocket"))
    c = write_heic(root / "C.HEIC", _picture("rocket").resize((900, 675)))
    config = _config(tmp_path, root)

    def entry(path: Path, full: bool = False) -> Entry:
        return Entry(str(root), path.name, FileStat.of(os.stat(path)), full_decode=full)

    def hashed(path: Path, full: bool = False) -> Any:
        return hash_image(str(path), HASHERS, max_pixels=10**9, thumbnails=not full)

    with Store(config.database) as store:
        for path in (root / "K.jpg", b, c):  # stored, then indexed by the Ingest
            store.record_hashed(str(root), path.name, hashed(path))
        ingest = Ingest(store, config, [str(root)], Actions(store, tmp_path / "q"))
        try:
            k_rec, b_rec, c_rec = (store.file_at(p) for p in (root / "K.jpg", b, c))
            assert k_rec and b_rec and c_rec
            own = Decision("quarantine", "near", target=b_rec, keeper=k_rec, kind="near")
            assert ingest._hold_for_full_decode(b_rec, own) is not None
            other = Decision("quarantine", "near", target=c_rec, keeper=b_rec, kind="near")
            assert ingest._hold_for_full_decode(c_rec, other) is not None
            queued = [(e.relpath, e.full_decode) for e in ingest.confirm]
            assert sorted(queued) == [("B.HEIC", True), ("C.HEIC", True)]  # B once
            outcome = ingest.ingest(entry(b, full=True), hashed(b, full=True))
            assert outcome is not None and outcome.decision.action == "quarantine"
            assert outcome.decision.target is not None
            assert outcome.decision.target.relpath == "B.HEIC"
        finally:
            ingest.close()


def _held(tmp_path: Path) -> tuple[Path, Path, Config]:
    """K (a JPEG, older) and B (a thumbnail-hashed HEIC of the same picture), K stored."""
    root = (tmp_path / "photos").resolve()
    root.mkdir()
    _picture("rocket").save(root / "K.jpg", quality=95)
    _older(root / "K.jpg")
    b = write_heic(root / "B.HEIC", _picture("rocket"))
    return root, b, _config(tmp_path, root)


def test_a_held_upload_whose_full_decode_returns_after_a_reload_is_decided(
    tmp_path: Path,
) -> None:
    """A reload builds a new Ingest (no confirmation waiting) but keeps the pool: B's full
    decode still in flight comes back to the new one, which must decide B (not only store
    it, as "another file of a held match": B, a duplicate, was then left undecided, its
    stale mark overwritten by its real stat). (Review finding.)"""
    from dedupd.engine import Ingest
    from dedupd.imaging import FileStat
    from dedupd.scanner import Entry

    root, b, config = _held(tmp_path)
    entry = Entry(str(root), b.name, FileStat.of(os.stat(b)))
    with Store(config.database) as store:
        store.record_hashed(
            str(root), "K.jpg", hash_image(str(root / "K.jpg"), HASHERS, max_pixels=10**9)
        )
        actions = Actions(store, tmp_path / "q")
        ingest = Ingest(store, config, [str(root)], actions)
        first = ingest.ingest(entry, hash_image(str(b), HASHERS, max_pixels=10**9))
        assert first is not None and first.result.startswith("held")
        ingest.close()
        reloaded = Ingest(store, config, [str(root)], actions)  # Daemon._configure
        try:
            full = hash_image(str(b), HASHERS, max_pixels=10**9, thumbnails=False)
            outcome = reloaded.ingest(replace(entry, full_decode=True), full)
            # decided, then held again only for its pixel comparison
            assert outcome is not None and outcome.result.startswith("held: its pixels")
            (compared,) = work_through(reloaded, HASHERS)
            assert compared is not None and compared.result == "done"
        finally:
            reloaded.close()
    assert not b.exists()


def test_a_held_upload_whose_full_decode_failed_is_held_again_when_it_changes(
    tmp_path: Path,
) -> None:
    """B is held, and its full decode comes back a failure (B changed or vanished while
    queued): no confirmation waits for it any more, so B's next version, held again, is
    queued for its own full decode. Before, the confirmation stayed "pending" and nothing
    was queued: B was never decided in that run. (Review finding.)"""
    from dedupd.engine import Ingest
    from dedupd.imaging import FileStat
    from dedupd.pool import Failure
    from dedupd.scanner import Entry

    root, b, config = _held(tmp_path)
    with Store(config.database) as store:
        store.record_hashed(
            str(root), "K.jpg", hash_image(str(root / "K.jpg"), HASHERS, max_pixels=10**9)
        )
        ingest = Ingest(store, config, [str(root)], Actions(store, tmp_path / "q"))
        try:
            thumb = hash_image(str(b), HASHERS, max_pixels=10**9)
            entry = Entry(str(root), b.name, FileStat.of(os.stat(b)))
            first = ingest.ingest(entry, thumb)
            assert first is not None and first.result.startswith("held")
            (queued,) = ingest.confirm
            ingest.confirm.clear()  # fed to the pool, whence it comes back a failure
            ingest.ingest(queued, Failure("truncated", "the file changed while it was read"))
            os.utime(b, (2e9, 2e9))  # B's next version
            entry = Entry(str(root), b.name, FileStat.of(os.stat(b)))
            second = ingest.ingest(entry, thumb)
            assert second is not None and second.result.startswith("held")
            assert [(e.relpath, e.full_decode) for e in ingest.confirm] == [("B.HEIC", True)]
        finally:
            ingest.close()
