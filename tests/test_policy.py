"""dedupd.policy: which file of a duplicate pair is kept, and what happens to the other.

`decide` and `rank` are pure, so every rule is specified here with hand-built records.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, Literal, get_args

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dedupd.config import Action, Keep, KeepRule, Policy
from dedupd.policy import Candidate, Decision, SecondOpinion, decide, rank
from dedupd.store import ActionRecord, FileRecord

SHA_A = "a" * 64
SHA_B = "b" * 64
SHA_C = "c" * 64
KEEP_RULES: tuple[KeepRule, ...] = get_args(KeepRule)
ACTIVE = Policy(exact="delete", near="quarantine")  # acts on whatever it may act on

_ids = itertools.count(1)


def _ns(iso: str) -> int:
    """An mtime in nanoseconds for a UTC wall-clock time."""
    return int(datetime.fromisoformat(iso).replace(tzinfo=UTC).timestamp()) * 1_000_000_000


def record(
    relpath: str = "img.jpg",
    *,
    root: str = "/photos",
    size: int = 1_000,
    mtime_ns: int = 1_700_000_000_000_000_000,
    sha256: str | None = SHA_A,
    width: int | None = 100,
    height: int | None = 100,
    taken_at: str | None = None,
) -> FileRecord:
    """An indexed, healthy file; every call gets a fresh id and inode."""
    n = next(_ids)
    return FileRecord(
        id=n,
        root=root,
        relpath=relpath,
        dev=1,
        inode=n,
        size=size,
        mtime_ns=mtime_ns,
        sha256=sha256,
        width=width,
        height=height,
        format="JPEG",
        taken_at=taken_at,
        state="ok",
        error_kind=None,
        error=None,
        first_seen=0.0,
        updated=0.0,
    )


def small(relpath: str = "new.jpg", **kw: Any) -> FileRecord:
    """A low-resolution copy: it loses to `big` under the default keep rules."""
    return record(relpath, width=50, height=50, **kw)


def big(relpath: str = "old.jpg", **kw: Any) -> FileRecord:
    """A high-resolution copy: it wins over `small` under the default keep rules."""
    return record(relpath, width=400, height=300, **kw)


def exact(r: FileRecord) -> Candidate:
    return Candidate(r, 0, "exact")


# A second hash that agrees, on two detailed photos: a near match may then move a file.
AGREES = SecondOpinion("pdq", distance=4, radius=25, quality=100, dominant=0.1)


def near(r: FileRecord, distance: int = 3, second: SecondOpinion | None = AGREES) -> Candidate:
    return Candidate(r, distance, "near", second=second)


def run(
    newcomer: FileRecord,
    candidates: Sequence[Candidate] = (),
    *,
    default: Policy = ACTIVE,
    policies: Mapping[str, Policy] | None = None,
    **kw: Any,
) -> Decision:
    return decide(newcomer, candidates, policies=policies or {}, default=default, **kw)


def tombstone(kind: Literal["quarantine", "delete"], keeper_id: int) -> ActionRecord:
    return ActionRecord(
        id=7,
        file_id=None,
        kind=kind,
        src="/photos/x.jpg",
        dst=None,
        tmp=None,
        sha256=SHA_A,
        keeper_id=keeper_id,
        keeper_path=None,
        distance=3,
        reason=None,
        of_action=None,
        state="done",
        error=None,
        created=0.0,
        finished=0.0,
        staged=None,
    )


# -- no candidates and distinct pairs --------------------------------------------------------


def test_no_candidates_means_no_action() -> None:
    """Rule: no candidates → action "none"."""
    d = run(record())
    assert d.action == "none"
    assert d.target is None
    assert not d.acts


def test_all_candidates_marked_distinct_means_no_action() -> None:
    """Rule: every candidate's sha256 is in `distinct` → "none", and the rule says why."""
    n = small(sha256=SHA_A)
    d = run(
        n,
        [near(big("x.jpg", sha256=SHA_B)), near(big("y.jpg", sha256=SHA_C))],
        distinct={SHA_B, SHA_C},
    )
    assert d.action == "none"
    assert "distinct" in d.rule


def test_distinct_removes_only_the_marked_candidates() -> None:
    """Rule: distinct drops just those candidates; a remaining one still decides."""
    marked = big("marked.jpg", sha256=SHA_B)
    kept = big("kept.jpg", sha256=SHA_C)
    d = run(small(), [near(marked, 1), near(kept, 5)], distinct={SHA_B})
    assert d.action == "quarantine"
    assert d.keeper is kept
    assert d.distance == 5


# -- which candidate is the match ----------------------------------------------------------


def test_exact_candidate_is_chosen_before_any_near_one() -> None:
    """Rule: an exact candidate beats near ones, even a near one at distance 0 listed first."""
    n = small()
    close = big("close.jpg", sha256=SHA_B)
    same = big("same.jpg", sha256=SHA_A)
    d = run(n, [near(close, 0), exact(same)])
    assert d.kind == "exact"
    assert d.keeper is same
    assert d.action == "delete"


def test_smallest_distance_wins_among_near_candidates() -> None:
    """Rule: among near candidates the smallest distance is the match, whatever the order."""
    far, closest, middle = (big(f"{i}.jpg", sha256=SHA_B) for i in range(3))
    d = run(small(), [near(far, 9), near(closest, 2), near(middle, 5)])
    assert d.keeper is closest
    assert d.distance == 2
    assert d.kind == "near"


# -- rank: keep rules ---------------------------------------------------------------------


def test_rank_highest_resolution_prefers_more_pixels() -> None:
    """Keep rule highest_resolution: more pixels wins (not the wider side)."""
    wide = record("wide.jpg", width=200, height=100)  # 20 000 px
    square = record("square.jpg", width=150, height=150)  # 22 500 px
    assert rank([wide, square], ["highest_resolution"]) == [square, wide]
    assert rank([square, wide], ["highest_resolution"]) == [square, wide]


