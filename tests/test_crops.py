"""The crop stage end to end: a photo cut down in an editor, or the original a crop came from,
is linked to it as a `crop` match in scan groups, `dedupctl show` and the decision log; the
larger frame is kept; bursts and near copies never become crops."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from structlog.testing import capture_logs

from dedupd.config import load_config
from dedupd.engine import CROP_MIN_AGREEING, scan
from dedupd.store import Store
from tests import photos
from tests.test_decisions import Lib

SIZE = (1600, 1200)
BOX = (0.3, 0.2, 0.9, 0.9)  # keeps 0.6 x 0.7 = 42% of the frame, off-centre


def _original(name: str, dst: Path, mtime: int) -> Path:
    photos.upscaled(photos.photo(name), dst, size=SIZE)
    os.utime(dst, (mtime, mtime))
    return dst


def _cut(src: Path, dst: Path, box: tuple[float, float, float, float], mtime: int) -> Path:
    with Image.open(src) as im:
        w, h = im.size
        cut = im.convert("RGB").crop(
            (round(box[0] * w), round(box[1] * h), round(box[2] * w), round(box[3] * h))
        )
    dst.parent.mkdir(parents=True, exist_ok=True)
    cut.save(dst, format="JPEG", quality=90)
    os.utime(dst, (mtime, mtime))
    return dst


@pytest.fixture
def lib(tmp_path: Path) -> Lib:
    lib = Lib(tmp_path)
    lib.write_config("{exact: report, near: report}")
    for i, name in enumerate(photos.PHOTOS):
        _original(name, lib.root / f"{name}.jpg", 1_700_000_000 + i)
    return lib


def _groups(report: dict[str, Any]) -> list[tuple[str, list[tuple[str, str]]]]:
    return [
        (
            Path(g["keeper"]["path"]).name,
            [(Path(d["path"]).name, d["kind"]) for d in g["duplicates"]],
        )
        for g in report["groups"]
    ]


def test_a_crop_is_grouped_with_its_original_and_reported(lib: Lib) -> None:
    crop = _cut(
        lib.root / "chelsea.jpg", lib.root / "edit" / "chelsea-crop.jpg", BOX, 1_800_000_000
    )
    report = lib.scan()
    assert _groups(report) == [("chelsea.jpg", [("chelsea-crop.jpg", "crop")])]
    assert report["actions"] == []  # crop: report, the default
    (member,) = report["groups"][0]["duplicates"]
    detail = member["detail"]
    assert detail["crop"] == member["id"]
    assert detail["kept"] == pytest.approx(0.42, abs=0.03)
    assert detail["box"] == pytest.approx(list(BOX), abs=0.02)
    shown = lib.ctl("show", str(crop))
    assert shown.exit_code == 0, shown.output
    assert f"# {lib.root / 'chelsea.jpg'}  crop: this file keeps 42% of it" in shown.output
    shown = lib.ctl("show", str(lib.root / "chelsea.jpg"))
    assert f"# {crop}  crop: keeps 42% of this file" in shown.output
    groups = lib.ctl("show")
    assert (
        f"# {crop}  960x840" in groups.output and "crop: keeps 42% of the keeper" in groups.output
    )


def test_the_decision_log_line_names_the_crop_and_its_kept_area(lib: Lib) -> None:
    _cut(lib.root / "rocket.jpg", lib.root / "rocket-crop.jpg", (0.0, 0.0, 0.8, 0.8), 1_800_000_000)
    config = load_config(lib.config)
    with Store(lib.db) as store, capture_logs() as logs:
        scan(config, store)
    (line,) = [e for e in logs if e["event"] == "decision"]
    assert (line["kind"], line["action"], Path(line["target"]).name) == (
        "crop",
        "report",
        "rocket-crop.jpg",
    )
    assert Path(line["keeper"]).name == "rocket.jpg"
    assert line["crop"]["kept"] == pytest.approx(0.64, abs=0.03)


def test_crop_quarantine_moves_the_crop_and_keeps_the_larger_frame(lib: Lib) -> None:
    lib.write_config("{exact: report, near: report, crop: quarantine}")
    _cut(lib.root / "coffee.jpg", lib.root / "coffee-crop.jpg", (0.1, 0.1, 0.9, 0.9), 1_800_000_000)
    report = lib.scan()
    assert [(a["action"], Path(a["target"]).name, a["result"]) for a in report["actions"]] == [
        ("quarantine", "coffee-crop.jpg", "done")
    ]
    assert not (lib.root / "coffee-crop.jpg").exists()
    assert (lib.state("coffee-crop.jpg"), lib.state("coffee.jpg")) == ("quarantined", "ok")
    listed = lib.ctl("quarantine", "list")
    assert (
        f"keeper {lib.root / 'coffee.jpg'}  crop of it, 36% of its frame cut away" in listed.output
    )


@pytest.mark.parametrize("edit", ["sticker", "greyscale"])
def test_a_crop_with_an_edit_of_its_own_is_reported_never_moved(lib: Lib, edit: str) -> None:
    """The red team's e20: a crop with a sticker or a caption on it, or turned black and
    white, was quarantined as "a crop of" its frame and purged: the edit was lost. A crop is
    compared, pixel by pixel, with the part of the frame it shows before it moves."""
    from PIL import ImageDraw, ImageOps

    lib.write_config("{exact: report, near: report, crop: quarantine}")
    box = (0.1, 0.1, 0.9, 0.9)
    crop = _cut(lib.root / "coffee.jpg", lib.root / "coffee-crop.jpg", box, 1_800_000_000)
    with Image.open(crop) as im:
        edited = im.convert("RGB")
    if edit == "sticker":
        ImageDraw.Draw(edited).rectangle((20, 20, 140, 70), fill=(255, 220, 0))
    else:
        edited = ImageOps.grayscale(edited).convert("RGB")
    edited.save(crop, format="JPEG", quality=90)
    os.utime(crop, (1_800_000_000, 1_800_000_000))
    report = lib.scan()
    assert report["actions"] == []
    assert _groups(report) == [("coffee.jpg", [("coffee-crop.jpg", "crop")])]
    assert (lib.state("coffee-crop.jpg"), lib.state("coffee.jpg")) == ("ok", "ok")


def test_the_original_arriving_after_its_crop_is_linked_and_the_crop_stays(lib: Lib) -> None:
    """The uncropped photo arriving later: the crop already there is a crop of the newcomer.
    Acting on an existing file needs act_on_existing, so it is only reported."""
    lib.write_config("{exact: report, near: report, crop: quarantine}")
    original = lib.root / "astronaut.jpg"
    _cut(original, lib.root / "old" / "astronaut-crop.jpg", (0.2, 0.0, 0.8, 1.0), 1_600_000_000)
    os.utime(original, (1_800_000_000, 1_800_000_000))  # hashed last: the newcomer
    report = lib.scan()
    assert _groups(report) == [("astronaut.jpg", [("astronaut-crop.jpg", "crop")])]
    assert report["actions"] == []
    assert lib.state("old/astronaut-crop.jpg") == "ok"


def test_crops_are_found_against_photos_indexed_by_an_earlier_run(lib: Lib) -> None:
    """The candidate index is rebuilt from the database at start."""
    assert lib.scan()["groups"] == []
    _cut(lib.root / "coffee.jpg", lib.root / "coffee-crop.jpg", (0.2, 0.2, 0.8, 0.9), 1_800_000_000)
    assert _groups(lib.scan()) == [("coffee.jpg", [("coffee-crop.jpg", "crop")])]


def test_a_candidate_without_agreeing_words_is_not_verified(
    lib: Lib, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The crop stage verifies a candidate only when enough of the words they share agree on
    one similarity (CROP_MIN_AGREEING) that puts one frame inside the other: otherwise
    `verify` is not called, even for the crop's own original; with both, the original is
    verified and the crop found."""
    from dedupd import features

    _cut(lib.root / "coffee.jpg", lib.root / "coffee-crop.jpg", (0.2, 0.2, 0.8, 0.9), 1_800_000_000)
    verified: list[tuple[int, int]] = []
    real_verify, real_agreement = features.verify, features.agreement

    def spy(a: features.Features, b: features.Features) -> features.CropFit | None:
        verified.append((len(a), len(b)))
        return real_verify(a, b)

    def below(a: features.Features, b: features.Features) -> features.Agreement:
        return real_agreement(a, b)._replace(agreeing=CROP_MIN_AGREEING - 1)

    def apart(a: features.Features, b: features.Features) -> features.Agreement:
        return real_agreement(a, b)._replace(nests=False)

    monkeypatch.setattr(features, "verify", spy)
    for check in (below, apart):  # too few agreeing words; or agreeing, but no frame nests
        monkeypatch.setattr(features, "agreement", check)
        assert lib.scan()["groups"] == [] and verified == []
        (lib.root / "coffee-crop.jpg").touch()  # hashed again: a newcomer to the crop stage
    monkeypatch.setattr(features, "agreement", real_agreement)
    (lib.root / "coffee-crop.jpg").touch()  # hashed again: a newcomer to the crop stage
    os.utime(lib.root / "coffee-crop.jpg", (1_800_000_100, 1_800_000_100))
    assert _groups(lib.scan()) == [("coffee.jpg", [("coffee-crop.jpg", "crop")])]
    assert verified


