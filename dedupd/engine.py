"""Wires candidates → hashing (the standing hasher pool) → ingest (store + index + matching).

`scan()` is the one-shot form: reconcile every root, hash what changed, record matches,
and report duplicate groups. The daemon will drive the same `Ingest` from its watcher.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import os
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from dedupd import safefs
from dedupd.actions import ActionError, Actions, KeeperElsewhere, MotionNotIdentical
from dedupd.config import DEFAULT_POLICY, Config, Policy
from dedupd.errors import DedupdError, NotFoundError
from dedupd.filestat import (
    Counterpart,
    FileStat,
    HashedImage,
    HashedVideo,
    Likeness,
    LocalFeatures,
)
from dedupd.hashers import INVERSE, TRANSFORMS, Hasher, Transform, second_opinion
from dedupd.policy import Candidate, CropEvidence, Decision, SecondOpinion, decide, rank
from dedupd.pool import Failure, HasherPool, Work, hash_file
from dedupd.safefs import STAGING_DIR
from dedupd.scanner import (
    VANISHED,
    Entry,
    NameFilter,
    Plan,
    reconcile,
    root_key,
    same_version,
    walk,
)
from dedupd.store import DECIDING_ATTEMPTS, FileRecord, MatchKind, State, Store, Undecided
from dedupd.video import MAX_FRAMES, video_key

if TYPE_CHECKING:
    from pathlib import Path

    import numpy as np
    import numpy.typing as npt

    from dedupd.features import Features
    from dedupd.index import CropIndex, FrameIndex, HammingIndex

__all__ = [
    "Failure",
    "Group",
    "Ingest",
    "Member",
    "Outcome",
    "Reconciled",
    "ScanReport",
    "duplicate_groups",
    "excluded_dirs",
    "ingest_all",
    "ingest_guarded",
    "reconcile_roots",
    "scan",
    "start_pool",
]

log = structlog.get_logger("dedupd.engine")

# The crop stage: how many of the photos that share most visual words with a newcomer are
# verified geometrically, and how many words a photo must share to be one of them (in the
# crop section of bench/accuracy.py, the crops found shared 8-154 words with their original;
# the candidate stage lost 5 of 463 crops that `verify` alone would have found).
CROP_CANDIDATES = 8
CROP_MIN_SHARED = 4
# A candidate is verified only when at least this many of the words it shares sit where one
# upright similarity puts them (`features.agreement`: ~0.2 ms CPU, `verify` ~0.7 ms).
# Two always agree (they define the fit), so 3 is the least evidence of geometry. In the crop
# bench's candidate trace (bench/crop_accuracy.py), crops found had 3-62 agreeing words (1st
# percentile 4) and 67% of the candidates that do not verify had fewer than 3: verify calls
# per crop newcomer fell from 7.97 to 3.44, with the same crops found. Shared words or idf
# score cannot do this: crops found shared 8-154 words (5th percentile 18), candidates that do
# not verify 4-275 (median 17). The margin is thin: with the features of FAST threshold 5
# alone, 2 of 409 crops found had 2. The similarity must also put one frame inside the other
# (`features.agreement`, with a looser edge than `verify`'s): 2.14 verifications per crop
# newcomer instead of 3.44, no crop lost.
CROP_MIN_AGREEING = 3
# The crop index's delta is folded into its snapshot after this many changes, or half the
# photos indexed if more (at most `index.rebuild_every`): a first scan rebuilds at 256, 384,
# 576, ... photos, each rebuild ~1.5x the last, so the delta stays small.
CROP_REBUILD_AT_LEAST = 256
# Photos whose parsed features the crop stage keeps between newcomers (`Ingest._crop_features`):
# ~20 KB each (300 keypoints and descriptors, the 64 px patch, the words), 20 MB in all.
FEATURES_KEPT = 1024
# Pixel comparisons remembered (`Ingest._likeness`): a few hundred bytes each.
LIKENESS_KEPT = 4096
# What a worker hashing a file and comparing it may fail of without the file being at fault.
_NOT_ITS_OWN = ("timeout", "crashed", "out_of_memory")


@dataclass(frozen=True, slots=True)
class _Crop:
    """A verified crop pair, as the crop stage found it for one newcomer."""

    distance: int  # percent of the larger frame cut away
    detail: dict[str, Any]  # what the match row keeps (features.CropFit.detail)
    evidence: CropEvidence


Progress = Callable[[int], None]


@dataclass(frozen=True, slots=True)
class Member:
    record: FileRecord
    distance: int  # bits from the group's keeper
    kind: MatchKind
    transform: Transform = "identity"  # the member is the keeper rotated/mirrored so
    detail: dict[str, Any] | None = None  # a crop's: kept area, fit, which file is the crop
    # Not matched with the keeper itself but with this other member (a crop of a near copy):
    # `kind`, `distance`, `transform` and `detail` are of that match.
    via: FileRecord | None = None


@dataclass(frozen=True, slots=True)
class Group:
    keeper: FileRecord
    duplicates: tuple[Member, ...]


@dataclass(frozen=True, slots=True)
class Outcome:
    """A decision and what came of it: "done", "dry run", "reported" or "failed: …"."""

    path: str
    decision: Decision
    result: str


class Interrupted(Exception):
    """Raised by `Ingest.waiting` to give up a wait (the daemon is stopping). The newcomer
    being decided keeps its 'deciding' note, so the next start hashes and decides it; it is
    never recorded as a failure (`ingest_guarded` lets this through)."""


class Ingest:
    """Owns the store writes, the index, matching and decisions. One thread only.

    Without `actions` it never touches a file (search, or a store opened read-only).
    """

    def __init__(
        self,
        store: Store,
        config: Config,
        roots: Sequence[str],
        actions: Actions | None = None,
        *,
        load_crops: bool = True,
    ):
        """`load_crops=False`: the crop index's start-up load waits for `start_crop_load`
        (the daemon starts it once READY: at a million photos its reading thread slowed the
        start by half a second); the first crop stage or `swap_finished` starts it anyway."""
        self.store, self.config, self.roots, self.actions = store, config, list(roots), actions
        # Called about once a second while the crop stage waits for the crop index's load (a
        # minute or more for a large library read from a cold disk): the daemon feeds
        # systemd's watchdog meanwhile, which would otherwise kill it mid-wait, and raises
        # Interrupted to stop at once instead of at the load's end.
        self.waiting: Callable[[], object] = lambda: None
        # Held for each index read or change, never across decoding or file moves: the
        # control socket's threads query the index while this thread ingests.
        self.lock = threading.RLock()
        self.hasher = Hasher(config.hashing.algorithm, config.hashing.hash_size)
        # Hashed by the workers in the same decode, stored per photo, read back only for the
        # few candidates of a near match: never in the index (a million photos' worth).
        self.second = second_opinion(self.hasher)
        from dedupd.index import make_index  # numpy: not for a command that never matches

        ic = config.index
        self.index: HammingIndex = make_index(
            ic.backend, self.hasher.bits, leaf_size=ic.leaf_size, p=ic.p
        )
        # Streamed into arrays: at a million photos, per-row Python objects would cost
        # hundreds of MB and seconds at every start.
        self.index.load_packed(*store.hash_arrays(self.hasher.key, self.roots))
        from dedupd.features import FEATURES_KEY
        from dedupd.index import CropIndex

        # The crop stage's candidates: each photo's visual words (its descriptors stay in
        # SQLite, read for the few candidates verified).
        self.crop_key = FEATURES_KEY
        self.crops: CropIndex = CropIndex()
        # The features of the photos the crop stage read last, by id, with the sha256 they
        # were read for: a burst's photos are each other's candidates, and so are a library's
        # most textured ones, so most candidates were read and parsed for an earlier newcomer.
        # Dropped whenever `ingest` records a photo again: a full decode stores new features
        # for the same bytes (a HEIC hashed from its embedded thumbnail first).
        self._features_read: OrderedDict[int, tuple[str | None, Features]] = OrderedDict()
        # Read and built on a thread of its own, from a connection of its own: at a million
        # photos that takes ~15 s (bench/crops.py), and the daemon is ready long before. The
        # first crop stage waits for it (`_crops`), so no newcomer is matched against half an
        # index; an idle daemon swaps it in by itself (`swap_finished`).
        path, roots = store.path, list(self.roots)
        # Set by `close`: a start-up load still reading stops at its next chunk (a reload,
        # or a stop, must not leave a second 1 GB index being built beside the next one).
        self._closing = threading.Event()
        self._read_crop_words = lambda: _feature_words(path, roots, self._closing.is_set)
        self._crops_load_started: float | None = None
        if load_crops:
            self.start_crop_load()
        # Clips: their frames' hashes in an index of their own, voting per clip. A photo is
        # never matched against a clip's frames by ingest (only `search` asks for that).
        from dedupd.index import FrameIndex

        self.video_key = video_key(self.hasher, config.hashing.video_fps)
        self.frame_radius = self.hasher.radius(self.hasher.default_threshold)
        self.frames: FrameIndex = FrameIndex(
            make_index(ic.backend, self.hasher.bits, leaf_size=ic.leaf_size, p=ic.p), MAX_FRAMES
        )
        self.frames.load_packed(*store.frame_arrays(self.video_key, MAX_FRAMES, self.roots))
        self.policies = config.root_policies()
        self.default_policy = config.policies[DEFAULT_POLICY]
        self._radius = {root: self._radius_of(p) for root, p in self.policies.items()}
        self._default_radius = self._radius_of(self.default_policy)
        # What a decision depends on in the config: a report decided under other policies
        # is decided again (`redecide`).
        self.policy_key = hashlib.sha256(
            repr((sorted(self.policies.items()), self.default_policy)).encode()
        ).hexdigest()[:16]
        self._pending: set[int] = set()  # files `redecide` has yet to decide again
        # Of those, the ones another root took over (`Store.adopt`), with the files each was
        # compared with already: never acted on against one of them (`_respect_met`).
        self._met: dict[int, set[int]] = {}
        # Files a dry run would have moved: gone for the rest of this run's decisions, as
        # after a real move, so that a dry run previews what a real run does.
        self._gone_in_preview: set[int] = set()
        # Files recorded by an earlier run whose decision it never made (or whose index hash
        # it lacked), queued to be hashed and decided again, oldest first, by their place in
        # that order (mtime, path): until each is, it has not "arrived" for a newcomer that
        # comes before it, as in the run that was stopped (a near copy re-decided after its
        # later exact copy would otherwise be matched to that copy and left beside its
        # original); a newcomer that comes after it (an upload now) meets it.
        self._awaiting: dict[int, tuple[int, str]] = {}
        # Files to hash again in full before a decision that rests on a thumbnail's hash may
        # move anything: whoever feeds the pool takes them from here (`Entry.full_decode`).
        # _confirming: their (root, relpath) → whether their own decision is made again once
        # hashed (known before the record is written: see `ingest`).
        self.confirm: deque[Entry] = deque()
        self._confirming: dict[tuple[str, str], bool] = {}
        # What comparing two photos' pixels found (`dedupd.likeness`), by (the newcomer's
        # sha256, the counterpart's path, stat and transform): a near match moves a file only
        # once its pair was compared (`_compared`). Kept for the latest pairs only: a pair
        # forgotten is compared again.
        self._likeness: OrderedDict[tuple[str, str, FileStat, str], Likeness] = OrderedDict()
        # Files whose own decision waits, by place: the file and the entry it waits for (its
        # comparison, `_compared`; or, for one that waits for another's decision, `_wait`,
        # its own hashing again once that is made). Until then no other newcomer meets them
        # (nor acts on them, or keeps them) as if they stayed; only that entry's result
        # ends the hold (`_unhold`), not an older one's that comes back late.
        self._comparing: dict[tuple[str, str], tuple[int, Entry]] = {}
        # Newcomers that matched a held file (`_wait`), by the held file's id: hashed and
        # decided again once its decision is made (`_decided`), against what it came to.
        # _arrival: the order in which files whose decision is still to come arrived (a
        # file awaited from an earlier run first, in that run's order; then this run's);
        # one waits only for those that came before it, so that they are decided in that
        # order and no two ever wait for each other.
        self._waiting: dict[int, dict[tuple[str, str], Entry]] = {}
        self._arrival: dict[int, tuple[int, int, str] | tuple[int, int]] = {}
        self._arrivals = itertools.count()
        # The folders walks skip (quarantine, database folder, staging): a record under one
        # (a photo recorded there before the quarantine was moved onto it, say) is no photo
        # of the library. Never a match, so never a keeper: its file is unknown to
        # `quarantine list`, and a user emptying that folder by hand would lose the only copy.
        self._skipped = tuple(folder + os.sep for folder in excluded_dirs(config))

    def _files(self, ids: Iterable[int]) -> dict[int, FileRecord]:
        """The records of `ids` that may be matched: not those under a folder walks skip."""
        return {
            i: r
            for i, r in self.store.files(ids).items()
            if not str(r.path).startswith(self._skipped)
        }

    def _not_yet(self, newcomer: FileRecord, ids: Iterable[int]) -> set[int]:
        """Of `ids`, the files `newcomer` is not matched against: see `redecide`,
        `_gone_in_preview`, `_awaiting`, `_comparing`."""
        place = (newcomer.stat.mtime_ns, str(newcomer.path))
        held = self._held()
        return {
            i
            for i in ids
            if i in self._pending
            or i in self._gone_in_preview
            or (i in self._awaiting and self._awaiting[i] > place)
            or i in held
        }

    def _held(self) -> set[int]:
        """The files whose own decision waits (`_comparing`)."""
        return {file_id for file_id, _ in self._comparing.values()}

    def await_decisions(self, awaiting: Iterable[tuple[int, Entry]]) -> None:
        """Files queued to be decided again (`Reconciled.awaiting`: id, entry): no
        candidates for the newcomers that come before them."""
        self._awaiting.update((i, (e.stat.mtime_ns, e.path)) for i, e in awaiting)

    def _radius_of(self, policy: Policy) -> int:
        return self.hasher.radius(self._threshold_of(policy))

    def _threshold_of(self, policy: Policy) -> float:
        return self.hasher.default_threshold if policy.threshold is None else policy.threshold

    def threshold_for(self, root: str) -> float:
        """The normalized threshold of `root`'s policy (the hasher's default if it sets none)."""
        return self._threshold_of(self.policies.get(root, self.default_policy))

    def close(self) -> None:
        """Let a background index rebuild finish (so no thread outlives its owner), except
        the crop index's start-up load: it only reads, through a read-only connection of its
        own, and takes a minute or more on a large library from a cold disk, which a stop
        (systemd's TimeoutStopSec) must not wait for: it is cancelled at its next chunk."""
        self._closing.set()
        crops_loading = self.crops.loading
        self.index.join_rebuild()  # the long wait, without blocking searches
        if not crops_loading:
            self.crops.join_rebuild()
        self.frames.join_rebuild()
        with self.lock:
            self.index.finish_rebuild(wait=True)
            if not crops_loading:
                self.crops.finish_rebuild(wait=True)
            self.frames.finish_rebuild(wait=True)

    def start_crop_load(self) -> None:
        """Begin reading the stored photos' crop words into the crop index, in the
        background; once per Ingest, and never with the crop stage off (its index stays
        empty, and no crop stage runs)."""
        if self._crops_load_started is not None or not self.config.hashing.crops:
            return
        self._crops_load_started = time.monotonic()
        self.crops.start_load(self._read_crop_words)

    def load_crops_now(self) -> None:
        """Wait for the crop index's start-up load and swap it in: for a one-shot reader
        (`dedupctl search` without a daemon) that asks the crop index at once."""
        self.start_crop_load()
        self.crops.join_rebuild()
        self.swap_finished()

    @property
    def crops_loading(self) -> bool:
        """Whether the crop index's start-up load is still to come or running (its photos not
        yet in the index)."""
        return self.config.hashing.crops and (
            self._crops_load_started is None or self.crops.loading
        )

    def swap_finished(self) -> None:
        """Swap in what background builds have finished, never waiting: the crop index's
        start-up load (logged as `crop_index_loaded`), a rebuild of any index. The daemon's
        loop calls it between uploads (it owns the indexes), so that an idle daemon neither
        keeps a finished snapshot beside the old one until the next upload nor reports its
        crop index as loading. A load that failed leaves the crop index to what is added
        from now on, and says so."""
        self.start_crop_load()
        with self.lock:
            self.index.finish_rebuild()
            self.frames.finish_rebuild()
            loading = self.crops.loading
            try:
                swapped = self.crops.finish_rebuild()
            except Exception as exc:
                if not loading:
                    raise
                log.error(
                    "crop_index_load_failed",
                    error=f"{type(exc).__name__}: {exc}",
                    detail="crops are found among photos hashed from now on only",
                )
                return
            if swapped and loading and self._crops_load_started is not None:
                log.info(
                    "crop_index_loaded",
                    photos=len(self.crops),
                    seconds=round(time.monotonic() - self._crops_load_started, 1),
                )

    def unindex(self, file_ids: Sequence[int]) -> None:
        """Take files out of the indexes (photos, their crop words and clips alike): gone,
        moved away, failed. Gone, none awaits its decision in this run any more."""
        for file_id in file_ids:
            self._awaiting.pop(file_id, None)
        with self.lock:
            self.index.remove(file_ids)
            self.crops.remove(file_ids)
            self.frames.remove(file_ids)

    def index_again(self, file_ids: Sequence[int]) -> None:
        """Put files that came back (moved, remounted) into the indexes from their stored
        hashes (a photo's, and its crop words; or a clip's frames). A file queued to be
        decided again and moved meanwhile is not hashed at its old name: it is a candidate
        again, and decided by the next start (its note stays)."""
        for file_id in file_ids:
            self._awaiting.pop(file_id, None)
        for file_id in file_ids:
            bits = self.store.hash_of(file_id, self.hasher.key)
            clip = self.store.video_frames(file_id, self.video_key) if bits is None else None
            with self.lock:
                if bits is not None:
                    self.index.add([file_id], [bits])
                elif clip is not None:
                    self.frames.add(file_id, clip.frames)
            if bits is not None:
                self.index_crop_words(file_id)

    def radius_for(self, root: str) -> int:
        """The match radius in bits for a newcomer under `root`, from its policy."""
        return self._radius.get(root, self._default_radius)

    @property
    def widest_radius(self) -> int:
        """The largest radius of any policy: what any root could count as a duplicate."""
        return max([self._default_radius, *self._radius.values()])

    def ingest(self, entry: Entry, result: HashedImage | HashedVideo | Failure) -> Outcome | None:
        """Record one hashing result; for an image or a clip, match it and apply its root's
        policy.

        Returns what was decided when the file has a duplicate (or a tombstone), else None.
        """
        held = self._unhold(entry) if entry.full_decode else None
        try:
            return self._ingest(entry, result, held)
        finally:
            if held is not None and not self._to_come(held):
                # whatever came of it (decided, failed, gone): what waits for it goes on
                self._decided(held)

    def _ingest(
        self, entry: Entry, result: HashedImage | HashedVideo | Failure, held: int | None
    ) -> Outcome | None:
        """`ingest`; `held`: the file whose hold `entry` ended (`_unhold`), if any."""
        if isinstance(result, Failure) and entry.compare and result.kind in _NOT_ITS_OWN:
            return self._not_compared(entry, result)
        if isinstance(result, Failure):
            if entry.full_decode:  # no decision waits for it any more
                self._confirming.pop((entry.root, entry.relpath), None)
            if result.kind == VANISHED and self._taken_by_dedupd(entry):
                # A decision moved it while this (re-)hash was in the pool: not its failure,
                # and its record must go on saying where it went (review, restore).
                log.debug("file_gone_by_decision", path=entry.path)
                return None
            if (
                result.kind == VANISHED
                and entry.full_decode
                and self.store.record(entry.root, entry.relpath) is None
            ):
                # Its record followed a rename (`Store.move`) or went: nothing is missing here.
                if held is not None:
                    self._decide_where_it_went(entry, held)
                return None
            log.warning("file_skipped", path=entry.path, error=result.kind, detail=result.message)
            file_id = self.store.record_error(
                entry.root, entry.relpath, entry.stat, result.kind, result.message
            )
            self.unindex([file_id])  # and no longer awaited
            self._decided(file_id)  # nor held
            return None
        gone = self._moved_away(entry, result.sha256)
        if gone is not None:  # recorded as what it is now; nothing to match or decide
            file_id = (
                self.store.record_video(entry.root, entry.relpath, result)
                if isinstance(result, HashedVideo)
                else self.store.record_hashed(entry.root, entry.relpath, result)
            )
            self._features_read.pop(file_id, None)
            self.store.set_state(file_id, gone)
            return None
        for counterpart, measured in result.likeness:
            self._remember(result.sha256, counterpart, measured)
        if isinstance(result, HashedVideo):
            if entry.full_decode:  # hashed again to be compared: decided as it is now
                self._confirming.pop((entry.root, entry.relpath), None)
            return self._ingest_video(entry, result)
        place = (entry.root, entry.relpath)
        # None for a full decode no hold of this Ingest waits for (one queued before a
        # reload): decided as any upload
        again = self._confirming.pop(place, None) if entry.full_decode else None
        # Only stored and indexed, not decided: the other file of a held match (its hashes
        # are now a full decode's), or a photo decided before that lacked what the config
        # now adds (deciding it again would take it for a newcomer among the photos that
        # arrived after it), unless its bytes are not those its record was decided on.
        if entry.rehash == "rewritten":
            before = self.store.record(entry.root, entry.relpath)
            if before is not None and before.sha256 == result.sha256:
                # written to and closed, its bytes the same: nothing new to decide (decided
                # again, it would meet as a newcomer the copies that came after it)
                self.store.record_hashed(entry.root, entry.relpath, result)
                return None
        fill = again is False
        if entry.rehash == "fill":
            before = self.store.record(entry.root, entry.relpath)
            fill = before is not None and before.sha256 == result.sha256
        # Noted 'deciding' with the record, unless no decision follows: a process that dies
        # before the decision leaves the note, and the next start hashes and decides it.
        deciding = None if fill else self.policy_key
        file_id = self.store.record_hashed(entry.root, entry.relpath, result, deciding)
        self._features_read.pop(file_id, None)  # new features, maybe for the same bytes
        awaited = self._awaiting.pop(file_id, None)
        if awaited is not None and not fill:
            # recorded by a run before this one, whose decision it never made: it came
            # before every file of this run, after those awaited that come before it
            self._arrival.setdefault(file_id, (0, *awaited))
        if fill:
            with self.lock:
                self.index.add([file_id], [result.hashes[self.hasher.key]])
            if entry.rehash != "fill":
                self.index_crop_words(file_id)  # and its crop words, from the full decode's
                return None
            # Features it lacked: the crops among the photos stored before are found and
            # recorded (shown by `groups`, `search`), never acted on: it was decided when it
            # arrived. Its near and exact matches are no crop candidates, as for a newcomer.
            newcomer = self.store.file(file_id)
            assert newcomer is not None  # just written by this thread
            matched = {m.other.id for m in self.store.matches_of(file_id, self.hasher.key)}
            found = self._crops(newcomer, matched)
            if found:
                log.info(
                    "crops_recorded",
                    path=entry.path,
                    crops=sorted(str(r.path) for r in self.store.files(found).values()),
                    detail="hashed again for its crop features; decided when it arrived",
                )
            return None
        if again:
            log.info("decision_confirming", path=entry.path, by="full decode")
        return self._match_and_decide(
            file_id,
            entry.path,
            result.hashes[self.hasher.key],
            result.sha256,
            result.variants.get(self.hasher.key),
        )

    def redecide(
        self, tick: Callable[[], object] = lambda: None, only: Collection[int] | None = None
    ) -> list[Outcome]:
        """Decide again on the duplicates whose last decision did not act and may now: every
        one previewed by a dry run or whose action failed, every one reported under other
        policies than today's (a policy turned from `report` to `quarantine`), and every
        photo moved into another root (`Store.move`). Without this a dry run would consume
        the decision: the file is unchanged, so never reconsidered. `only`: of those, these
        ids (the daemon's moves, decided as they are seen).

        They are taken out of the index and decided again one by one in the order they were
        first decided, each against what was indexed before it, exactly as the run that
        first decided them did: what a dry run showed is what the next real run does. A file
        that changed on disk since is left to the reconcile, which hashes it again. Each
        decision goes through `decide` (distinct pairs, tombstones, restored photos) and
        `apply` (verified, journaled actions), as for a newcomer. `tick` runs after each
        file (the daemon's heartbeat).
        """
        due = [
            r
            for r in self.store.undecided_due(self.policy_key, self.roots)
            if (only is None or r.id in only) and _unchanged(r)
        ]
        if not due:
            return []
        self._pending = {r.id for r in due}
        keys = [self.hasher.key, self.crop_key, self.video_key]
        self._met = {i: self.store.met(i, keys) for i in self.store.adopted(self._pending)}
        self.unindex(list(self._pending))
        outcomes = []
        try:
            with self.store.batch():
                for record in due:
                    self._pending.discard(record.id)
                    now = self.store.file(record.id)
                    if now is None or now.state != "ok":
                        # A decision before it in this loop took it away: a Live Photo's motion
                        # file, moved into quarantine (or deleted) with its still.
                        self.store.clear_undecided(record.id)
                        continue
                    path, sha256 = str(record.path), record.sha256
                    tried = self.store.attempt(record.id)  # one whose decision crashes us
                    if tried > DECIDING_ATTEMPTS:  # must not crash every start: given up
                        self.store.abandon(record.id)
                        self.index_again([record.id])  # a candidate for others still
                        log.warning(
                            "decision_abandoned",
                            path=path,
                            attempts=tried - 1,
                            detail="dedupd stopped while deciding this file again each time;"
                            " it stays in place, undecided, until it changes",
                        )
                        continue
                    bits = self.store.hash_of(record.id, self.hasher.key)
                    clip = (
                        self.store.video_frames(record.id, self.video_key) if bits is None else None
                    )
                    if sha256 is None or (bits is None and clip is None):
                        self.store.clear_undecided(record.id)  # hashed with another hasher
                        continue
                    if bits is not None:
                        outcome = self._match_and_decide(record.id, path, bits, sha256, None)
                    elif clip is not None:
                        outcome = self._match_and_decide_clip(record.id, path, sha256, clip.frames)
                    if outcome is not None:
                        outcomes.append(outcome)
                    tick()
        finally:
            # kept for the files whose decision is still to come (held)
            self._met = {i: m for i, m in self._met.items() if i in self._arrival}
            left, self._pending = self._pending, set()
            # an error stopped the loop: the rest go back as they were
            self.index_again(list(left))
        return outcomes

    def _match_and_decide(
        self,
        file_id: int,
        path: str,
        bits: bytes,
        sha256: str,
        variants: Sequence[bytes] | None,
    ) -> Outcome | None:
        """Match a recorded file against the index, record its matches, index it, and decide
        (and act) by its root's policy. `variants`: its 8 rotations and mirrors, from the
        worker; None when deciding again from the database, which keeps the upright hash
        only: the rotated and mirrored matches recorded before stand in for them."""
        newcomer = self.store.file(file_id)
        assert newcomer is not None  # just written by this thread
        found: dict[int, tuple[int, MatchKind, Transform]] = {
            r.id: (0, "exact", "identity")
            for r in self.store.with_sha256(sha256, roots=self.roots)
        }
        for other, d, transform in self._near(newcomer.root, bits, variants):
            found.setdefault(other, (d, "near", transform))
        if variants is None and self._isometric(newcomer.root):
            radius = self.turned_radius_for(newcomer.root)
            for m in self.store.matches_of(file_id, self.hasher.key):
                turned = m.kind == "near" and m.transform != "identity"
                if turned and m.distance <= radius and m.other.root in self.roots:
                    found.setdefault(m.other.id, (m.distance, "near", m.transform))
        found.pop(file_id, None)
        mine = self._arrival.get(file_id)  # None: a newcomer now, after every held file
        held = self._held()
        waits_for = [
            i for i in found if i in held and (mine is None or self._arrival.get(i, (-1,)) < mine)
        ]
        if waits_for:
            return self._wait(newcomer, path, bits, waits_for)
        for other in self._not_yet(newcomer, found):
            del found[other]  # came later (`redecide`, `_awaiting`), or "moved" by a dry run
        records = self._files(found)
        found = {i: v for i, v in found.items() if i in records}  # ids whose record went
        self.store.replace_matches(
            file_id,
            self.hasher.key,
            [(other, *v) for other, v in found.items()],
            within=self.roots,
        )
        crops = self._crops(newcomer, set(found))
        records |= self._files(crops)
        crops = {i: c for i, c in crops.items() if i in records}
        with self.lock:
            self.index.add([file_id], [bits])
            self.index.finish_rebuild()  # swap in a finished background rebuild, never waits
            if self.index.pending >= self.config.index.rebuild_every:
                self.index.start_rebuild()  # on its own thread; ingest and queries go on
        tombstone = self.store.tombstone(sha256, path)
        if not found and not crops and tombstone is None:
            self.store.clear_undecided(file_id)
            self._decided(file_id)
            return None
        seconds = self._second_opinions(
            file_id, {i: t for i, (_, k, t) in found.items() if k == "near"}
        )
        decision = decide(
            newcomer,
            [
                *(
                    Candidate(records[i], d, kind, t, seconds.get(i))
                    for i, (d, kind, t) in found.items()
                ),
                *(
                    Candidate(records[i], c.distance, "crop", crop=c.evidence)
                    for i, c in crops.items()
                ),
            ],
            policies=self.policies,
            default=self.default_policy,
            distinct=self.store.distinct_from(sha256),
            tombstone=tombstone,
            dry_run=self.config.dry_run,
            quarantine=self.config.quarantine.path is not None,
        )
        decision = self._respect_restores(newcomer, decision)
        crop = None
        if decision.kind == "crop" and decision.keeper is not None and decision.target is not None:
            other = decision.keeper.id if decision.target.id == file_id else decision.target.id
            crop = crops[other].detail if other in crops else None
        return self._settle(newcomer, sha256, path, decision, crop)

    def _settle(
        self,
        newcomer: FileRecord,
        sha256: str,
        path: str,
        decision: Decision,
        detail: dict[str, Any] | None = None,
    ) -> Outcome:
        """Carry out a newcomer's decision (unless it must wait for a full decode), and note
        it to be decided again unless it acted (or had nothing to do). `detail`: what the
        matcher measured, for a crop."""
        file_id = newcomer.id
        decision = self._respect_met(newcomer, decision)
        held = self._hold_for_full_decode(newcomer, decision)
        comparing = False
        if held is None:
            decision, held = self._compared(newcomer, decision, detail)
            comparing = held is not None
        outcome = self.apply(decision, path, detail, held=held)
        if comparing:
            # Its 'deciding' note stays (or the note that made it due): decided again once
            # compared, or by the next start if this one stops first.
            return outcome
        if held is None:
            self._decided(file_id)
        else:  # decided again after the full decodes, in its place in the order of arrival
            self._arrival.setdefault(file_id, (1, next(self._arrivals)))
        if decision.action == "none" or outcome.result == "done":
            self.store.clear_undecided(file_id)
        else:
            # Whatever a dry run decided (a report too) is decided again by the next run, so
            # that each file meets the same files there as here.
            why: Undecided = (
                "dry run"
                if decision.dry_run or outcome.result == "dry run"
                else "failed"
                if outcome.result.startswith("failed")
                else "report"
            )
            self.store.note_undecided(file_id, sha256, why, self.policy_key)
        return outcome

    def _crops(self, newcomer: FileRecord, matched: set[int]) -> dict[int, _Crop]:
        """The crop stage for a recorded `newcomer`: the indexed photos that share most of its
        visual words (the crop index, never all pairs), verified geometrically against it
        (`features.verify`): those that are a crop of it or of which it is a crop. Photos in
        `matched` (exact or near matches: near wins) are not candidates, nor is a burst
        neighbour (`verify` refuses full frames). Records the pairs as `crop` matches under
        the features' key, files the newcomer's words in the index, and returns them by id."""
        from dedupd.features import CropFit, agreement, verify

        mine = (
            self._crop_features([newcomer]).get(newcomer.id) if self.config.hashing.crops else None
        )
        if mine is None:  # crops off, hashed without features (by an older dedupd), or damaged
            self.store.replace_matches(newcomer.id, self.crop_key, [], within=self.roots)
            return {}
        words = mine.words
        exclude = matched | self._pending | self._gone_in_preview | {newcomer.id}
        self.start_crop_load()
        if self.crops.loading:  # the first newcomer of a run waits for the load
            if not self.crops.join_rebuild(timeout=1.0):
                log.info("crop_stage_waits", detail="for the crop index's start-up load")
                while not self.crops.join_rebuild(timeout=1.0):
                    try:
                        self.waiting()
                    except Interrupted:
                        self.store.deferred(newcomer.id)  # put off, not a failed attempt
                        raise
            self.swap_finished()
        with self.lock:
            self.crops.finish_rebuild()
            proposed = self.crops.candidates(
                words, CROP_CANDIDATES, min_shared=CROP_MIN_SHARED, exclude=exclude
            )
        later = self._not_yet(newcomer, [c.id for c in proposed])  # awaiting, after it
        ids = [c.id for c in proposed if c.id not in later]
        records = {
            i: r
            for i, r in self.store.files(ids).items()
            if r.state == "ok" and r.root in self.roots
        }
        theirs = self._crop_features(records.values())
        fits: dict[int, tuple[CropFit, Features]] = {}
        for i in ids:
            if (other := theirs.get(i)) is not None:
                agree = agreement(mine, other)
                if agree.agreeing < CROP_MIN_AGREEING or not agree.nests:
                    continue  # no geometry among the shared words, or no nesting: no crop
                fit = verify(mine, other)
                if fit is not None:
                    fits[i] = fit, other
        out: dict[int, _Crop] = {}
        if fits:
            rated = self._rated_pair_detail([newcomer.id, *fits])
            for i, (fit, other) in fits.items():
                crop, original = (
                    ((newcomer, mine), (records[i], other))
                    if fit.cropped == "first"
                    else ((records[i], other), (newcomer, mine))
                )
                quality, dominant = rated(newcomer.id, i)
                out[i] = _Crop(
                    round(100 * (1 - fit.kept)),
                    fit.detail(crop[0].id, original[0].id),
                    CropEvidence(
                        crop_id=crop[0].id,
                        kept=fit.kept,
                        inliers=fit.inliers,
                        ratio=fit.ratio,
                        resolution=_resolution(fit.scale, crop, original),
                        quality=quality,
                        dominant=dominant,
                    ),
                )
        self.store.replace_matches(
            newcomer.id,
            self.crop_key,
            [(i, c.distance, "crop", "identity", c.detail) for i, c in out.items()],
            within=self.roots,
        )
        with self.lock:
            self.crops.add(newcomer.id, words)
            self.crops.finish_rebuild()  # swap in a finished background rebuild, never waits
            # Sooner while the index is small (a first scan): the delta is searched per
            # posting in Python, the snapshot in numpy, and a small rebuild is quick.
            soon = max(CROP_REBUILD_AT_LEAST, len(self.crops) // 2)
            if self.crops.pending >= min(self.config.index.rebuild_every, soon):
                self.crops.start_rebuild()
        return out

    def _crop_features(self, records: Iterable[FileRecord]) -> dict[int, Features]:
        """The features of `records` that have readable ones, by id: parsed before for the
        same record and bytes (the last FEATURES_KEPT used) or read from the store now, in
        one query."""
        found: dict[int, Features] = {}
        unread: list[FileRecord] = []
        for record in records:
            kept = self._features_read.get(record.id)
            if kept is not None and kept[0] == record.sha256:
                self._features_read.move_to_end(record.id)
                found[record.id] = kept[1]
            else:
                unread.append(record)
        stored = self.store.features_of([r.id for r in unread], self.crop_key) if unread else {}
        for record in unread:
            row = stored.get(record.id)
            if row is not None and (parsed := self._readable(record.id, row)) is not None:
                found[record.id] = parsed
                self._features_read[record.id] = record.sha256, parsed
                self._features_read.move_to_end(record.id)
        while len(self._features_read) > FEATURES_KEPT:
            self._features_read.popitem(last=False)
        return found

    def _readable(self, file_id: int, stored: LocalFeatures) -> Features | None:
        """`stored` as Features, or None when the row cannot be read (damaged: points and
        descriptors that disagree, a patch of the wrong size). Such a row is dropped and
        logged, so that the next reconcile hashes the photo again: one bad row never fails
        the newcomers that propose its photo as a candidate."""
        from dedupd.features import Features

        try:
            return Features.from_local(stored)
        except ValueError as exc:
            log.warning("crop_features_dropped", file_id=file_id, reason=str(exc))
            self.store.drop_features(file_id)
            with self.lock:
                self.crops.remove([file_id])
            return None

    def index_crop_words(self, file_id: int) -> None:
        """File `file_id` in the crop index again from its stored features (if it has any)."""
        from dedupd.features import Features

        if not self.config.hashing.crops:
            return
        stored = self.store.features_of([file_id], self.crop_key).get(file_id)
        if stored is not None:
            with self.lock:
                self.crops.add(file_id, Features.from_local(stored).words)

    def _rated_pair_detail(
        self, ids: list[int]
    ) -> Callable[[int, int], tuple[int | None, float | None]]:
        """For pairs among `ids`: (the lower PDQ quality, the larger dominant-tone share) of
        the two files, None where one lacks it (read from SQLite for these few files)."""
        rated = self.hasher if self.hasher.rates_quality else self.second
        detail = self.store.rated_hashes(ids, rated.key)

        def pair(a: int, b: int) -> tuple[int | None, float | None]:
            ra, rb = detail.get(a), detail.get(b)
            if ra is None or rb is None or ra.quality is None or rb.quality is None:
                return None, None
            if ra.dominant is None or rb.dominant is None:
                return min(ra.quality, rb.quality), None
            return min(ra.quality, rb.quality), max(ra.dominant, rb.dominant)

        return pair

    def _taken_by_dedupd(self, entry: Entry) -> bool:
        """Whether the record at `entry`'s path says dedupd quarantined or deleted it, and
        nothing is at the path now."""
        record = self.store.record(entry.root, entry.relpath)
        return (
            record is not None
            and record.state in ("quarantined", "deleted")
            and not os.path.lexists(entry.path)
        )

    def _moved_away(self, entry: Entry, sha256: str) -> State | None:
        """"quarantined" or "deleted" when dedupd itself took these bytes away from this path
        after the worker hashed them (a Live Photo's motion file goes with its still, in the
        still's action), else None. A file back at the path (restored, synced again) is
        decided as usual."""
        action = self.store.tombstone(sha256, entry.path)
        if action is None or os.path.lexists(entry.path):
            return None
        return "quarantined" if action.kind == "quarantine" else "deleted"

    def _ingest_video(self, entry: Entry, clip: HashedVideo) -> Outcome | None:
        """Record a clip; match it against the indexed clips by its frames and apply its
        root's policy."""
        file_id = self.store.record_video(entry.root, entry.relpath, clip, self.policy_key)
        self._awaiting.pop(file_id, None)
        return self._match_and_decide_clip(file_id, entry.path, clip.sha256, clip.frames)

    def clip_matches(
        self, frames: Sequence[bytes]
    ) -> dict[int, tuple[int, MatchKind, dict[str, object]]]:
        """The indexed clips that match a clip of `frames`: id → (distance, kind, detail).
        `distance`: the median bits from its matched frames to theirs; kind "video" (the same
        clip, in any order, maybe cut) or "contains" (one holds the other; `detail` says
        which)."""
        with self.lock:
            votes = self.frames.votes(frames, self.frame_radius)
            counts = {other: self.frames.frames(other) for other in votes}
        found: dict[int, tuple[int, MatchKind, dict[str, object]]] = {}
        for other, v in votes.items():
            kind = v.kind(len(frames), counts[other])
            if kind is None:
                continue
            detail: dict[str, object] = {
                "frames": len(frames),
                "matched": len(v.mine),
                "other_frames": counts[other],
                "other_matched": len(v.theirs),
            }
            if kind != "video":
                detail["inside"] = "other" if kind == "contains" else "this"
            found[other] = (v.distance, "video" if kind == "video" else "contains", detail)
        return found

    def _match_and_decide_clip(
        self, file_id: int, path: str, sha256: str, frames: Sequence[bytes]
    ) -> Outcome | None:
        """`_match_and_decide` for a clip: exact copies by sha256, then the clips that share
        its frames (`clip_matches`); recorded under the video key, then decided by policy."""
        newcomer = self.store.file(file_id)
        assert newcomer is not None  # just written by this thread
        found: dict[int, tuple[int, MatchKind, dict[str, object] | None]] = {
            r.id: (0, "exact", None) for r in self.store.with_sha256(sha256, roots=self.roots)
        }
        for other, match in self.clip_matches(frames).items():
            found.setdefault(other, match)
        found.pop(file_id, None)
        for other in self._not_yet(newcomer, found):
            del found[other]
        records = self._files(found)
        found = {i: v for i, v in found.items() if i in records}
        self.store.replace_matches(
            file_id,
            self.video_key,
            [
                (other, d, kind, "identity", _about(detail, file_id, other))
                for other, (d, kind, detail) in found.items()
            ],
            within=self.roots,
        )
        with self.lock:
            self.frames.add(file_id, frames)
            self.frames.finish_rebuild()
            if self.frames.pending >= self.config.index.rebuild_every:
                self.frames.start_rebuild()
        tombstone = self.store.tombstone(sha256, path)
        if not found and tombstone is None:
            self.store.clear_undecided(file_id)
            return None
        decision = decide(
            newcomer,
            [Candidate(records[i], d, kind) for i, (d, kind, _) in found.items()],
            policies=self.policies,
            default=self.default_policy,
            distinct=self.store.distinct_from(sha256),
            tombstone=tombstone,
            dry_run=self.config.dry_run,
            quarantine=self.config.quarantine.path is not None,
        )
        decision = _keeper_holds_the_clip(decision, newcomer.id, found)
        return self._settle(newcomer, sha256, path, self._respect_restores(newcomer, decision))

    def _hold_for_full_decode(self, newcomer: FileRecord, decision: Decision) -> str | None:
        """Why a decision on a match must wait, or None: it rests on a perceptual hash of an
        embedded thumbnail (the newcomer's, the target's or the keeper's), which shows only
        what the file claims. Those files are queued to be hashed again in full (`confirm`),
        the others first, the newcomer last, which then is decided again: what is finally
        decided (moved, or only reported) is what a full decode decides. An exact match (the
        same bytes) needs no confirmation, nor does anything when no file can move."""
        if decision.action == "none" or decision.dry_run or self.actions is None:
            return None
        if decision.kind == "exact":  # the same bytes: what a hash shows does not matter
            return None
        involved = {r.id: r for r in (newcomer, decision.target, decision.keeper) if r}
        thumbs = self.store.from_thumbnail(involved)
        if not thumbs:
            return None
        for r in involved.values():
            if r.id in thumbs and r.id != newcomer.id:
                self._confirm(r, decide=False)
        self._confirm(newcomer, decide=True)
        self.store.mark_stale(newcomer.id)  # hashed again next run if this one stops first
        names = ", ".join(sorted(str(involved[i].path) for i in thumbs))
        return (
            f"held: hashed from an embedded thumbnail ({names}); decided again after a full"
            " decode"
        )

    def _not_compared(self, entry: Entry, failure: Failure) -> Outcome | None:
        """A held newcomer whose worker timed out or died: it was hashed before, so the
        comparison (two more decodes, within the same time budget) is the likelier cause.
        Not recorded as its error (it would never be decided again while unchanged): each
        pair asked for is judged "not compared", and it is decided again from its record."""
        self._confirming.pop((entry.root, entry.relpath), None)
        record = self.store.record(entry.root, entry.relpath)
        if record is None or record.stat != entry.stat or not record.sha256:
            return None  # changed or gone: the reconcile hashes it again
        bits = self.store.hash_of(record.id, self.hasher.key)
        clip = self.store.video_frames(record.id, self.video_key) if bits is None else None
        if bits is None and clip is None:
            return None  # hashed with another hasher: the reconcile hashes it again
        log.warning(
            "pixels_not_compared", path=entry.path, error=failure.kind, detail=failure.message
        )
        why = f"the comparison's worker {failure.kind}: {failure.message}"
        for c in entry.compare:
            self._remember(record.sha256, c, Likeness(float("inf"), error=why))
        if clip is not None:
            return self._match_and_decide_clip(record.id, entry.path, record.sha256, clip.frames)
        assert bits is not None
        return self._match_and_decide(record.id, entry.path, bits, record.sha256, None)

    def _remember(self, sha256: str, counterpart: Counterpart, found: Likeness) -> None:
        """What comparing the photo with bytes `sha256` and `counterpart` found, for its
        decision (`_compared`); the oldest forgotten past LIKENESS_KEPT."""
        key = _likeness_key(sha256, counterpart)
        self._likeness[key] = found
        self._likeness.move_to_end(key)
        if len(self._likeness) > LIKENESS_KEPT:
            self._likeness.popitem(last=False)

    def _compared(
        self, newcomer: FileRecord, decision: Decision, detail: Mapping[str, Any] | None = None
    ) -> tuple[Decision, str | None]:
        """A near or crop match moves a file only once a worker compared the two photos'
        pixels (`dedupd.likeness`): the decision as that comparison judges it, or, before it
        was made, the decision and why it waits (the newcomer is queued to be hashed again in
        full and compared with the other file, then decided again). A dry run compares too:
        it previews what a real run does, pair by pair and in the same order.

        A crop is compared with the part of the larger frame it shows (`detail`: the crop
        stage's fit, its "box"): a crop with a sticker, a caption or its colours taken away is
        another picture, and its move would lose that (found by a red-team run)."""
        target, keeper = decision.target, decision.keeper
        if (
            not decision.acts
            or decision.kind not in ("near", "crop", "video")
            or target is None
            or keeper is None
            or newcomer.sha256 is None
        ):
            return decision, None
        other = keeper if target.id == newcomer.id else target
        transform = decision.transform or "identity"
        counterpart = Counterpart(str(other.path), other.stat, transform)
        if decision.kind == "crop":
            box = detail.get("box") if detail is not None else None
            if detail is None or not isinstance(box, (list, tuple)) or len(box) != 4:
                return replace(
                    decision,
                    action="report",
                    rule=f"no crop fit to compare the pixels by; {decision.rule}",
                ), None
            framed = detail.get("original") == other.id
            part = (float(box[0]), float(box[1]), float(box[2]), float(box[3]))
            counterpart = counterpart._replace(
                box=part, boxed="counterpart" if framed else "newcomer"
            )
        found = self._likeness.get(_likeness_key(newcomer.sha256, counterpart))
        if found is None:
            place = (newcomer.root, newcomer.relpath)
            entry = Entry(
                newcomer.root,
                newcomer.relpath,
                newcomer.stat,
                full_decode=True,
                compare=(counterpart,),
            )
            self._confirming[place] = True
            self._comparing[place] = (newcomer.id, entry)
            self._arrival.setdefault(newcomer.id, (1, next(self._arrivals)))
            # put off on purpose: no attempt that failed (a stop while held, three times,
            # would otherwise abandon its decision as one that crashes)
            self.store.deferred(newcomer.id)
            self.confirm.append(entry)
            what = "frames and sound" if decision.kind == "video" else "pixels"
            return decision, f"held: its {what} are compared with {other.path} first"
        from dedupd import cliplikeness, likeness

        moving_is_newcomer = target.id == newcomer.id
        if decision.kind == "video":
            why = cliplikeness.refusal(found, moving_is_newcomer=moving_is_newcomer)
            agree = "every moment's frame and sound are in the clip kept"
        else:
            why = likeness.refusal(found, moving_is_newcomer=moving_is_newcomer)
            agree = f"pixels agree ({found.worst:.1f}% of a cell at most)"
        if why is not None:
            return replace(decision, action="report", rule=f"{why}; {decision.rule}"), None
        return replace(decision, rule=f"{decision.rule}; {agree}"), None

    def _wait(
        self, newcomer: FileRecord, path: str, bits: bytes, held: Sequence[int]
    ) -> Outcome:
        """Put off `newcomer`'s decision: it matched `held` (not empty), files that came before
        it whose own decision waits (for their comparison, or for another's decision).
        Decided now, it would meet them as they are before their decision, or not at all:
        an exact copy of one would be left beside it for good. It is hashed and decided
        again once the one of them that came last is decided (`_decided`), and waits again
        for any still held then. Until then it is held too: indexed, so that a newcomer that
        matches it finds it and waits in turn, and with its 'deciding' note (the next start
        decides it if this one stops first)."""
        place = (newcomer.root, newcomer.relpath)
        entry = Entry(newcomer.root, newcomer.relpath, newcomer.stat, full_decode=True, waited=True)
        self._comparing[place] = (newcomer.id, entry)
        self._confirming[place] = True
        self._arrival.setdefault(newcomer.id, (1, next(self._arrivals)))
        self.store.deferred(newcomer.id)  # put off on purpose, as in `_compared`
        last = max(held, key=lambda i: self._arrival.get(i, (-1,)))
        self._waiting.setdefault(last, {})[place] = entry
        with self.lock:
            self.index.add([newcomer.id], [bits])
        self.index_crop_words(newcomer.id)
        names = ", ".join(sorted(str(r.path) for r in self._files(held).values()))
        why = f"held: it matches {names}, whose own decision is not made yet; decided after it"
        return self.apply(Decision("none", why), path, held=why)

    def _unhold(self, entry: Entry) -> int | None:
        """The file at `entry`'s place, if its hold waited for `entry` (and not for an entry
        queued since, by a rescan that hashed and held it again): held no more. Its id."""
        place = (entry.root, entry.relpath)
        hold = self._comparing.get(place)
        if hold is None or hold[1] is not entry:
            return None
        del self._comparing[place]
        return hold[0]

    def _to_come(self, file_id: int) -> bool:
        """Whether `file_id`'s decision is still to come: it is held (`_comparing`), or waits
        for a full decode (`_confirming`, a thumbnail's hold)."""
        if file_id in self._held():
            return True
        record = self.store.file(file_id)
        return record is not None and self._confirming.get((record.root, record.relpath)) is True

    def _decided(self, file_id: int) -> None:
        """`file_id`'s decision is made (or will not be in this run): it is held no more, and
        the newcomers that wait for it are queued to be hashed and decided again."""
        self._arrival.pop(file_id, None)
        self._met.pop(file_id, None)
        for place in [p for p, (i, _) in self._comparing.items() if i == file_id]:
            del self._comparing[place]
        self.confirm.extend(self._waiting.pop(file_id, {}).values())

    def _decide_where_it_went(self, entry: Entry, file_id: int) -> None:
        """Held file `file_id` was gone from `entry`'s path when hashed again, and its record
        with it: renamed meanwhile (the record followed, `Store.move`). Its decision is made
        at its new place, compared with what it was to be compared with."""
        record = self.store.file(file_id)
        if record is None or record.state != "ok" or record.sha256 is None:
            return  # deleted, or taken away: nothing to decide
        place = (record.root, record.relpath)
        if place in self._confirming or place in self._comparing:
            return  # queued there already
        log.info("held_file_moved", path=entry.path, dest=str(record.path))
        again = replace(entry, root=record.root, relpath=record.relpath, stat=record.stat)
        self._confirming[place] = True
        self._comparing[place] = (file_id, again)
        self.confirm.append(again)

    def dropped(self, entry: Entry) -> None:
        """`entry`'s result was not ingested (a newer version of the file was queued): a
        full decode's confirmation no longer waits for it."""
        if entry.full_decode:
            self._confirming.pop((entry.root, entry.relpath), None)
            # Held no more, but what waits for it still waits for its decision: the newer
            # version queued is decided (`_decided`), or the next start decides them all.
            self._unhold(entry)

    def _confirm(self, record: FileRecord, decide: bool) -> None:
        """Queue `record`'s full decode once while one is pending; `decide`: its own decision
        waits for it (never undone by another hold naming it)."""
        place = (record.root, record.relpath)
        pending = place in self._confirming
        self._confirming[place] = decide or self._confirming.get(place, False)
        if not pending:
            self.confirm.append(
                Entry(record.root, record.relpath, record.stat, full_decode=True)
            )

    def _still_of(self, target: FileRecord | None) -> FileRecord | None:
        """The Live Photo still whose motion file `target` is, if it is one: a decision to
        move the motion file alone (a duplicate clip whose still is not a duplicate) is
        only reported; the pair moves when its still does."""
        if target is None:
            return None
        return self.store.still_of(target.root, target.relpath)

    def _respect_restores(self, newcomer: FileRecord, decision: Decision) -> Decision:
        """A photo the user restored from quarantine is never acted on again (while its
        bytes are at that path): restoring said "keep this". The distinct mark a restore
        leaves cannot say so for an exact copy, whose bytes are its keeper's."""
        target = decision.target
        if not decision.acts or target is None or target.sha256 is None:
            return decision
        if not self.store.restored(target.sha256, target.path):
            return decision
        if target.id == newcomer.id:
            return replace(decision, action="none", rule="restored by the user", target=None)
        return replace(decision, action="report", rule="restored by the user; never acted on")

    def _respect_met(self, newcomer: FileRecord, decision: Decision) -> Decision:
        """A photo another root took over (`Store.adopt`) did not arrive: the files it was
        compared with already were decided on when it (or they) came, and taking its record
        over is no reason to act on one of the two now (a worse copy that came first would be
        quarantined as if it had followed the better one). Those it never met (the photos of
        two subfolders scanned alone, now under one root) are decided as arrivals are."""
        met = self._met.get(newcomer.id)  # until its decision is made: `_decided`
        if met is None or not decision.acts or decision.target is None:
            return decision
        other = decision.keeper if decision.target.id == newcomer.id else decision.target
        if other is None or other.id not in met:
            return decision
        return replace(
            decision,
            action="report",
            rule=f"{decision.rule}; compared before this folder took its record over: "
            "not acted on again",
        )

    def _isometric(self, root: str) -> bool:
        return self.policies.get(root, self.default_policy).isometric

    def _near(
        self, root: str, bits: bytes, variants: Sequence[bytes] | None
    ) -> list[tuple[int, int, Transform]]:
        """(id, distance, transform) of the indexed photos near a newcomer under `root`: with
        an isometric policy and the newcomer's `variants`, near any of its 8 rotations and
        mirrors (one pass over the index; a turned match within the tighter turned radius),
        and `transform` takes the match to the newcomer; else upright only."""
        from dedupd.index import distance  # numpy, as for the index itself

        radius = self.radius_for(root)
        with self.lock:
            if not (self._isometric(root) and variants):
                return [(m.id, m.distance, "identity") for m in self.index.radius(bits, radius)]
            found = self.index.radius_any(variants, radius)
        turned = self.turned_radius_for(root)
        out: list[tuple[int, int, Transform]] = []
        for m in found:
            if m.variant == 0 or m.distance <= turned:
                # variant v is TRANSFORMS[v] of the newcomer ≈ the match, so the newcomer is
                # the match under the inverse transform
                out.append((m.id, m.distance, INVERSE[TRANSFORMS[m.variant]]))
                continue
            # Too far for a turned match; its upright distance may still be a match (the
            # index named only the nearest variant).
            other = self.store.hash_of(m.id, self.hasher.key)
            upright = distance(bits, other) if other is not None else radius + 1
            if upright <= radius:
                out.append((m.id, upright, "identity"))
        return out

    def turned_radius_for(self, root: str) -> int:
        """The radius in bits for a match through a rotation or mirror under `root`: the
        hasher's calibrated turned threshold, or the policy's own if lower."""
        threshold = min(self.threshold_for(root), self.hasher.turned_threshold)
        return self.hasher.radius(threshold)

    def _second_opinions(
        self, file_id: int, near: dict[int, Transform]
    ) -> dict[int, SecondOpinion]:
        """What the second hasher says of each near candidate (id → the transform that takes
        it to the newcomer `file_id`), and how much detail the two images have (PDQ's quality
        and dominant-tone share, from whichever hasher is PDQ): read from SQLite for these
        few files only. For a rotated or mirrored match the newcomer's hash under the same
        turn is compared (stored with its hash); without one the second hasher cannot agree."""
        if not near:
            return {}
        from dedupd.index import distance  # numpy, as for the index itself

        second = self.second
        rated = self.hasher if self.hasher.rates_quality else second
        ids = [file_id, *near]
        theirs = self.store.rated_hashes(ids, second.key)
        detail = theirs if rated is second else self.store.rated_hashes(ids, rated.key)
        mine, my_detail = theirs.get(file_id), detail.get(file_id)
        out = {}
        for i, t in near.items():
            other, measured = theirs.get(i), detail.get(i)
            turned: bytes | None = None
            if mine is not None:
                # the candidate is the newcomer under INVERSE[t]: compare that variant
                v = TRANSFORMS.index(INVERSE[t])
                turned = mine.bits if v == 0 else (mine.variants[v] if mine.variants else None)
            qualities = [
                m.quality for m in (my_detail, measured) if m is not None and m.quality is not None
            ]
            shares = [
                m.dominant
                for m in (my_detail, measured)
                if m is not None and m.dominant is not None
            ]
            out[i] = SecondOpinion(
                hasher=second.algorithm,
                distance=distance(turned, other.bits) if turned and other else None,
                radius=second.radius(second.default_threshold),
                quality=min(qualities, default=None),
                dominant=max(shares, default=None),
            )
        return out

    def apply(
        self,
        decision: Decision,
        path: str,
        detail: dict[str, Any] | None = None,
        *,
        held: str | None = None,
    ) -> Outcome:
        """Carry out a decision through `actions` (or not, when `held` says why it waits),
        and log one event for it (with what the matcher measured, `detail`, for a crop)."""
        result = "reported"
        if held is not None:
            result = held
        elif decision.acts and decision.dry_run:
            result = "dry run"
            if decision.target is not None:
                self._gone_in_preview.add(decision.target.id)
                self.unindex([decision.target.id])
        elif decision.acts and self.actions is None:
            result = "reported (read-only)"
        elif decision.acts and (still := self._still_of(decision.target)) is not None:
            result = f"reported: the motion file of Live Photo {still.path}; never moved alone"
        elif decision.acts and (name := _photo_beside(decision.target)) is not None:
            # Not paired yet: the movie settled (and was decided) before its still was hashed.
            result = (
                f"reported: it may be the motion file of Live Photo {name} beside it (not "
                "hashed yet); never moved alone"
            )
        elif decision.acts and decision.target is not None and self.actions is not None:
            target = decision.target
            self.store.commit()  # the records this decision rests on, before any file moves
            try:
                if decision.action == "delete" and decision.keeper is not None:
                    try:
                        action_id = self.actions.delete(target, decision.keeper, decision.rule)
                    except (MotionNotIdentical, KeeperElsewhere) as exc:
                        # Not provably a copy of a file that stays: its Live Photo motion
                        # file differs from the kept one (the two go together), or the
                        # keeper, seen by descriptor, is on another filesystem (which may
                        # show this very file) or another user's. Restorable instead, or
                        # left in place.
                        if self.actions.quarantine_dir is None:
                            raise
                        live = isinstance(exc, MotionNotIdentical)
                        log.info(
                            "live_photo_quarantined_not_deleted"
                            if live
                            else "quarantined_not_deleted",
                            reason=str(exc),
                        )
                        why = (
                            exc.why
                            if isinstance(exc, KeeperElsewhere)
                            else "its Live Photo motion file has no identical copy"
                        )
                        # What was done is what is logged and reported: a quarantine
                        decision = replace(
                            decision,
                            action="quarantine",
                            rule=f"{decision.rule}; quarantined, not deleted: {why}",
                        )
                        action_id = self.actions.quarantine(
                            target, decision.keeper, decision.distance, decision.rule
                        )
                else:
                    action_id = self.actions.quarantine(
                        target, decision.keeper, decision.distance, decision.rule
                    )
                gone = [target.id]
                motion = self.actions.motion_record(action_id)
                if motion is not None:
                    gone.append(motion.id)  # a Live Photo's motion file, moved with it
                self.unindex(gone)
                result = "done"
            except ActionError as exc:
                result = f"failed: {exc}"
        log.info(
            "decision",
            path=path,
            action=decision.action,
            result=result,
            rule=decision.rule,
            target=str(decision.target.path) if decision.target else None,
            keeper=str(decision.keeper.path) if decision.keeper else None,
            distance=decision.distance,
            kind=decision.kind,
            transform=decision.transform,
            **({"crop": detail} if detail is not None else {}),
        )
        return Outcome(path, decision, result)


# What a Live Photo's still is saved as (the formats `imaging.hash_image` pairs).
_STILL_EXTENSIONS = frozenset(("heic", "heif", "jpg", "jpeg"))


def _photo_beside(target: FileRecord | None) -> str | None:
    """The name of a photo beside `target` whose Live Photo motion file `target` could be by
    name (`IMG_1.HEIC` beside `IMG_1.MOV`, any case), when `target` is a movie of a motion
    file's size; None otherwise, or when its folder cannot be listed. A movie that settles
    before its still is hashed is paired with nothing yet, and a decision on it alone would
    part the two (found by a red-team run)."""
    from dedupd.live import MAX_MOTION_BYTES, MOTION_SUFFIXES

    if target is None or target.size > MAX_MOTION_BYTES:
        return None
    stem, suffix = os.path.splitext(target.relpath)
    if suffix.casefold() not in MOTION_SUFFIXES:
        return None
    folder = os.path.dirname(target.path)
    try:
        with safefs.directory(folder) as fd:
            names = os.listdir(fd)
    except (OSError, DedupdError):
        return None
    mine = os.path.basename(stem).casefold()
    for name in sorted(names):
        base, ext = os.path.splitext(name)
        if base.casefold() == mine and ext[1:].casefold() in _STILL_EXTENSIONS:
            return name
    return None


def _likeness_key(sha256: str, counterpart: Counterpart) -> tuple[str, str, FileStat, str]:
    """What a pixel comparison is remembered by (`Ingest._likeness`): the newcomer's bytes,
    the counterpart's version and turn, and for a crop which of the two is the larger frame
    (not the fit's box, which a second look at the crop may find a pixel apart)."""
    how = counterpart.transform
    if counterpart.box is not None:
        how = f"{how}:crop:{counterpart.boxed}"
    return sha256, counterpart.path, counterpart.stat, how


# A clip moves (into quarantine) only when the clip kept holds this share of its frames at
# least: "the same video" (SAME_SHARE of each clip's frames) allows a re-cut, and two takes
# that share their first seconds are the same video by that measure, but the one moved held
# seconds the other lacks, and a purge then deleted them (found by a red-team run).
WHOLE_CLIP_SHARE = 0.95
# ... and only when it runs no longer than the clip kept, give or take this much (a re-encode
# may gain or lose a few frames at either end): frames are sampled once a second, and flat or
# repeated ones are not counted, so 12 s of a still scene or a dark one added to a clip
# counted as one frame, or none, and the longer clip moved (found by a red-team run).
CLIP_LONGER_BY = 0.5  # seconds, beyond WHOLE_CLIP_SHARE of the kept clip's length


def _keeper_holds_the_clip(
    decision: Decision,
    newcomer_id: int,
    found: Mapping[int, tuple[int, MatchKind, Mapping[str, object] | None]],
) -> Decision:
    """`decision`, or a report in its place when it would move a clip ("video" match) whose
    frames the keeper does not hold (nearly) all of: only reported, saying how much."""
    if not decision.acts or decision.kind != "video":
        return decision
    if decision.target is None or decision.keeper is None:
        return decision
    if decision.target.id == newcomer_id:  # the newcomer moves: its own frames matched
        match, matched, frames = found.get(decision.keeper.id), "matched", "frames"
    else:  # the clip matched moves: its frames the newcomer holds
        match, matched, frames = found.get(decision.target.id), "other_matched", "other_frames"
    detail = match[2] if match is not None else None
    if not detail or not detail.get(frames):
        return decision
    share = int(detail[matched]) / int(detail[frames])  # type: ignore[call-overload]
    if share < WHOLE_CLIP_SHARE:
        return replace(
            decision,
            action="report",
            rule=f"not moved: {share:.0%} of its frames are in the clip kept, which lacks the "
            f"rest; {decision.rule}",
        )
    moving, kept = decision.target.duration, decision.keeper.duration
    if moving is None or kept is None:
        return replace(
            decision,
            action="report",
            rule=f"not moved: the length of a clip is unknown; {decision.rule}",
        )
    if moving > kept / WHOLE_CLIP_SHARE + CLIP_LONGER_BY:
        return replace(
            decision,
            action="report",
            rule=f"not moved: it runs {moving:.1f} s, the clip kept {kept:.1f} s; "
            f"{decision.rule}",
        )
    return decision


@dataclass(slots=True)
class ScanReport:
    roots: list[str]
    files: int = 0
    hashed: int = 0
    unchanged: int = 0
    renamed: int = 0
    missing: int = 0
    failed: list[tuple[str, Failure]] = field(default_factory=list)  # this run
    unavailable: list[tuple[str, str]] = field(default_factory=list)
    # Folders inside a root that could not be read (permissions): their photos were not
    # looked at, and their records kept as they were.
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    groups: list[Group] = field(default_factory=list)
    outcomes: list[Outcome] = field(default_factory=list)
    seconds: float = 0.0


def _resolution(
    scale: float, crop: tuple[FileRecord, Features], original: tuple[FileRecord, Features]
) -> float:
    """Pixels of the original's file per pixel of the crop's, along a side, over the part they
    share: the fitted scale (crop's reduced px → original's reduced px) times each file's
    reduction to the image its features were found on (JPEG draft decoding makes that 400 to
    512 px). 0 when a size is unknown: never confirmed."""

    def reduction(r: FileRecord, f: Features) -> float:  # file px per reduced px
        side, reduced = max(r.width or 0, r.height or 0), max(f.width, f.height)
        return side / reduced if side and reduced else 0.0

    crop_px = reduction(*crop)
    return scale * reduction(*original) / crop_px if crop_px else 0.0


def _feature_words(
    path: Path, roots: Sequence[str], stop: Callable[[], bool] = lambda: False
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.uint16]]:
    """What the crop index loads at start (`Store.feature_words`), through a read-only
    connection of the loading thread's own; `stop()` cancels it between chunks."""
    from dedupd.features import FEATURES_KEY

    with Store(path, readonly=True) as store:
        return store.feature_words(FEATURES_KEY, roots, stop)


def _about(detail: dict[str, object] | None, file_id: int, other: int) -> dict[str, object] | None:
    """A clip match's detail as stored: it names the clip it describes (`file`) and, for a
    clip inside another, the one that holds the other (`container`)."""
    if detail is None:
        return None
    out = {k: v for k, v in detail.items() if k != "inside"}
    out["file"], out["other"] = file_id, other
    if "inside" in detail:
        out["container"] = file_id if detail["inside"] == "other" else other
    return out


def _unchanged(record: FileRecord) -> bool:
    """The file at `record`'s path is still the version recorded (else a reconcile hashes it
    again, and nothing is decided on the old record)."""
    try:
        return same_version(record, FileStat.of(os.lstat(record.path)))
    except OSError:
        return False


def excluded_dirs(config: Config) -> list[str]:
    """Folders never scanned or watched, even inside a root: the quarantine, the roots'
    staging folders, and the database's folder when it lies inside a root (a state folder
    kept in the photo tree). A database folder that holds roots is not excluded: its own
    files are no photos. Their links are resolved as roots' are (`safefs.trusted_path`): a
    link another user planted in place of the quarantine leads nowhere to exclude."""
    database_dir = str(safefs.trusted_path(config.database.parent))
    roots = [root_key(r.path) for r in config.roots]
    exclude = []
    if not any(r == database_dir or r.startswith(database_dir + os.sep) for r in roots):
        exclude.append(database_dir)
    if config.quarantine.path is not None:
        exclude.append(str(safefs.trusted_path(config.quarantine.path)))
    # Each root's private staging folder: a file there is mid-action, never a new photo.
    exclude += [os.path.join(r, STAGING_DIR) for r in roots]
    return exclude


@dataclass(slots=True)
class Reconciled:
    work: list[Entry]  # to hash, oldest first
    gone: list[int]  # ids that left the index (deleted, or replaced by a rename)
    revived: list[int]  # to index again: marked missing and back (a move), moved, adopted
    awaiting: list[tuple[int, Entry]] = field(default_factory=list)  # in `work`: decide
    moved: list[int] = field(default_factory=list)  # moved into another root, adopted: decide


def stored_keys(config: Config) -> tuple[tuple[str, str], str, str | None]:
    """What every photo's record must hold under `config` (else it is decoded again once,
    `Store.unhashed`): its hashers' keys (a file hashed before the second opinion existed
    lacks its hash), a clip's frames' key, and with the crop stage on its features' kind
    (crops were off, or their kind changed: decoded again, so that crops of it are
    found)."""
    from dedupd.features import FEATURES_KEY

    hasher = Hasher(config.hashing.algorithm, config.hashing.hash_size)
    clips = video_key(hasher, config.hashing.video_fps)
    features = FEATURES_KEY if config.hashing.crops else None
    return (hasher.key, second_opinion(hasher).key), clips, features


def _present_count(store: Store, root: str) -> int:
    """How many files `store.files_in(root)` would return (those hashed or failed)."""
    return sum(n for state, n in store.count_by_state([root]).items() if state in ("ok", "error"))


def _present(records: Iterable[tuple[FileRecord, str]]) -> int:
    """How many of `records` are of files present when last seen (hashed or failed)."""
    return sum(r.state in ("ok", "error") for r, _ in records)


def reconcile_roots(
    config: Config,
    store: Store,
    roots: Sequence[str],
    report: ScanReport,
    tick: Callable[[], object] = lambda: None,
) -> Reconciled:
    """Walk `roots`, follow renames and mark deletions in the store.

    `tick` is called every few thousand files (the daemon pings systemd's watchdog).
    Work is sorted oldest first, so that on a first scan "the newcomer" is the later copy.
    A root that is missing or unreadable, or empty while photos are recorded in it (an
    unmounted disk's mount point), is reported unavailable and its records stay as they are.
    Every root is walked before any is written: a photo moved from one root into another is
    followed as a rename whichever of them `roots` lists first (`Store.move` then notes it
    to be decided under its new root's policy).
    """
    names = NameFilter(config.watch)
    exclude = excluded_dirs(config)
    hasher_keys, clips, features = stored_keys(config)
    done = Reconciled([], [], [])
    plans: list[tuple[str, Plan]] = []
    revived: set[int] = set()  # records marked missing taken by a name: one name each
    for root in roots:
        try:
            entries = []
            unreadable: list[tuple[str, str]] = []
            for entry in walk(root, names, exclude, unreadable):
                entries.append(entry)
                if len(entries) % 4096 == 0:
                    tick()  # a walk of a large library on a slow disk takes a while
            unread = tuple(folder + os.sep for folder, _ in unreadable)  # prefixes of them
            # Counted, not read: at a million records, reading them all (as files_in does)
            # took 9 s and 1 GB just to learn that the folder looks unmounted. Those other
            # roots keep under it count too (it was scanned inside a parent before).
            nested = _in_view(store.nested_records(root), root, names, exclude)
            # A folder it could not read is there, and maybe the photos recorded in it: the
            # others, none found, still tell an empty mount point (or another disk there,
            # holding only a lost+found this user may not read).
            # Nor do the root's records under a folder its walk skips (a quarantine moved
            # onto a folder of the root, say): no photos of the root, marked missing below
            # as any record the walk does not find; never a reason to keep them indexed.
            skipped = _outermost([f for f in exclude if f.startswith(root.rstrip(os.sep) + os.sep)])
            recorded = 0
            if not entries and unread:
                hidden = tuple(f + os.sep for f in skipped) + unread
                recorded = sum(
                    not str(r.path).startswith(hidden)
                    for r in [*store.files_in(root).values(), *(r for r, _ in nested)]
                    if r.state in ("ok", "error")
                )
            elif not entries:
                recorded = _present_count(store, root) + _present(nested)
                if recorded:
                    recorded -= sum(
                        store.count_present_under(root, os.path.relpath(f, root)) for f in skipped
                    )
            if recorded:
                raise NotFoundError(
                    f"{root}: empty, but {recorded} photos are recorded there; treated as "
                    "unmounted and their records kept"
                )
        except NotFoundError as exc:
            report.unavailable.append((root, str(exc)))
            log.warning("root_unavailable", root=root, reason=str(exc))
            continue
        report.roots.append(root)
        report.files += len(entries)
        for folder, why in unreadable:
            log.warning("folder_unreadable", folder=folder, reason=why)
        report.unreadable += unreadable
        done.gone += _adopt_nested(store, root, nested, entries, done)
        for record, attempts in store.abandon_deciding(root):
            log.warning(
                "decision_abandoned",
                path=str(record.path),
                attempts=attempts,
                detail="dedupd stopped while deciding this file each time it was recorded "
                "(a crash in its decision, or kills); it stays in place, undecided, until "
                "it changes",
            )
        plan = reconcile(store, root, entries, hasher_keys, clips, features, revived)
        if unread:  # not looked at, not gone: kept as they were, as an unmounted root's
            plan.missing = [r for r in plan.missing if not str(r.path).startswith(unread)]
        plans.append((root, plan))
    moved_in = _moves_between(store, plans)
    for root, plan in plans:
        for record, entry in plan.renamed:
            done.gone += store.move(record.id, entry.root, entry.relpath, entry.stat)
            if record.state == "missing":
                done.revived.append(record.id)
            if record.root != root:  # seen missing by an earlier run, or by the daemon
                done.moved.append(record.id)
        for record, entry in moved_in.get(root, []):
            done.gone += store.move(record.id, entry.root, entry.relpath, entry.stat)
            done.moved.append(record.id)
            done.revived.append(record.id)  # indexed, if its old root was not the daemon's
            # Hashed under its old root's needs: what its new one lacks is hashed again once.
            if store.unhashed(root, hasher_keys, clips, features, ids=[record.id]):
                lacks_main = bool(store.unhashed(root, hasher_keys[0], clips, ids=[record.id]))
                again = replace(entry, rehash="decide" if lacks_main else "fill")
                plan.rehash.append(again)
                if lacks_main:
                    plan.awaiting.append((record.id, again))
        store.mark_missing(r.id for r in plan.missing)
        done.gone += [r.id for r in plan.missing]
        # Back at its own path (restored from quarantine, a disk remounted): no rename.
        back = sum(r.root == e.root and r.relpath == e.relpath for r, e in plan.renamed)
        report.unchanged += plan.unchanged + back
        report.renamed += len(plan.renamed) - back + len(moved_in.get(root, []))
        report.missing += len(plan.missing)
        done.work += plan.to_hash
        done.awaiting += plan.awaiting
    done.work.sort(key=lambda e: (e.stat.mtime_ns, e.path))
    return done


def _outermost(folders: Sequence[str]) -> list[str]:
    """Those of `folders` (absolute, normalized) that no other one of them holds."""
    return [
        f for f in folders if not any(f.startswith(o + os.sep) for o in folders if o != f)
    ]


def _in_view(
    records: Iterable[FileRecord], root: str, names: NameFilter, exclude: Sequence[str]
) -> list[tuple[FileRecord, str]]:
    """Those of `records` (under `root`) that a walk of `root` can see, with their path
    relative to it: not under an excluded or ignored folder, and of a wanted name."""
    excluded = [p + os.sep for p in exclude]  # resolved (`excluded_dirs`)
    seen: list[tuple[FileRecord, str]] = []
    for record in records:
        path = str(record.path)
        relpath = os.path.relpath(path, root)
        *folders, name = relpath.split(os.sep)
        if (
            names.wanted(name)
            and not any(names.ignored(f) for f in folders)
            and not any(path.startswith(x) for x in excluded)
        ):
            seen.append((record, relpath))
    return seen


def _adopt_nested(
    store: Store,
    root: str,
    nested: Sequence[tuple[FileRecord, str]],
    entries: Sequence[Entry],
    done: Reconciled,
) -> list[int]:
    """Make the records of files under `root` that another root keeps (a parent folder or a
    subfolder of it, scanned as a root before) `root`'s own, before its walk is compared
    with them: its unchanged photos are then neither decoded again nor recorded twice, and
    its deletions and renames are followed. `nested`: those the walk can see (`_in_view`:
    the others would look deleted). Not those of a subfolder scanned as a root before in
    which the walk (`entries`) found nothing: an unmounted disk's mount point, as for a root
    (its records stay as they are, never marked deleted). The adopted photos are indexed
    (their old root may not be one the daemon indexed) and decided again under this root's
    policy (`Store.adopt`); the ids of duplicate records dropped are returned."""
    below = root.rstrip(os.sep) + os.sep
    held = {r.root for r, _ in nested if r.root.startswith(below) and r.state != "missing"}
    away = {
        other
        for other in held
        if not any(e.relpath.startswith(os.path.relpath(other, root) + os.sep) for e in entries)
    }
    for other in sorted(away):
        log.warning(
            "records_not_adopted",
            root=root,
            folder=other,
            reason="empty or missing, but photos are recorded there; treated as unmounted "
            "and their records kept",
        )
    taken = [(r, relpath) for r, relpath in nested if r.root not in away]
    if not taken:
        return []
    # In the order they were first seen: `redecide` takes them in the order noted, so that
    # each is decided, as when it arrived, after those that came before it.
    taken.sort(key=lambda t: (t[0].first_seen, t[0].id))
    dropped = store.adopt(root, [(r.id, relpath) for r, relpath in taken])
    adopted = [r.id for r, _ in taken if r.state == "ok" and r.id not in dropped]
    done.revived += adopted
    done.moved += adopted  # decided under this root's policy, as photos moved into it
    log.info("records_adopted", root=root, files=len(taken), duplicates_dropped=len(dropped))
    return dropped


def _moves_between(
    store: Store, plans: Sequence[tuple[str, Plan]]
) -> dict[str, list[tuple[FileRecord, Entry]]]:
    """Photos that left one root and appeared in another (same dev, inode, size, mtime_ns:
    `same_version`), returned by the root they moved into and taken out of its `new`: those
    whose old root was walked now (taken out of its `missing` too), and those whose old root
    was not (a reconcile of some roots, a root unavailable): a record elsewhere whose path no
    longer holds the file (`moved_from`)."""
    left: dict[FileStat, list[FileRecord]] = {}  # several: hard links of one file
    for _, plan in plans:
        for r in plan.missing:
            if r.error_kind != VANISHED:
                left.setdefault(r.stat, []).append(r)
    walked = {root for root, _ in plans}
    claimed: set[int] = set()
    moved: dict[str, list[tuple[FileRecord, Entry]]] = {}
    for root, plan in plans:
        arrived = []
        for entry in plan.new:
            elsewhere = [r for r in left.get(entry.stat, []) if r.root != root]
            if elsewhere:
                left[entry.stat].remove(elsewhere[0])
                record: FileRecord | None = elsewhere[0]
            else:
                record = moved_from(store, entry.stat, not_in=walked, claimed=claimed)
            if record is None:
                arrived.append(entry)
            else:
                claimed.add(record.id)
                moved.setdefault(root, []).append((record, entry))
        plan.new = arrived
    for _, plan in plans:
        plan.missing = [r for r in plan.missing if r.id not in claimed]
    return moved


def moved_from(
    store: Store, stat: FileStat, *, not_in: Collection[str] = (), claimed: Collection[int] = ()
) -> FileRecord | None:
    """A present record of this very file (`same_version`: dev, inode, size, mtime_ns) at a
    path that no longer holds it: a move whose old path nobody has looked at yet (its root
    was not walked, or the watch's delete has not arrived). The same inode still at the
    record's path is a hard link instead, never a move; so is a path that cannot be looked
    at (permission, I/O), and a path whose filesystem is not mounted (its nearest folder
    that exists is on another device: another filesystem that reuses the device number,
    a clone's or a network mount's, is not where that photo went). Records under `not_in`
    (roots walked in this pass: classified already) and ids in `claimed` are passed over."""
    for record in store.present_with_stat(stat):
        if record.root in not_in or record.id in claimed:
            continue
        try:
            st = os.lstat(record.path)
        except (FileNotFoundError, NotADirectoryError):
            if _nearest_device(record.path) == stat.dev:
                return record  # its filesystem is there, and the name is gone: moved
            continue
        except OSError:
            continue
        if (st.st_dev, st.st_ino) != (stat.dev, stat.inode):
            return record  # another file took the name
    return None


def _nearest_device(path: Path) -> int | None:
    """st_dev of the nearest folder above `path` that exists (None if none can be read)."""
    for parent in path.parents:
        try:
            return os.stat(parent).st_dev
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError:
            return None
    return None


def start_pool(config: Config, hasher: Hasher, work: Work = hash_file) -> HasherPool:
    """The hasher pool `config.hashing` asks for (workers, pixel limit, per-file timeout)."""
    h = config.hashing
    if work is hash_file:  # the default work: clips sampled at the configured rate, and
        # local features only when the crop stage is on
        work = functools.partial(hash_file, video_fps=h.video_fps, features=h.crops)
    return HasherPool(
        [hasher, second_opinion(hasher)],
        workers=h.workers,
        max_pixels=h.max_pixels,
        timeout=h.timeout,
        work=work,
    )


def ingest_guarded(
    ingest: Ingest, entry: Entry, result: HashedImage | HashedVideo | Failure
) -> tuple[Outcome | None, HashedImage | HashedVideo | Failure]:
    """`ingest.ingest`, where one bad file is one recorded error, never a lost batch: an
    unexpected exception is recorded as that file's `internal` failure (which is returned in
    place of its result). If even that cannot be written (the database is locked), it is
    logged and the next reconcile tries the file again."""
    try:
        return ingest.ingest(entry, result), result
    except Interrupted:
        raise  # not this file's failure: it is decided by the next start
    except Exception as exc:
        log.exception("ingest_failed", path=entry.path)
        failure = Failure("internal", f"{type(exc).__name__}: {exc}")
        try:
            ingest.ingest(entry, failure)  # records the error, drops the file from the index
        except Exception:
            log.exception("ingest_error_not_recorded", path=entry.path)
        return None, failure


def ingest_all(
    ingest: Ingest,
    work: Sequence[Entry],
    report: ScanReport,
    progress: Progress | None = None,
    stop: Callable[[], bool] = lambda: False,
    pool: HasherPool | None = None,
) -> None:
    """Hash `work` in `pool` (one of its own if None) and ingest each result into `report` as
    it finishes, until done or `stop()`; files still in the pool then are left for the next
    reconcile."""
    own = pool is None
    pool = start_pool(ingest.config, ingest.hasher) if pool is None else pool
    todo = iter(work)
    window = 4 * pool.capacity  # bounded, so a stop() does not leave thousands queued
    try:
        while True:
            while pool.in_flight < window and (entry := _next(ingest, todo)) is not None:
                pool.submit(entry)
            if not pool.in_flight:
                return
            for entry, result in pool.results(timeout=1.0):
                outcome, result = ingest_guarded(ingest, entry, result)
                if entry.full_decode:  # what a held decision came to replaces it
                    report.outcomes = [
                        o for o in report.outcomes if not _held_at(o, entry.path)
                    ]
                if outcome is not None and outcome.decision.action != "none":
                    report.outcomes.append(outcome)
                if entry.again:
                    pass  # a held decision's file hashed again: counted when first hashed
                elif isinstance(result, Failure):
                    report.failed.append((entry.path, result))
                else:
                    report.hashed += 1
                if progress:
                    progress(1)
                if stop():
                    return
    finally:
        if own:
            pool.close()


def _held_at(outcome: Outcome, path: str) -> bool:
    return outcome.path == path and outcome.result.startswith("held")


def _next(ingest: Ingest, todo: Iterator[Entry]) -> Entry | None:
    """The next file to hash: a held match's confirmation first, then the work."""
    return ingest.confirm.popleft() if ingest.confirm else next(todo, None)


def scan(
    config: Config,
    store: Store,
    *,
    on_total: Callable[[int], None] | None = None,
    progress: Progress | None = None,
    actions: Actions | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> ScanReport:
    """Reconcile every configured root, hash what changed, apply policies (with `actions`)
    and report duplicate groups."""
    started = clock()
    report = ScanReport(roots=[])
    done = reconcile_roots(config, store, [root_key(r.path) for r in config.roots], report)
    work = done.work
    ingest = Ingest(store, config, report.roots, actions)
    ingest.await_decisions(done.awaiting)
    if on_total:
        on_total(len(work))
    try:
        with store.batch():  # a commit per photo cost more than the store work itself
            # Files decided before this run come first, in their order; then the new work.
            report.outcomes += [o for o in ingest.redecide() if o.decision.action != "none"]
            ingest_all(ingest, work, report, progress)
    finally:
        ingest.close()
    report.groups = duplicate_groups(store, config, report.roots)
    report.seconds = clock() - started
    return report


def _linked(
    r: FileRecord,
    others: Sequence[FileRecord],
    edges: Mapping[tuple[int, int], tuple[int, Transform, MatchKind]],
    crops: Mapping[tuple[int, int], tuple[int, dict[str, Any]]],
    hasher: Hasher,
) -> Member:
    """A group member matched with the keeper only through other members: listed with its
    own match with one of them (the nearest), not as a near copy of the keeper at whatever
    distance their hashes are (a crop of a near copy read "near 134/256")."""
    found: list[Member] = []
    for o in others:
        if (o.id, r.id) in edges or (r.id, o.id) in edges:
            d, t, kind = edges.get((o.id, r.id)) or edges[r.id, o.id]
            kind = "near" if kind == "exact" and o.sha256 != r.sha256 else kind
            found.append(Member(r, d, kind, t if o.id < r.id else INVERSE[t], via=o))
        elif (pair := (min(o.id, r.id), max(o.id, r.id))) in crops:
            d, detail = crops[pair]
            found.append(Member(r, d, "crop", detail=detail, via=o))
    if not found:  # linked through members that are not listed (cannot happen: connected)
        return Member(r, hasher.bits, "near")
    return min(found, key=lambda m: (m.kind == "crop", m.distance, str(m.via and m.via.path)))


def duplicate_groups(store: Store, config: Config, roots: Sequence[str]) -> list[Group]:
    """Connected groups of matching files, keeper first: a file of a `reference` root when
    the group has one (such files are always the keeper), then by the keep rules.

    What the user decided is not listed: a pair marked distinct is no link, so a group held
    together only by it splits; a photo restored from quarantine is no duplicate of its
    keeper nor of a copy of the same bytes (restoring said "keep this")."""
    hasher = Hasher(config.hashing.algorithm, config.hashing.hash_size)
    # (a, b) → (distance, transform, kind), b = transform(a); photos' and clips' matches
    clips = video_key(hasher, config.hashing.video_fps)
    edges: dict[tuple[int, int], tuple[int, Transform, MatchKind]] = {
        (a, b): (d, t, kind)
        for key in (hasher.key, clips)
        for a, b, d, kind, t in store.match_edges(key, roots)
    }
    from dedupd.features import FEATURES_KEY

    # Crop pairs link groups too, unless the pair is also an exact or near match (near wins).
    crops: dict[tuple[int, int], tuple[int, dict[str, Any]]] = {
        (a, b): (d, detail or {})
        for a, b, d, _, _, detail in store.match_edges_detail(FEATURES_KEY, roots)
        if (a, b) not in edges
    }
    cropped = {detail.get("crop") for _, detail in crops.values()}
    records = store.files({i for edge in [*edges, *crops] for i in edge})
    kept: dict[int, tuple[str, int | None]] = {}  # restored file id → (its sha256, its keeper)
    for path, sha256, keeper_id in store.restores():
        restored = store.file_at(path)
        if restored is not None and restored.id in records and restored.sha256 == sha256:
            kept[restored.id] = (sha256, keeper_id)

    def unlisted(x: int, y: int) -> bool:
        sha256, keeper_id = kept.get(x, (None, None))
        return sha256 is not None and (records[y].sha256 == sha256 or y == keeper_id)

    parent: dict[int, int] = {}

    def find(x: int) -> int:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in [*edges, *crops]:
        if not (unlisted(a, b) or unlisted(b, a)):
            parent[find(a)] = find(b)
    members: dict[int, list[int]] = {}
    for x in list(parent):
        members.setdefault(find(x), []).append(x)
    policies = config.root_policies()
    default = config.policies[DEFAULT_POLICY]
    groups = []
    for ids in members.values():
        files = sorted((records[i] for i in ids), key=lambda r: str(r.path))
        reference = [r for r in files if policies.get(r.root, default).reference]
        others = [r for r in files if r not in reference]
        keep_rules = policies.get((others or files)[0].root, default).keep
        # A crop is no group's keeper while a larger frame of it is there.
        framed = [r for r in others if r.id not in cropped]
        crops_only = [r for r in others if r.id in cropped]
        keeper, *rest = (
            rank(reference, keep_rules) + rank(framed, keep_rules) + rank(crops_only, keep_rules)
        )
        dups = []
        for r in rest:
            if r.sha256 == keeper.sha256:
                dups.append(Member(r, 0, "exact"))
            elif (keeper.id, r.id) in edges or (r.id, keeper.id) in edges:
                # The match itself, which may be rotated or mirrored: the upright hashes of a
                # turned copy are far apart.
                d, t, kind = edges.get((keeper.id, r.id)) or edges[r.id, keeper.id]
                kind = "near" if kind == "exact" else kind  # bytes differ from the keeper's
                dups.append(Member(r, d, kind, t if keeper.id < r.id else INVERSE[t]))
            elif (pair := (min(keeper.id, r.id), max(keeper.id, r.id))) in crops:
                d, detail = crops[pair]
                dups.append(Member(r, d, "crop", detail=detail))
            else:
                dups.append(_linked(r, [m for m in rest if m is not r], edges, crops, hasher))
        dups.sort(key=lambda m: (m.distance, str(m.record.path)))
        groups.append(Group(keeper, tuple(dups)))
    return sorted(groups, key=lambda g: str(g.keeper.path))