@pytest.mark.parametrize("rules", [list(KEEP_RULES), ["highest_resolution", "largest_file"]])
def test_a_copy_framed_in_borders_is_never_kept_over_one_without(rules: list[KeepRule]) -> None:
    """A phone's screenshot of a photo (its canvas counts as pixels, its PNG as bytes) or a
    letterboxed copy ranks after the photo whatever the keep rules; a thin border does not
    count, and two copies bordered alike (within `FRAMED`) are ranked by the rules."""
    photo = record("IMG_0002.jpg", width=1000, height=872, size=200_000)
    shot = replace(
        record("Screenshot_1.png", width=1170, height=2532, size=900_000), framed=0.69
    )
    assert rank([shot, photo], rules) == [photo, shot]
    thin = replace(shot, id=shot.id + 1000, framed=0.01)
    assert rank([thin, photo], ["highest_resolution"]) == [thin, photo]
    small_shot = replace(shot, id=shot.id + 2000, width=500, framed=0.66)
    assert rank([small_shot, shot], ["highest_resolution"]) == [shot, small_shot]


def test_a_photos_own_flat_edge_neither_loses_to_its_copies_nor_lets_its_screenshot_win() -> None:
    """A photo whose sky is blown out to white has border of its own (12% of its frame), and
    so has each copy of it, give or take a few percent: the border that ranks a copy after
    is what it has more than the least framed, not any. Its smaller copy is still the worse
    one, and its phone screenshot (the canvas around that sky) still ranks after it; a border
    of a record made before dedupd measured any (None) is unknown and ranks nothing."""
    photo = replace(record("IMG_0002.jpg", width=640, height=427, size=68_000), framed=0.124)
    small = replace(record("small.jpg", width=320, height=214, size=14_000), framed=0.1)
    shot = replace(
        record("Screenshot_1.png", width=462, height=1000, size=159_000), framed=0.692
    )
    rules: list[Keep] = ["highest_resolution", "largest_file"]
    assert rank([small, photo], rules) == [photo, small]
    assert rank([shot, photo], rules) == [photo, shot]
    assert rank([shot, small, photo], rules) == [photo, small, shot]
    old = replace(small, id=small.id + 1000, framed=None)
    assert rank([old, photo], rules) == [photo, old]
    assert rank([old, shot], rules) == [shot, old]


def test_rank_highest_resolution_treats_unknown_size_as_smallest() -> None:
    """Keep rule highest_resolution: a file without dimensions ranks below one with them."""
    unknown = record("unknown.jpg", width=None, height=None)
    known = record("known.jpg", width=1, height=1)
    assert rank([unknown, known], ["highest_resolution"]) == [known, unknown]


def test_rank_largest_file_prefers_more_bytes() -> None:
    """Keep rule largest_file: the bigger file wins."""
    light = record("a.jpg", size=10)
    heavy = record("b.jpg", size=20)
    assert rank([light, heavy], ["largest_file"]) == [heavy, light]


def test_rank_oldest_uses_exif_capture_time() -> None:
    """Keep rule oldest: the earlier EXIF taken_at wins, whatever the mtimes say."""
    early = record("b.jpg", taken_at="2019-05-01T10:00:00", mtime_ns=_ns("2024-01-01T00:00:00"))
    late = record("a.jpg", taken_at="2020-05-01T10:00:00", mtime_ns=_ns("2001-01-01T00:00:00"))
    assert rank([late, early], ["oldest"]) == [early, late]


def test_rank_oldest_falls_back_to_mtime() -> None:
    """Keep rule oldest: without EXIF capture times the earlier mtime wins."""
    early = record("b.jpg", mtime_ns=_ns("2019-01-01T00:00:00"))
    late = record("a.jpg", mtime_ns=_ns("2020-01-01T00:00:00"))
    assert rank([late, early], ["oldest"]) == [early, late]


def test_rank_newest_uses_exif_capture_time() -> None:
    """Keep rule newest: the later EXIF taken_at wins, whatever the mtimes say."""
    early = record("a.jpg", taken_at="2019-05-01T10:00:00", mtime_ns=_ns("2024-01-01T00:00:00"))
    late = record("b.jpg", taken_at="2020-05-01T10:00:00", mtime_ns=_ns("2001-01-01T00:00:00"))
    assert rank([early, late], ["newest"]) == [late, early]


def test_rank_newest_falls_back_to_mtime() -> None:
    """Keep rule newest: without EXIF capture times the later mtime wins."""
    early = record("a.jpg", mtime_ns=_ns("2019-01-01T00:00:00"))
    late = record("b.jpg", mtime_ns=_ns("2020-01-01T00:00:00"))
    assert rank([early, late], ["newest"]) == [late, early]


@pytest.mark.parametrize(("rule", "first"), [("oldest", "scan"), ("newest", "camera")])
def test_rank_by_time_compares_exif_of_one_file_with_mtime_of_the_other(
    rule: KeepRule, first: str
) -> None:
    """Keep rules oldest/newest: each file's time is its EXIF taken_at, else its mtime, and
    the files are ordered by those times — a 2010 scan without EXIF is older than a 2024
    camera photo with EXIF (years apart, so the EXIF local-time zone cannot matter)."""
    camera = record("camera.jpg", taken_at="2024-06-01T12:00:00", mtime_ns=_ns("2024-06-01"))
    scan = record("scan.jpg", taken_at=None, mtime_ns=_ns("2010-03-01T00:00:00"))
    ranked = rank([camera, scan], [rule])
    assert ranked[0] is {"camera": camera, "scan": scan}[first]


def test_rank_applies_rules_in_order() -> None:
    """Keep rules: the first rule decides; the order of the rules matters."""
    sharp = record("a.jpg", width=400, height=300, size=100)
    heavy = record("b.jpg", width=40, height=30, size=900)
    assert rank([heavy, sharp], ["highest_resolution", "largest_file"])[0] is sharp
    assert rank([sharp, heavy], ["largest_file", "highest_resolution"])[0] is heavy


def test_rank_later_rule_breaks_a_tie_of_an_earlier_one() -> None:
    """Keep rules: when the first rule ties, the next one decides."""
    light = record("a.jpg", size=10)
    heavy = record("b.jpg", size=20)
    assert rank([light, heavy], ["highest_resolution", "largest_file"]) == [heavy, light]