def test_burst_neighbours_and_near_copies_are_never_crops(lib: Lib) -> None:
    """Two shots of a burst (the frame moved a little) overlap but neither lies inside the
    other; a resized copy is a near match, which wins: neither is a crop."""
    src = lib.root / "rocket.jpg"  # the scene, not itself in the library
    _cut(src, lib.root / "burst" / "a.jpg", (0.0, 0.0, 0.9, 1.0), 1_800_000_000)
    _cut(src, lib.root / "burst" / "b.jpg", (0.03, 0.0, 0.93, 1.0), 1_800_000_001)
    _cut(src, lib.root / "burst" / "c.jpg", (0.1, 0.02, 1.0, 1.0), 1_800_000_002)
    src.unlink()
    photos.resize(lib.root / "coffee.jpg", lib.root / "coffee-small.jpg")
    report = lib.scan()
    kinds = {kind for _, members in _groups(report) for _, kind in members}
    assert "crop" not in kinds
    with Store(lib.db) as store:
        rows = store.db.execute("SELECT count(*) FROM matches WHERE kind = 'crop'").fetchone()
    assert rows[0] == 0
    assert json.dumps(report).count('"crop"') == 0


def test_search_lists_the_photos_an_image_is_a_crop_of(lib: Lib, tmp_path: Path) -> None:
    """`dedupctl search IMAGE`: the indexed photo IMAGE was cut from is listed as a crop."""
    lib.scan()
    query = _cut(lib.root / "chelsea.jpg", tmp_path / "query.jpg", BOX, 1_800_000_000)
    result = lib.ctl("search", str(query))
    assert result.exit_code == 0, result.output
    assert f"{lib.root / 'chelsea.jpg'}" in result.stdout
    assert "crop: the image keeps 42% of it" in result.stdout
    answer = json.loads(lib.ctl("search", str(query), "--json").stdout)
    assert answer["results"] == []
    ((found,),) = [answer["crops"]]
    assert (Path(found["path"]).name, found["kind"]) == ("chelsea.jpg", "crop")
    assert found["detail"]["original"] == found["id"] and found["detail"]["crop"] == 0


