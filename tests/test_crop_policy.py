"""policy.decide for crop matches: reported by default, the larger frame kept, and a crop moved
only with `crop: quarantine` and evidence that confirms it (CropEvidence.refusal)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dedupd.config import Action, Policy
from dedupd.policy import CROP_CONFIRM_INLIERS, Candidate, CropEvidence, decide
from dedupd.store import FileRecord
from tests.test_policy import (
    SHA_B,
    big,
    exact,
    near,
    policy_strategy,
    records,
    run,
    small,
)

CROPPING = Policy(crop="quarantine")
CROP_ACTIONS: list[Action] = ["report", "quarantine"]


def evidence(crop: FileRecord, **kw: Any) -> CropEvidence:
    """A crop fit that confirms `crop` is a crop, on two detailed photos."""
    values: dict[str, Any] = dict(
        crop_id=crop.id, kept=0.5, inliers=120, ratio=0.8, resolution=1.5, quality=90, dominant=0.1
    )
    return CropEvidence(**{**values, **kw})


def crop(other: FileRecord, crop_id: int, distance: int = 50, **kw: Any) -> Candidate:
    found = evidence(other, **kw)
    return Candidate(other, distance, "crop", crop=replace(found, crop_id=crop_id))


def test_a_crop_is_only_reported_by_default() -> None:
    """Policy default `crop: report`: a crop is often made on purpose."""
    newcomer, original = small(sha256=SHA_B), big()
    d = run(newcomer, [crop(original, newcomer.id)], default=Policy())
    assert (d.action, d.kind, d.target, d.keeper) == ("report", "crop", newcomer, original)


def test_crop_quarantine_moves_the_crop_and_keeps_the_larger_frame() -> None:
    """The keeper is the frame the crop was cut from, even when the keep rules prefer the crop
    (here the crop has more pixels: it was upscaled)."""
    newcomer, original = big("crop.jpg", sha256=SHA_B), small("original.jpg")
    d = run(newcomer, [crop(original, newcomer.id)], default=CROPPING)
    assert (d.action, d.target, d.keeper) == ("quarantine", newcomer, original)
    assert "larger frame" in d.rule


def test_a_newcomer_that_is_the_larger_frame_acts_on_the_crop_only_with_act_on_existing() -> None:
    """The uncropped original arriving after its crop: the existing crop is the target."""
    newcomer, existing = big("original.jpg", sha256=SHA_B), small("crop.jpg")
    d = run(newcomer, [crop(existing, existing.id)], default=CROPPING)
    assert (d.action, d.target, d.keeper) == ("report", existing, newcomer)
    assert "act_on_existing" in d.rule
    d = run(
        newcomer, [crop(existing, existing.id)], default=replace(CROPPING, act_on_existing=True)
    )
    assert (d.action, d.target, d.keeper) == ("quarantine", existing, newcomer)


@pytest.mark.parametrize(
    ("kw", "why"),
    [
        ({"inliers": CROP_CONFIRM_INLIERS - 1}, "crop fit not confirmed"),
        ({"ratio": 0.3}, "crop fit not confirmed"),
        ({"quality": 10}, "low detail"),
        ({"dominant": 0.9}, "low detail"),
        ({"quality": None}, "no detail measure"),
        ({"resolution": 0.6}, "the crop is sharper"),
    ],
)
def test_a_crop_moves_only_on_confirming_evidence(kw: dict[str, Any], why: str) -> None:
    """The crop's second opinion: a stricter fit, two detailed images, and a larger frame that
    holds the crop's part at least as sharp (a screenshot showing a photo smaller is no
    original of it)."""
    newcomer, original = small(sha256=SHA_B), big()
    d = run(newcomer, [crop(original, newcomer.id, **kw)], default=CROPPING)
    assert d.action == "report"
    assert d.rule.startswith(why)


def test_a_crop_without_evidence_never_moves() -> None:
    newcomer, original = small(sha256=SHA_B), big()
    d = run(newcomer, [Candidate(original, 50, "crop")], default=CROPPING)
    assert d.action == "report"


def test_a_crop_never_deletes() -> None:
    """Even a policy that deletes exact copies only quarantines a crop."""
    newcomer, original = small(sha256=SHA_B), big()
    d = run(
        newcomer, [crop(original, newcomer.id)], default=Policy(exact="delete", crop="quarantine")
    )
    assert d.action == "quarantine"


def test_near_and_exact_matches_win_over_a_crop() -> None:
    newcomer, a, b = small(sha256=SHA_B), big("a.jpg", sha256=SHA_B), big("b.jpg")
    d = run(newcomer, [crop(b, newcomer.id, distance=5), exact(a)], default=CROPPING)
    assert (d.kind, d.keeper) == ("exact", a)
    d = run(newcomer, [crop(b, newcomer.id, distance=1), near(a, distance=40)], default=CROPPING)
    assert (d.kind, d.keeper) == ("near", a)


crop_evidence = st.builds(
    CropEvidence,
    crop_id=st.just(0),  # set per candidate
    kept=st.floats(0.05, 0.93),
    inliers=st.integers(0, 300),
    ratio=st.floats(0, 1),
    resolution=st.floats(0, 4),
    quality=st.none() | st.integers(0, 100),
    dominant=st.none() | st.floats(0, 1),
)


@settings(max_examples=500, deadline=None)
@given(
    newcomer=records(),
    others=st.lists(records(), min_size=1, max_size=3),
    kinds=st.lists(st.sampled_from(["crop", "crop", "near", "exact"]), min_size=3, max_size=3),
    found=st.lists(crop_evidence, min_size=3, max_size=3),
    newcomer_is_crop=st.lists(st.booleans(), min_size=3, max_size=3),
    root_policy=policy_strategy.flatmap(
        lambda p: st.sampled_from(CROP_ACTIONS).map(lambda c: replace(p, crop=c))
    ),
    default=policy_strategy,
)
@pytest.mark.slow
def test_property_a_crop_moves_only_the_crop_on_confirmed_evidence(
    newcomer: FileRecord,
    others: list[FileRecord],
    kinds: list[str],
    found: list[CropEvidence],
    newcomer_is_crop: list[bool],
    root_policy: Policy,
    default: Policy,
) -> None:
    """Invariant: whatever the records and policies, a decision on a crop match never deletes;
    it acts only under a policy whose `crop` is quarantine, on the file the evidence names as
    the crop, keeping the other, and only when the evidence confirms it; an exact or near
    match always wins over a crop; and the guard only ever turns a move into a report."""
    candidates = []
    for r, kind, e, is_crop in zip(others, kinds, found, newcomer_is_crop, strict=False):
        if kind == "exact":
            candidates.append(exact(replace(r, sha256=newcomer.sha256)))
        elif kind == "near":
            candidates.append(near(r))
        else:
            crop_id = newcomer.id if is_crop else r.id
            candidates.append(
                Candidate(r, round(100 * (1 - e.kept)), "crop", crop=replace(e, crop_id=crop_id))
            )
    kw: dict[str, Any] = dict(policies={"/photos": root_policy}, default=default)
    d = decide(newcomer, candidates, **kw)
    sure: dict[str, Any] = dict(inliers=300, ratio=1.0, resolution=2.0, quality=100, dominant=0.0)
    confirmed = [replace(c, crop=replace(c.crop, **sure)) if c.crop else c for c in candidates]
    unguarded = decide(newcomer, confirmed, **kw)
    assert (d.target, d.keeper, d.kind) == (unguarded.target, unguarded.keeper, unguarded.kind)
    assert d.action == unguarded.action or (d.action == "report" and unguarded.acts)
    if any(c.kind != "crop" for c in candidates):
        assert d.kind != "crop"
    if d.kind == "crop" and d.acts:
        assert d.action == "quarantine"
        assert newcomer.root == "/photos" or default.crop == "quarantine"
        other = d.keeper if d.target is newcomer else d.target
        match = next(c for c in candidates if other is not None and c.record.id == other.id)
        assert match.crop is not None and match.crop.refusal() is None
        assert d.target is not None and d.target.id == match.crop.crop_id
        assert d.keeper is not None and d.keeper.id != match.crop.crop_id


def test_a_frame_whose_crop_is_in_a_reference_root_is_never_moved_as_its_crop() -> None:
    """The red team's e18: a crop kept in an archive root (`reference`), the whole photo
    uploaded after it. The reference rule made the crop the keeper and the upload the target,
    moved as "a crop", and a purge deleted the only whole picture. A crop match moves only
    the crop: the larger frame is reported."""
    from tests.test_policy import record

    archived = record("archive/crop.jpg", root="/archive", width=390, height=300)
    upload = record("original.jpg", width=600, height=400, sha256=SHA_B)
    d = run(
        upload,
        [crop(archived, archived.id)],
        default=CROPPING,
        policies={"/archive": Policy(reference=True)},
    )
    assert d.action == "report" and d.target is upload and d.keeper is archived
    assert "the larger frame, not the crop" in d.rule


def test_a_tombstone_never_moves_the_larger_frame_of_a_crop_pair() -> None:
    """The red team's e12: crop C was quarantined against its frame F and purged; F was then
    cut down in place to F', which lies inside C; C synced back. The tombstone repeated "C
    goes, F's record keeps" and quarantined C as the crop of its own crop. The crop evidence
    of now says F' is the crop: C, the larger frame, is only reported."""
    from tests.test_policy import tombstone

    frame_now, back = small("frame.jpg"), big("crop.jpg", sha256=SHA_B)
    d = run(back, [crop(frame_now, frame_now.id)], default=CROPPING,
            tombstone=replace(tombstone("quarantine", frame_now.id), sha256=SHA_B))
    assert d.action == "report" and d.target is back
    assert "the larger frame, not the crop" in d.rule