def test_rank_path_breaks_remaining_ties() -> None:
    """Keep rules: files equal under every rule are ordered by path."""
    b = record("b.jpg")
    a = record("a.jpg")
    assert rank([b, a], list(KEEP_RULES)) == [a, b]
    assert rank([a, b], list(KEEP_RULES)) == [a, b]


def test_decide_ranks_by_the_newcomers_policy() -> None:
    """Keeper: the newcomer's policy's keep rules decide, not the existing file's root's."""
    newcomer = record("n.jpg", root="/inbox", width=50, height=50, size=9_000)
    existing = record("e.jpg", root="/photos", width=400, height=300, size=10)
    policies = {
        "/inbox": Policy(exact="quarantine", keep=("largest_file",), act_on_existing=True),
        "/photos": Policy(exact="quarantine", keep=("highest_resolution",)),
    }
    d = run(newcomer, [exact(existing)], policies=policies)
    assert d.keeper is newcomer
    assert d.target is existing
    assert d.action == "quarantine"
    assert "largest_file" in d.rule


# -- act_on_existing ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["near"])
def test_better_newcomer_is_only_reported_by_default(kind: str) -> None:
    """act_on_existing off: when the existing file is the worse near copy, only report it."""
    newcomer = big("new.jpg")
    existing = small("old.jpg", sha256=SHA_B)
    cand = near(existing)
    d = run(newcomer, [cand])
    assert d.action == "report"
    assert "act_on_existing" in d.rule
    assert d.target is existing
    assert d.keeper is newcomer
    assert not d.acts


@pytest.mark.parametrize(("kind", "action"), [("exact", "delete"), ("near", "quarantine")])
def test_act_on_existing_applies_the_action_to_the_existing_file(kind: str, action: str) -> None:
    """act_on_existing on: the worse existing copy gets the policy's action."""
    newcomer = big("new.jpg")
    existing = small("old.jpg", sha256=SHA_A if kind == "exact" else SHA_B)
    cand = exact(existing) if kind == "exact" else near(existing)
    d = run(
        newcomer, [cand], default=Policy(exact="delete", near="quarantine", act_on_existing=True)
    )
    assert d.action == action
    assert d.target is existing
    assert d.keeper is newcomer


def test_worse_newcomer_is_the_target() -> None:
    """Keeper: when the existing file ranks first, the newcomer is acted on."""
    newcomer = small()
    existing = big()
    d = run(newcomer, [exact(existing)])
    assert (d.action, d.target, d.keeper) == ("delete", newcomer, existing)
    assert d.acts


# -- the action ------------------------------------------------------------------------


@pytest.mark.parametrize("action", ["report", "quarantine", "delete"])
def test_exact_match_takes_the_policys_exact_action(action: Action) -> None:
    """Action: an exact match gets policy.exact."""
    d = run(small(), [exact(big())], default=Policy(exact=action, near="report"))
    assert d.action == action
    assert d.kind == "exact"


@pytest.mark.parametrize("action", ["report", "quarantine"])
def test_near_match_takes_the_policys_near_action(action: Action) -> None:
    """Action: a near match gets policy.near."""
    d = run(small(), [near(big(sha256=SHA_B))], default=Policy(exact="delete", near=action))
    assert d.action == action
    assert d.kind == "near"


@pytest.mark.parametrize("act_on_existing", [False, True])
def test_near_match_never_deletes(act_on_existing: bool) -> None:
    """Action: near="delete" (forbidden by config) still only quarantines a near match."""
    policy = Policy(exact="delete", near="delete", act_on_existing=act_on_existing)
    d = run(small(), [near(big(sha256=SHA_B))], default=policy)
    assert d.action == "quarantine"
    if act_on_existing:
        d = run(big(), [near(small(sha256=SHA_B))], default=policy)
        assert d.action == "quarantine"


def test_action_comes_from_the_newcomers_policy() -> None:
    """Action: the newcomer's root policy decides, not the existing file's root's policy."""
    policies = {
        "/inbox": Policy(exact="quarantine"),
        "/photos": Policy(exact="delete"),
    }
    d = run(small(root="/inbox"), [exact(big(root="/photos"))], policies=policies)
    assert d.action == "quarantine"


# -- reference roots -----------------------------------------------------------------------


def test_newcomer_in_reference_root_is_only_reported() -> None:
    """Reference: a newcomer in a reference root is reported, never acted on."""
    policies = {"/ref": Policy(exact="delete", near="quarantine", reference=True)}
    d = run(small(root="/ref"), [exact(big())], policies=policies)
    assert d.action == "report"
    assert not d.acts


def test_newcomer_in_reference_root_without_candidates_is_none() -> None:
    """Reference: a reference newcomer without candidates → "none"."""
    policies = {"/ref": Policy(reference=True)}
    assert run(small(root="/ref"), policies=policies).action == "none"


@pytest.mark.parametrize(("kind", "action"), [("exact", "delete"), ("near", "quarantine")])
@pytest.mark.parametrize("act_on_existing", [False, True])
def test_existing_file_in_reference_root_is_always_the_keeper(
    kind: str, action: str, act_on_existing: bool
) -> None:
    """Reference: the reference file is kept even when the newcomer has more pixels; the
    newcomer gets its policy's action, and the reference file is never the target even with
    act_on_existing."""
    newcomer = big("new.jpg", root="/inbox")
    existing = small("old.jpg", root="/ref", sha256=SHA_A if kind == "exact" else SHA_B)
    policies = {
        "/inbox": Policy(exact="delete", near="quarantine", act_on_existing=act_on_existing),
        "/ref": Policy(reference=True),
    }
    cand = exact(existing) if kind == "exact" else near(existing)
    d = run(newcomer, [cand], policies=policies)
    assert d.keeper is existing
    assert d.target is newcomer
    assert d.action == action
    assert "reference" in d.rule


# -- burst guard ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "second", ["2024-01-01T10:00:00", "2024-01-01T10:00:01", "2024-01-01T10:00:02"]
)
def test_near_match_shot_within_burst_seconds_is_only_reported(second: str) -> None:
    """Burst guard: near matches taken within burst_seconds (default 2 s) are reported."""
    n = small(taken_at="2024-01-01T10:00:00")
    d = run(n, [near(big(sha256=SHA_B, taken_at=second))])
    assert d.action == "report"
    assert d.rule.startswith("burst")
    assert d.target is n