def test_search_skips_a_candidate_whose_stored_features_are_damaged(
    lib: Lib, tmp_path: Path
) -> None:
    """A stored features row that cannot be read (its patch cut short) does not fail
    `dedupctl search`: that candidate is skipped, and an intact copy of the same photo is
    still listed as the one the image was cut from."""
    import shutil

    shutil.copy(lib.root / "chelsea.jpg", lib.root / "chelsea-copy.jpg")
    lib.scan()
    with Store(lib.db) as store:
        damaged = store.file_at(lib.root / "chelsea.jpg")
        assert damaged is not None
        store.db.execute(
            "UPDATE features SET patch = substr(patch, 1, 10) WHERE file_id = ?", (damaged.id,)
        )
        store.db.conn.commit()
    query = _cut(lib.root / "chelsea.jpg", tmp_path / "query.jpg", BOX, 1_800_000_000)
    result = lib.ctl("search", str(query), "--json")
    assert result.exit_code == 0, result.output
    found = [Path(c["path"]).name for c in json.loads(result.stdout)["crops"]]
    assert found == ["chelsea-copy.jpg"]


def test_search_over_the_socket_sends_the_features_and_lists_crops(tmp_path: Path) -> None:
    """The query's features go to the daemon in a POST body (too large for a request head);
    the daemon's crop index answers."""
    from tests.test_control import ctl
    from tests.test_daemon import Env, _idle, running, wait_for

    env = Env(tmp_path)
    env.write_config()
    photos.upscaled(photos.photo("rocket"), env.root / "IMG_2.jpg", size=SIZE)
    query = _cut(env.root / "IMG_2.jpg", env.tmp / "query.jpg", (0.1, 0.1, 0.8, 0.9), 1)
    with running(env) as daemon:
        wait_for(lambda: daemon.stats.hashed == 1 and _idle(daemon))
        result = ctl(env, "search", str(query), "--json")
    assert result.exit_code == 0 and result.stderr == "", result.output  # the daemon answered
    answer = json.loads(result.stdout)
    assert [Path(c["path"]).name for c in answer["crops"]] == ["IMG_2.jpg"]
    assert answer["crops"][0]["detail"]["kept"] == pytest.approx(0.56, abs=0.03)


