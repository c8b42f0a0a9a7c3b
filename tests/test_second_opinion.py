"""A second opinion before a file moves (issue #10 item 4), end to end through `scan`.

A near match quarantines only when PDQ, hashed by the workers in the same decode and stored per
photo, agrees; low-detail images (text screenshots, documents, solid colours, gradients,
near-uniform frames) are never moved on a perceptual match alone. Real files, real SQLite,
real worker processes.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from dedupd.actions import Actions
from dedupd.config import DEFAULT_POLICY, Config, HashingConfig
from dedupd.engine import ScanReport, scan
from dedupd.hashers import Hasher
from dedupd.store import Store
from tests import photos

PDQ = Hasher("pdq")


def _quarantining(tmp_path: Path, root: Path) -> Config:
    """A policy that quarantines every exact and near duplicate it may, whichever of the
    two is the newcomer."""
    config = replace(
        Config(),
        database=tmp_path / "state" / "dedupd.db",
        hashing=HashingConfig(workers=1),
        quarantine=replace(Config().quarantine, path=tmp_path / "quarantine"),
    )
    policy = replace(
        config.policies[DEFAULT_POLICY], exact="quarantine", near="quarantine", act_on_existing=True
    )
    config = replace(config, policies={**config.policies, DEFAULT_POLICY: policy})
    return config.with_roots([root])


def _scan(config: Config) -> ScanReport:
    with Store(config.database) as store:
        return scan(config, store, actions=Actions(store, config.quarantine.path))


def _age(paths: list[Path]) -> None:
    """mtimes in list order, a second apart: the later ones are the newcomers."""
    for i, path in enumerate(paths):
        os.utime(path, ns=(1_700_000_000_000_000_000 + i * 10**9,) * 2)


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_a_quarantine_policy_over_flat_images_moves_nothing_but_reports_their_matches(
    tmp_path: Path,
) -> None:
    """Solid colours and gradients all share one pHash (within 4 bits of 256), text
    screenshots and documents are mostly one tone: every near match among them, true copies
    included, is reported with the reason, and not one file moves."""
    root = tmp_path / "screens"
    flat = photos.flat_images(root)
    # True duplicates too: a text screenshot and a document saved again. PDQ rates text
    # highly and agrees on these; only their one-tone share keeps them from moving.
    copies = [
        photos.reencode(flat["text_a"], root / "chat" / "text_a.jpg", 85),
        photos.reencode(flat["document_a"], root / "chat" / "document_a.jpg", 85),
    ]
    _age([*flat.values(), *copies])
    before = _files(root)
    report = _scan(_quarantining(tmp_path, root))
    assert _files(root) == before
    assert not (tmp_path / "quarantine").exists() or not any((tmp_path / "quarantine").iterdir())
    near = {Path(o.path).name: o.decision for o in report.outcomes if o.decision.kind == "near"}
    assert {"solid_blue.png", "gradient_blue.png", "text_a.jpg", "document_a.jpg"} <= set(near)
    assert all(d.action == "report" for d in near.values())
    assert all(d.rule.startswith("low detail") for d in near.values()), near
    for name in ("text_a.jpg", "document_a.jpg"):
        assert "of the pixels in one tone" in near[name].rule, near[name].rule


def test_a_quarantine_policy_still_moves_real_reencoded_and_resized_copies(
    tmp_path: Path,
) -> None:
    """The guard costs no real duplicate: re-encoded and half-size copies of photos are
    quarantined, PDQ agreeing, and the decision says so."""
    root = tmp_path / "photos"
    names = ("astronaut", "chelsea", "coffee", "rocket")
    originals = [photos.copy(photos.photo(n), root / f"{n}.jpg") for n in names]
    copies = [photos.reencode(photos.photo(n), root / "chat" / f"{n}-wa.jpg") for n in names[:2]]
    copies += [photos.resize(photos.photo(n), root / "small" / f"{n}.jpg") for n in names[2:]]
    _age(originals + copies)
    report = _scan(_quarantining(tmp_path, root))
    moved = sorted(
        str(Path(o.path).relative_to(root)) for o in report.outcomes if o.result == "done"
    )
    assert moved == sorted(str(p.relative_to(root)) for p in copies)
    assert _files(root) == sorted(f"{n}.jpg" for n in names)
    for o in report.outcomes:
        assert o.decision.action == "quarantine"
        assert "pdq agrees" in o.decision.rule, o.decision.rule


def test_the_second_hash_and_its_quality_are_stored_per_photo_by_the_scan(tmp_path: Path) -> None:
    """The workers hash PDQ in the same decode; the store keeps it with its quality and the
    dominant-tone share (0-100 and 0-1), high for a photo, 0 and 1 for a solid colour."""
    root = tmp_path / "photos"
    photos.copy(photos.photo("coffee"), root / "coffee.jpg")
    photos.solid(root / "red.png", (200, 30, 30))
    config = _quarantining(tmp_path, root)
    _scan(config)
    with Store(config.database) as store:
        rows = dict(
            (Path(path).name, (len(bits), quality, dominant))
            for path, bits, quality, dominant in store.db.execute(
                "SELECT f.relpath, h.bits, h.quality, h.dominant FROM hashes h"
                " JOIN files f ON f.id = h.file_id WHERE h.hasher = ?",
                (PDQ.key,),
            )
        )
    assert rows["coffee.jpg"][:2] == (32, 100)
    assert rows["coffee.jpg"][2] < 0.3
    assert rows["red.png"] == (32, 0, 1.0)


def test_photos_hashed_before_the_second_opinion_get_it_on_the_next_scan(tmp_path: Path) -> None:
    """A library scanned by a dedupd without PDQ (its rows gone here) is decoded once more on
    the next scan, lazily like a hasher change, so its near matches can move files again."""
    root = tmp_path / "photos"
    for name in ("coffee", "rocket"):
        photos.copy(photos.photo(name), root / f"{name}.jpg")
    config = _quarantining(tmp_path, root)
    _scan(config)
    with Store(config.database) as store:
        store.db.execute("DELETE FROM hashes WHERE hasher = ?", (PDQ.key,))
        store.db.conn.commit()
    assert _scan(config).hashed == 2
    assert _scan(config).hashed == 0
    with Store(config.database) as store:
        (count,) = store.db.execute(
            "SELECT count(*) FROM hashes WHERE hasher = ? AND quality IS NOT NULL", (PDQ.key,)
        ).fetchone()
    assert count == 2