def test_near_match_shot_three_seconds_apart_gets_the_normal_action() -> None:
    """Burst guard: 3 s apart is beyond the default 2 s, so the near action applies."""
    n = small(taken_at="2024-01-01T10:00:03")
    d = run(n, [near(big(sha256=SHA_B, taken_at="2024-01-01T10:00:00"))])
    assert d.action == "quarantine"
    assert not d.rule.startswith("burst")


def test_burst_window_comes_from_the_policy() -> None:
    """Burst guard: policy.burst_seconds widens the window."""
    n = small(taken_at="2024-01-01T10:00:03")
    cands = [near(big(sha256=SHA_B, taken_at="2024-01-01T10:00:00"))]
    d = run(n, cands, default=Policy(near="quarantine", burst_seconds=5.0))
    assert d.action == "report"
    assert d.rule.startswith("burst")


def test_exact_match_is_not_subject_to_the_burst_guard() -> None:
    """Burst guard: exact matches shot 1 s apart still get the exact action."""
    n = small(taken_at="2024-01-01T10:00:01")
    d = run(n, [exact(big(taken_at="2024-01-01T10:00:00"))])
    assert d.action == "delete"
    assert not d.rule.startswith("burst")


@pytest.mark.parametrize(
    ("new_at", "old_at"),
    [(None, "2024-01-01T10:00:00"), ("2024-01-01T10:00:00", None), (None, None)],
)
def test_missing_capture_time_disables_the_burst_guard(
    new_at: str | None, old_at: str | None
) -> None:
    """Burst guard: without taken_at on either file there is no burst, so the near action
    applies (even when the mtimes are identical)."""
    n = small(taken_at=new_at)
    d = run(n, [near(big(sha256=SHA_B, taken_at=old_at))])
    assert d.action == "quarantine"


# -- tombstones ---------------------------------------------------------------------------


def test_a_tombstone_without_its_keeper_present_is_ignored() -> None:
    """Tombstone: with its keeper gone the photo may be the last copy: decide afresh."""
    n = small()
    assert run(n, [], tombstone=tombstone("quarantine", 123)).action == "none"
    other = big("other.jpg")
    d = run(n, [near(other)], tombstone=tombstone("quarantine", other.id + 1000))
    assert not d.rule.startswith("tombstone")


def test_a_tombstone_is_ignored_once_the_policy_only_reports() -> None:
    """Tombstone: the root's current policy still rules; report-only never moves a file."""
    n = big("new.jpg")
    existing = small("old.jpg")
    d = run(n, [exact(existing)], default=Policy(), tombstone=tombstone("quarantine", existing.id))
    assert d.action == "report"


def test_a_tombstone_whose_keeper_was_marked_distinct_is_ignored() -> None:
    """Tombstone: a restore marks the pair distinct; that wins over any older tombstone."""
    n = small(sha256=SHA_A)
    keeper = big("keeper.jpg", sha256=SHA_B)
    d = run(n, [near(keeper)], distinct={SHA_B}, tombstone=tombstone("quarantine", keeper.id))
    assert d.action == "none"


def test_quarantine_tombstone_ignores_keep_rules() -> None:
    """Tombstone: the newcomer is quarantined even when it is the better copy and the policy
    would act on the existing file."""
    n = big("new.jpg")
    existing = small("old.jpg")
    policy = Policy(exact="delete", act_on_existing=True)
    d = run(n, [exact(existing)], default=policy, tombstone=tombstone("quarantine", existing.id))
    assert d.action == "quarantine"
    assert d.target is n
    assert d.rule.startswith("tombstone")


def test_delete_tombstone_with_exact_keeper_present_deletes() -> None:
    """Tombstone: a delete is repeated when its keeper, with the same sha256, is a candidate."""
    n = big("new.jpg", sha256=SHA_A)
    keeper = small("keeper.jpg", sha256=SHA_A)
    d = run(n, [exact(keeper)], tombstone=tombstone("delete", keeper.id))
    assert d.action == "delete"
    assert d.target is n
    assert d.keeper is keeper
    assert d.rule.startswith("tombstone")


def test_a_delete_tombstone_does_no_more_than_the_policy_asks_now() -> None:
    """The red team's e22: `exact: delete` turned into `exact: quarantine`, and a copy synced
    back to where one was deleted was deleted again. The tombstone repeats what was done
    only up to what the policy allows now."""
    n = big("new.jpg", sha256=SHA_A)
    keeper = small("keeper.jpg", sha256=SHA_A)
    d = run(n, [exact(keeper)], tombstone=tombstone("delete", keeper.id),
            default=Policy(exact="quarantine"))
    assert (d.action, d.target, d.keeper) == ("quarantine", n, keeper)
    assert d.rule.startswith("tombstone")


def test_delete_tombstone_with_keeper_of_other_bytes_only_quarantines() -> None:
    """Tombstone: a keeper present only as a near match (other sha256) is no keeper for a
    delete."""
    n = small(sha256=SHA_A)
    keeper = big("keeper.jpg", sha256=SHA_B)
    d = run(n, [near(keeper)], tombstone=tombstone("delete", keeper.id))
    assert d.action == "quarantine"
    assert d.target is n


@pytest.mark.parametrize("kind", ["quarantine", "delete"])
def test_reference_newcomer_ignores_tombstones(kind: Literal["quarantine", "delete"]) -> None:
    """Tombstone: a newcomer in a reference root is reported (or "none"), never acted on."""
    policies = {"/ref": Policy(reference=True)}
    n = small(root="/ref")
    keeper = big()
    with_cand = run(n, [exact(keeper)], policies=policies, tombstone=tombstone(kind, keeper.id))
    assert with_cand.action == "report"
    alone = run(n, [], policies=policies, tombstone=tombstone(kind, keeper.id))
    assert alone.action == "none"


# -- dry run -------------------------------------------------------------------------------