def _crops_off(lib: Lib) -> None:
    text = lib.config.read_text().replace(
        "hashing: {workers: 1}", "hashing: {workers: 1, crops: false}"
    )
    assert "crops: false" in text
    lib.config.write_text(text)


def test_with_crops_off_no_features_are_kept_and_no_crop_is_found(lib: Lib) -> None:
    _crops_off(lib)
    _cut(lib.root / "coffee.jpg", lib.root / "coffee-crop.jpg", (0.2, 0.2, 0.8, 0.9), 1_800_000_000)
    report = lib.scan()
    assert report["hashed"] == len(photos.PHOTOS) + 1 and report["groups"] == []
    with Store(lib.db) as store:
        assert store.db.execute("SELECT count(*) FROM features").fetchone() == (0,)


def test_turning_crops_on_hashes_the_photos_without_features_again_and_finds_crops(
    lib: Lib,
) -> None:
    """Photos hashed while the crop stage was off lack features: the next scan with it on
    decodes them again (once) instead of leaving them out of the crop stage for good."""
    _crops_off(lib)
    _cut(lib.root / "coffee.jpg", lib.root / "coffee-crop.jpg", (0.2, 0.2, 0.8, 0.9), 1_800_000_000)
    assert lib.scan()["groups"] == []
    lib.write_config("{exact: report, near: report}")  # crops on: the default
    report = lib.scan()
    assert report["hashed"] == len(photos.PHOTOS) + 1
    assert _groups(report) == [("coffee.jpg", [("coffee-crop.jpg", "crop")])]
    assert lib.scan()["hashed"] == 0  # once


def test_crops_is_a_boolean(tmp_path: Path) -> None:
    from dedupd.errors import ConfigError

    cfg = tmp_path / "c.yaml"
    cfg.write_text("hashing: {crops: false}\n")
    assert load_config(cfg).hashing.crops is False
    cfg.write_text("hashing: {workers: 1}\n")
    assert load_config(cfg).hashing.crops is True
    cfg.write_text("hashing: {crops: 1}\n")
    with pytest.raises(ConfigError, match=r"hashing\.crops"):
        load_config(cfg)


def test_a_damaged_features_row_is_dropped_and_never_fails_a_newcomer(lib: Lib) -> None:
    """A stored features row that cannot be read (here: fewer descriptors than points) is
    dropped, with a warning, when a newcomer proposes its photo as a candidate: the newcomer
    is hashed and decided as usual, and the next scan hashes the damaged photo again, whose
    crop is then found."""
    config = load_config(lib.config)  # scans in process: a CLI run sets its own log level
    with Store(lib.db) as store:
        assert scan(config, store).hashed == len(photos.PHOTOS)
        coffee = store.file_at(lib.root / "coffee.jpg")
        assert coffee is not None
        store.db.execute(
            "UPDATE features SET descriptors = substr(descriptors, 1, 64) WHERE file_id = ?",
            (coffee.id,),
        )
        store.db.conn.commit()
    _cut(lib.root / "coffee.jpg", lib.root / "coffee-crop.jpg", (0.2, 0.2, 0.8, 0.9), 1_800_000_000)
    with Store(lib.db) as store, capture_logs() as logs:
        report = scan(config, store)
    assert report.failed == [] and report.hashed == 1
    assert lib.state("coffee-crop.jpg") == "ok"
    dropped = [e for e in logs if e["event"] == "crop_features_dropped"]
    assert [e["file_id"] for e in dropped] == [coffee.id]
    assert "descriptors" in dropped[0]["reason"]
    assert _groups(lib.scan()) == [("coffee.jpg", [("coffee-crop.jpg", "crop")])]