def _scenarios() -> dict[str, tuple[FileRecord, list[Candidate], dict[str, Any]]]:
    keeper = big("keeper.jpg")
    return {
        "exact delete": (small(), [exact(big())], {}),
        "near quarantine": (small(), [near(big(sha256=SHA_B))], {}),
        "report existing": (big(), [exact(small())], {}),
        "burst": (
            small(taken_at="2024-01-01T10:00:00"),
            [near(big(sha256=SHA_B, taken_at="2024-01-01T10:00:01"))],
            {},
        ),
        "tombstone": (small(), [exact(keeper)], {"tombstone": tombstone("delete", keeper.id)}),
    }


@pytest.mark.parametrize("name", list(_scenarios()))
def test_dry_run_argument_marks_the_decision_and_keeps_its_action(name: str) -> None:
    """dry_run=True: the decision is flagged dry_run with the same action, target, keeper."""
    n, cands, kw = _scenarios()[name]
    real = run(n, cands, **kw)
    dry = run(n, cands, dry_run=True, **kw)
    assert not real.dry_run
    assert dry.dry_run
    assert (dry.action, dry.target, dry.keeper, dry.rule) == (
        real.action,
        real.target,
        real.keeper,
        real.rule,
    )


@pytest.mark.parametrize("name", list(_scenarios()))
def test_dry_run_policy_marks_the_decision_and_keeps_its_action(name: str) -> None:
    """Policy(dry_run=True) on the newcomer's root flags the decision like dry_run=True."""
    n, cands, kw = _scenarios()[name]
    real = run(n, cands, **kw)
    dry = run(n, cands, default=Policy(exact="delete", near="quarantine", dry_run=True), **kw)
    assert dry.dry_run
    assert (dry.action, dry.target, dry.keeper) == (real.action, real.target, real.keeper)


@pytest.mark.parametrize(
    ("action", "acts"),
    [("none", False), ("report", False), ("quarantine", True), ("delete", True)],
)
def test_decision_acts_only_for_quarantine_and_delete(action: str, acts: bool) -> None:
    """Decision.acts: true only when files would be moved or deleted."""
    assert Decision(action, "why").acts is acts  # type: ignore[arg-type]
    assert Decision(action, "why", dry_run=True).acts is acts  # type: ignore[arg-type]


# -- policies map ---------------------------------------------------------------------------


def test_unmapped_root_uses_the_default_policy() -> None:
    """Policies: a root missing from the map falls back to `default`."""
    policies = {"/photos": Policy(exact="report")}
    d = decide(
        small(root="/elsewhere"),
        [exact(big(root="/photos"))],
        policies=policies,
        default=Policy(exact="quarantine"),
    )
    assert d.action == "quarantine"


def test_mapped_root_uses_its_own_policy_not_the_default() -> None:
    """Policies: a root in the map uses its policy, whatever the default says."""
    policies = {"/photos": Policy(exact="report")}
    d = decide(
        small(root="/photos"),
        [exact(big(root="/elsewhere"))],
        policies=policies,
        default=Policy(exact="delete"),
    )
    assert d.action == "report"


def test_unmapped_existing_root_uses_the_default_for_reference() -> None:
    """Policies: an existing file in an unmapped root is judged by `default` — here a
    reference default, so it is kept even though the newcomer is the better copy."""
    newcomer = big("new.jpg", root="/inbox")
    existing = small("old.jpg", root="/archive")
    policies = {"/inbox": Policy(exact="quarantine", act_on_existing=True)}
    d = decide(newcomer, [exact(existing)], policies=policies, default=Policy(reference=True))
    assert (d.action, d.target, d.keeper) == ("quarantine", newcomer, existing)


# -- properties ----------------------------------------------------------------------------

ROOTS = ("/photos", "/photos", "/photos", "/ref", "/unmapped")  # weighted to reach the rules
TIMES = (None, "2024-01-01T10:00:00", "2024-01-01T10:00:01", "2024-01-01T10:00:05")


def _fields(p: Policy) -> dict[str, Any]:
    return {name: getattr(p, name) for name in Policy.__slots__}


policy_strategy = st.builds(
    Policy,
    exact=st.sampled_from(["report", "quarantine", "delete"]),
    near=st.sampled_from(["report", "quarantine"]),
    keep=st.lists(st.sampled_from(KEEP_RULES), min_size=1, max_size=4, unique=True).map(tuple),
    act_on_existing=st.booleans(),
    dry_run=st.booleans(),
    burst_seconds=st.sampled_from([0.0, 2.0]),
)


@st.composite
def records(draw: st.DrawFn) -> FileRecord:
    return record(
        draw(st.sampled_from(["a.jpg", "b.jpg", "c.jpg"])),
        root=draw(st.sampled_from(ROOTS)),
        size=draw(st.integers(1, 3)),
        mtime_ns=draw(st.integers(0, 3)),
        sha256=draw(st.sampled_from([SHA_A, SHA_B])),
        width=draw(st.integers(0, 3)),
        height=draw(st.integers(0, 3)),
        taken_at=draw(st.sampled_from(TIMES)),
    )


@settings(max_examples=500, deadline=None)
@given(
    newcomer=records(),
    others=st.lists(records(), min_size=0, max_size=3),
    distances=st.lists(st.integers(1, 12), min_size=3, max_size=3),
    root_policy=policy_strategy,
    default=policy_strategy | st.just(Policy(reference=True)),
    ref_policy=policy_strategy.map(lambda p: Policy(**{**_fields(p), "reference": True})),
    distinct=st.sets(st.sampled_from([SHA_A, SHA_B])),
    # (tombstone kind, index of its keeper among `others`); mostly no tombstone
    stone=st.tuples(st.sampled_from([None, None, None, "quarantine", "delete"]), st.integers(0, 3)),
    dry_run=st.booleans(),
)
@pytest.mark.slow
def test_property_delete_needs_an_exact_keeper_and_reference_files_are_never_targets(
    newcomer: FileRecord,
    others: list[FileRecord],
    distances: list[int],
    root_policy: Policy,
    default: Policy,
    ref_policy: Policy,
    distinct: set[str],
    stone: tuple[str | None, int],
    dry_run: bool,
) -> None:
    """Invariants: whatever the records and policies, "delete" comes only from an exact match
    whose keeper has the target's sha256, and no file in a reference root is ever the target."""
    # The store calls a match exact exactly when the sha256 are equal.
    candidates = [
        exact(r) if r.sha256 == newcomer.sha256 else near(r, dist)
        for r, dist in zip(others, distances, strict=False)
    ]
    policies = {"/photos": root_policy, "/ref": ref_policy}
    kind, pick = stone
    ts = None
    if kind is not None:
        ts = tombstone(kind, others[pick].id if pick < len(others) else 10**9)  # type: ignore[arg-type]
    d = decide(
        newcomer,
        candidates,
        policies=policies,
        default=default,
        distinct=distinct,
        tombstone=ts,
        dry_run=dry_run,
    )
    assert d.action in ("none", "report", "quarantine", "delete")
    if d.action == "delete":
        assert d.kind == "exact"
        assert d.target is not None and d.keeper is not None
        assert d.target is not d.keeper
        assert d.target.sha256 == d.keeper.sha256
        assert {d.target.id, d.keeper.id} <= {newcomer.id, *(r.id for r in others)}
    if d.target is not None:
        assert not policies.get(d.target.root, default).reference
    if d.acts:
        assert d.target is not None
    if dry_run:
        assert d.dry_run or d.action == "none"


# -- keep rules for exact duplicates (issue #9 item 12) -------------------------------------
# For identical bytes there is no better copy: pixels, size and capture time tie, so the old
# path tie-break let the arrival order decide, and a copy that arrived first left its original
# "the better newcomer" (report only). Now a name, a folder, or nothing decides, never arrival.

import random  # noqa: E402
from pathlib import Path  # noqa: E402

import dedupd.config  # noqa: E402
import dedupd.policy  # noqa: E402

TAKEN = "2024-05-01T10:00:00"  # identical bytes carry identical EXIF
COPY_SUFFIXES = (
    " (1)",
    " (2)",
    "(3)",
    "-copy",
    " copy",
    "_copy",
    " copy 2",
    " - Copy",
    " - Copy (2)",
    " (copy)",
    " (conflicted copy 2024-05-02 101112)",
    "_1",
    "-1",
    "_12",
    ".sync-conflict-20240502-101112-ABCDEFG",
    " (1) (1)",
)


def twin(relpath: str, **kw: Any) -> FileRecord:
    """A byte-identical copy: same sha256, pixels, size and EXIF time as every other twin."""
    return record(relpath, sha256=SHA_A, taken_at=TAKEN, **kw)


@pytest.mark.parametrize("suffix", COPY_SUFFIXES)
def test_rank_original_name_prefers_the_name_without_a_copy_suffix(suffix: str) -> None:
    """Keep rule original_name: `IMG_7.jpg` beats `IMG_7<suffix>.jpg`, whatever the order,
    the case of the suffix, or which one sorts first by path."""
    original, copy = twin("IMG_7.jpg"), twin(f"IMG_7{suffix.upper()}.JPG")
    assert rank([copy, original], ["original_name"]) == [original, copy]
    assert rank([original, copy], ["original_name"]) == [original, copy]


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("IMG_1234.jpg", "IMG_123.jpg"),  # a longer number, not a suffix
        ("IMG_1234_1.jpg", "IMG_9999.jpg"),  # a suffix, but not of a name compared
        ("IMG_1 (1).jpg", "IMG_1 (2).jpg"),  # two copies of an absent original
        ("(1).jpg", ".jpg"),  # a suffix that is the whole name
    ],
)
def test_original_name_only_counts_a_suffix_when_the_original_is_compared(a: str, b: str) -> None:
    """Keep rule original_name: a name is a copy only when its stem without the suffix is the
    stem of another file compared, so IMG_1234 is never a copy of IMG_123: such pairs tie
    and the next rule decides."""
    fa, fb = twin(a), twin(b)
    assert not dedupd.policy.prefers(fa, fb, ["original_name"])
    assert not dedupd.policy.prefers(fb, fa, ["original_name"])
    assert not dedupd.policy.is_copy_name("IMG_1234", {"img_123"})
    assert not dedupd.policy.is_copy_name("IMG_1234", {"img"})  # 4 digits: never a suffix
    assert dedupd.policy.is_copy_name("IMG_1234_1", {"img_1234"})


def test_prefer_folders_ranks_by_the_order_of_the_folders() -> None:
    """Keep rule {prefer_folders: [A, B]}: a file under A beats one under B, which beats one
    elsewhere; a folder must contain the file, not just share a name prefix."""
    rule = dedupd.config.PreferFolders((Path("/photos/best"), Path("/photos/good")))
    best, good = twin("best/x.jpg"), twin("good/sub/x.jpg")
    other, lookalike = twin("a/x.jpg"), twin("best-of/x.jpg")
    assert rank([other, lookalike, good, best], [rule]) == [best, good, other, lookalike]


def test_exact_copy_arriving_first_is_the_target() -> None:
    """The issue's case: `IMG_1 (1).jpg` is indexed, then `IMG_1.jpg` arrives with the same
    bytes. The rules prefer the newcomer, so the existing copy is the target, with or
    without act_on_existing (identical bytes: removing either loses nothing)."""
    copy, original = twin("IMG_1 (1).jpg"), twin("IMG_1.jpg")
    for act_on_existing in (False, True):
        policy = Policy(exact="delete", act_on_existing=act_on_existing)
        d = run(original, [exact(copy)], default=policy)
        assert (d.action, d.target, d.keeper) == ("delete", copy, original)
        assert "original_name" in d.rule


def test_an_existing_exact_copy_is_acted_on_only_as_far_as_its_own_root_allows() -> None:
    """The existing copy lives under another root: that root's policy bounds the action."""
    copy, original = twin("IMG_1 (1).jpg"), twin("IMG_1.jpg", root="/inbox")
    policies = {"/inbox": Policy(exact="delete"), "/photos": Policy(exact="quarantine")}
    d = run(original, [exact(copy)], policies=policies)
    assert (d.action, d.target) == ("quarantine", copy)
    policies["/photos"] = Policy(exact="report")
    d = run(original, [exact(copy)], policies=policies)
    assert (d.action, d.target) == ("report", copy)