def test_a_crop_index_load_that_fails_is_logged_and_fails_no_newcomer(
    lib: Lib, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The crop index's start-up load runs on a thread of its own; if it fails (here: the
    read raises), the first newcomer is hashed and decided as usual, the failure is logged
    once, and crops are found among the photos hashed from then on."""
    from dedupd import engine
    from dedupd.features import FEATURES_KEY

    config = load_config(lib.config)
    with Store(lib.db) as store:
        assert scan(config, store).hashed == len(photos.PHOTOS)

    def unreadable(*args: object) -> object:
        raise OSError("disk I/O error")

    monkeypatch.setattr(engine, "_feature_words", unreadable)
    _original("coffee", lib.root / "new.jpg", 1_800_000_000)
    _cut(lib.root / "new.jpg", lib.root / "new-crop.jpg", (0.2, 0.2, 0.8, 0.9), 1_800_000_100)
    with Store(lib.db) as store, capture_logs() as logs:
        report = scan(config, store)
    assert report.failed == [] and report.hashed == 2
    failed = [e for e in logs if e["event"] == "crop_index_load_failed"]
    assert len(failed) == 1 and "disk I/O error" in failed[0]["error"]
    with Store(lib.db) as store:
        new, crop = store.file_at(lib.root / "new.jpg"), store.file_at(lib.root / "new-crop.jpg")
        assert new is not None and crop is not None and crop.state == "ok"
        assert [m.kind for m in store.matches_of(crop.id, FEATURES_KEY)] == ["crop"]


def test_a_photo_rewritten_in_place_is_compared_by_its_new_features(tmp_path: Path) -> None:
    """The crop stage keeps the features it parsed for later newcomers; a photo rewritten in
    place (the same record, another picture) is compared through its new features, never the
    old ones an earlier newcomer met."""
    from dedupd.features import FEATURES_KEY
    from tests.test_daemon import Env, _idle, running, wait_for

    env = Env(tmp_path)
    env.write_config("{exact: report, near: report, crop: report}")
    old = _original("chelsea", env.tmp / "chelsea.jpg", 1_700_000_000)
    new = _original("rocket", env.tmp / "rocket.jpg", 1_700_000_000)
    photo = env.root / "a.jpg"
    photos.copy(old, photo)

    def arrive(name: str, box: tuple[float, float, float, float]) -> list[Path]:
        os.rename(_cut(old, env.tmp / name, box, 1_800_000_000), env.root / name)
        wait_for(
            lambda: env.state(env.root / name) == "ok" and _idle(daemon),
            what=f"{name} to be decided",
        )
        record = env.record(env.root / name)
        assert record is not None
        with Store(env.db) as store:
            return [Path(m.other.relpath) for m in store.matches_of(record.id, FEATURES_KEY)]

    with running(env) as daemon:
        wait_for(lambda: env.state(photo) == "ok", what="the photo to be recorded")
        assert arrive("first.jpg", BOX) == [Path("a.jpg")]  # the photo's features were read
        before = env.record(photo)
        with open(photo, "r+b") as f:  # another picture written in place: the same record
            f.truncate(0)
            f.write(new.read_bytes())
        wait_for(
            lambda: getattr(env.record(photo), "sha256", None) != getattr(before, "sha256", 1),
            what="the rewritten photo to be hashed again",
        )
        after = env.record(photo)
        assert before is not None and after is not None and after.id == before.id
        # (first.jpg is a crop of it: that match is right)
        assert Path("a.jpg") not in arrive("second.jpg", (0.1, 0.1, 0.9, 0.9))