@pytest.mark.parametrize("suffix", COPY_SUFFIXES)
def test_exact_copy_arriving_second_is_acted_on(suffix: str) -> None:
    """The original is indexed, then its copy arrives: the copy is deleted, whichever of the
    two names sorts first by path."""
    original, copy = twin("IMG_1.jpg"), twin(f"IMG_1{suffix}.jpg")
    d = run(copy, [exact(original)], default=Policy(exact="delete"))
    assert (d.action, d.target, d.keeper) == ("delete", copy, original)


def test_exact_twins_that_tie_keep_the_file_already_there() -> None:
    """No rule tells identical twins apart (same name in two folders): the file already
    indexed stays, and the newcomer is acted on, even when its path sorts first."""
    here, newcomer = twin("z/IMG_5.jpg"), twin("a/IMG_5.jpg")
    for act_on_existing in (False, True):
        policy = Policy(exact="quarantine", act_on_existing=act_on_existing)
        d = run(newcomer, [exact(here)], default=policy)
        assert (d.action, d.target, d.keeper) == ("quarantine", newcomer, here)


def test_exact_newcomer_in_a_preferred_folder_is_kept() -> None:
    """A strict preference for the newcomer's folder makes it the keeper (acted on per
    act_on_existing); the same newcomer outside the folders is acted on."""
    best = dedupd.config.PreferFolders((Path("/photos/best"),))
    policy = Policy(exact="delete", keep=(best, "original_name"), act_on_existing=True)
    elsewhere, preferred = twin("inbox/IMG_2.jpg"), twin("best/IMG_2 (1).jpg")
    d = run(preferred, [exact(elsewhere)], default=policy)
    assert (d.action, d.target, d.keeper) == ("delete", elsewhere, preferred)
    d = run(twin("other/IMG_2.jpg"), [exact(preferred)], default=policy)
    assert d.target is not preferred and d.keeper is preferred


@pytest.mark.parametrize("act_on_existing", [True, False])
def test_a_thousand_exact_pairs_in_shuffled_arrival_order_are_all_decided(
    act_on_existing: bool,
) -> None:
    """A 20,000-file burst in miniature: 1,000 originals and their copies (every suffix kind,
    and same-name twins in two folders) arrive in shuffled order. Every copy is acted on:
    as the newcomer or as the existing file, with or without act_on_existing. Arrival order
    never decides which file is the keeper."""
    rng = random.Random(9)
    policy = Policy(exact="delete", act_on_existing=act_on_existing)
    acted = 0
    for n in range(1000):
        kind = n % (len(COPY_SUFFIXES) + 1)
        if kind == len(COPY_SUFFIXES):  # identical twins: nothing prefers either
            original, copy = twin(f"a/IMG_{n}.jpg"), twin(f"b/IMG_{n}.jpg")
        else:
            original, copy = twin(f"IMG_{n}.jpg"), twin(f"IMG_{n}{COPY_SUFFIXES[kind]}.jpg")
        first, second = rng.sample([original, copy], 2)
        d = run(second, [exact(first)], default=policy)
        twins = kind == len(COPY_SUFFIXES)
        assert d.action == "delete", (first.relpath, second.relpath, d.rule)
        assert d.target is (second if twins else copy)
        acted += 1
    assert acted == 1000


NAMES = ("IMG_1.jpg", "IMG_1 (1).jpg", "IMG_1_1.jpg", "best/IMG_1.jpg", "best/IMG_1 copy.jpg")
KEEPS = st.sampled_from(KEEP_RULES) | st.builds(
    lambda: dedupd.config.PreferFolders((Path("/photos/best"),))
)


@settings(max_examples=300, deadline=None)
@given(
    names=st.lists(st.sampled_from(NAMES), min_size=2, max_size=2, unique=True),
    times=st.lists(st.sampled_from(TIMES), min_size=2, max_size=2),
    keep=st.lists(KEEPS, min_size=1, max_size=4, unique=True).map(tuple),
    act_on_existing=st.booleans(),
    action=st.sampled_from(["quarantine", "delete"]),
)
def test_property_an_exact_newcomer_is_acted_on_unless_the_rules_prefer_it(
    names: list[str],
    times: list[str | None],
    keep: tuple[Any, ...],
    act_on_existing: bool,
    action: Action,
) -> None:
    """Exact duplicates in one acting root: the newcomer is the target exactly when the keep
    rules do not strictly prefer it over the existing file; when they do, the existing file
    is the target, with or without act_on_existing. A decision never reports because of the
    path tie-break or the arrival order."""
    existing = record(names[0], sha256=SHA_A, taken_at=times[0])
    newcomer = record(names[1], sha256=SHA_A, taken_at=times[1])
    policy = Policy(exact=action, keep=keep, act_on_existing=act_on_existing)
    d = run(newcomer, [exact(existing)], default=policy)
    if dedupd.policy.prefers(newcomer, existing, keep):
        assert (d.action, d.target, d.keeper) == (action, existing, newcomer)
    else:
        assert (d.action, d.target, d.keeper) == (action, newcomer, existing)
    assert d.rule == f"keep: {', '.join(map(str, keep))}"


def test_a_decision_names_the_transform_of_its_match() -> None:
    """A rotated or mirrored match is decided like any near match, and the decision says how
    the newcomer relates to it (for the log, the journal's reason and `show`)."""
    keeper = big("old.jpg", sha256=SHA_B)
    decision = run(small("new.jpg"), [Candidate(keeper, 4, "near", "mirror", AGREES)])
    assert (decision.action, decision.keeper) == ("quarantine", keeper)
    assert decision.transform == "mirror"
    assert run(small("new.jpg"), [near(keeper, 4)]).transform == "identity"


def test_an_upright_match_wins_a_tie_with_a_turned_one() -> None:
    """At equal distance the upright match is the one decided on: the simpler explanation."""
    turned, upright = big("a.jpg", sha256=SHA_B), big("b.jpg", sha256=SHA_B)
    decision = run(
        small("new.jpg"),
        [Candidate(turned, 4, "near", "rot90"), Candidate(upright, 4, "near")],
    )
    assert (decision.keeper, decision.transform) == (upright, "identity")


# -- a second opinion before a near match moves a file (issue #10 item 4) ----------------------
# A near match quarantines only when a second, independent hash agrees within its own radius
# and neither image is low-detail (PDQ quality under the floor, or mostly one tone: text,
# documents, flat frames); otherwise it is reported, and the rule says why.


def second(
    distance: int | None = 4, quality: int | None = 100, dominant: float | None = 0.1
) -> SecondOpinion:
    return SecondOpinion("pdq", distance, 25, quality, dominant)


@pytest.mark.parametrize(
    ("opinion", "why"),
    [
        (None, "no second opinion asked for"),
        (second(distance=None), "no second opinion yet (pdq hash missing"),
        (second(distance=26), "second opinion disagrees: pdq 26 bits apart (> 25)"),
        (second(quality=20), "low detail (PDQ quality 20 < 21)"),
        (second(quality=0, distance=0), "low detail (PDQ quality 0 < 21)"),
        (second(dominant=0.7), "low detail (70% of the pixels in one tone"),
        (second(dominant=1.0, distance=0), "low detail (100% of the pixels in one tone"),
    ],
)
def test_a_near_match_without_an_agreeing_second_opinion_is_only_reported(
    opinion: SecondOpinion | None, why: str
) -> None:
    """Rule: quarantine needs the second hash within its radius on two detailed images; the
    downgrade to report keeps target and keeper and says why, before the keep rule."""
    n, old = small(), big(sha256=SHA_B)
    agreed = run(n, [near(old)])
    d = run(n, [near(old, second=opinion)])
    assert agreed.action == "quarantine"
    assert d.action == "report"
    assert d.rule.startswith(why), d.rule
    assert d.rule.endswith(agreed.rule.split("; pdq agrees")[0])
    assert (d.target, d.keeper, d.distance, d.kind) == (
        agreed.target,
        agreed.keeper,
        agreed.distance,
        agreed.kind,
    )


def test_an_agreeing_second_opinion_lets_a_near_match_quarantine_and_is_recorded() -> None:
    """Rule: at the radius exactly, on detailed images, the near match acts; the rule names
    the second hasher and its distance."""
    d = run(small(), [near(big(sha256=SHA_B), second=second(distance=25, quality=21))])
    assert d.action == "quarantine"
    assert d.rule.endswith("; pdq agrees (25 bits)")


def test_the_second_opinion_of_the_matched_candidate_decides_not_another() -> None:
    """Rule: the opinion read is the one of the candidate the decision is about (the nearest),
    not an agreeing one of a farther candidate."""
    n = small()
    nearest = near(big("a.jpg", sha256=SHA_B), 2, second(distance=90))
    farther = near(big("b.jpg", sha256=SHA_C), 9, second(distance=1))
    d = run(n, [farther, nearest])
    assert d.keeper == nearest.record
    assert d.action == "report"
    assert d.rule.startswith("second opinion disagrees")


def test_exact_matches_need_no_second_opinion() -> None:
    """Identical bytes are no perceptual guess: a flat exact copy is still acted on."""
    d = run(small(sha256=SHA_A), [Candidate(big(sha256=SHA_A), 0, "exact")])
    assert d.action == "delete"


def test_a_near_tombstone_is_repeated_only_with_an_agreeing_second_opinion() -> None:
    """A sync client bringing back near-duplicate bytes removed before: repeated only if the
    guard still agrees (the keeper may since have been replaced by a flat image)."""
    n, old = small(), big(sha256=SHA_B)
    stone = tombstone("quarantine", old.id)
    assert run(n, [near(old)], tombstone=stone).action == "quarantine"
    d = run(n, [near(old, second=second(quality=10))], tombstone=stone)
    assert d.action == "report"
    assert d.rule.startswith("low detail")


opinions = st.one_of(
    st.none(),
    st.builds(
        SecondOpinion,
        hasher=st.just("pdq"),
        distance=st.none() | st.integers(0, 256),
        radius=st.integers(0, 64),
        quality=st.none() | st.integers(0, 100),
        dominant=st.none() | st.floats(0, 1),
    ),
)


@settings(max_examples=500, deadline=None)
@given(
    newcomer=records(),
    others=st.lists(records(), min_size=0, max_size=3),
    distances=st.lists(st.integers(1, 12), min_size=3, max_size=3),
    seconds=st.lists(opinions, min_size=3, max_size=3),
    root_policy=policy_strategy,
    default=policy_strategy,
    stone=st.tuples(st.sampled_from([None, None, "quarantine", "delete"]), st.integers(0, 3)),
)
@pytest.mark.slow
def test_property_a_near_match_moves_a_file_only_when_the_second_opinion_agrees(
    newcomer: FileRecord,
    others: list[FileRecord],
    distances: list[int],
    seconds: list[SecondOpinion | None],
    root_policy: Policy,
    default: Policy,
    stone: tuple[str | None, int],
) -> None:
    """Invariant: whatever the records, policies and tombstones, a decision that moves a file
    on a near match rests on a candidate whose second hash agrees within its radius, on two
    images of enough detail; and the guard only ever turns a move into a report, never
    changes which files a decision is about or turns a report into a move."""
    candidates = [
        exact(r) if r.sha256 == newcomer.sha256 else near(r, dist, opinion)
        for r, dist, opinion in zip(others, distances, seconds, strict=False)
    ]
    kind, pick = stone
    ts = None
    if kind is not None:
        ts = tombstone(kind, others[pick].id if pick < len(others) else 10**9)  # type: ignore[arg-type]
    kw: dict[str, Any] = dict(policies={"/photos": root_policy}, default=default, tombstone=ts)
    d = decide(newcomer, candidates, **kw)
    unguarded = decide(newcomer, [replace(c, second=AGREES) for c in candidates], **kw)
    assert (d.target, d.keeper, d.kind) == (unguarded.target, unguarded.keeper, unguarded.kind)
    assert d.action == unguarded.action or (d.action == "report" and unguarded.acts)
    if d.acts and d.kind == "near":
        other = d.keeper if d.target is newcomer else d.target
        assert other is not None
        match = next(c for c in candidates if c.record.id == other.id)
        s = match.second
        assert s is not None and s.distance is not None and s.distance <= s.radius
        assert s.quality is None or s.quality >= s.quality_floor
        assert s.dominant is None or s.dominant < s.max_dominant
