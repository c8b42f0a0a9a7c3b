"""Query latency, build time and memory of both `dedupd.index` backends (hamming, ckdtree),
with faiss-cpu's ``IndexBinaryFlat`` as an outside reference.

Data: random hashes from ``numpy.random.default_rng([SEED, size, bits])``, ``bits / 8`` bytes
each, ids 0..size-1. Queries are existing hashes with 1..radius distinct random bits flipped,
so every radius query finds at least its source; radius = int(0.1 * bits).

For each (size, bits), in this order:

1. Memory: for each backend, a fresh spawned subprocess generates the hashes, then times
   ``add`` + ``rebuild`` and reads VmRSS before/after (and VmHWM, reset through
   /proc/self/clear_refs, for the build's peak). ``memory_bytes()`` is the index's own count.
2. Latency: one more fresh subprocess builds both indexes (a second build-time sample), checks
   that the backends return the same radius (and k-NN) results for the first queries, then
   times radius queries and knn(k=10) queries with the backends interleaved query by query.
   Each backend runs up to --queries queries, stopping early once it has spent --budget
   seconds (but not before 10 queries), so slow combinations run fewer; the JSON records n.

cKDTree stores float64 bit vectors (8 bytes per bit per hash): combinations needing more than
1 GiB for that (1M x 256 bits: ~2 GB, and slow to build) are skipped unless --full, and are
recorded with "skipped": reason. Timings are never asserted: a benchmark, not a test.

faiss (``pip install faiss-cpu``; recorded as skipped, with the import error, when missing) runs
as a third backend through the same steps, interleaved with the others query by query, behind
a thin wrapper that gives it dedupd's interface: build = the hash bytes joined into an (N,
bits/8) uint8 array + ``IndexBinaryFlat.add``; radius = ``range_search(q, radius + 1)`` (faiss
keeps distances strictly below its threshold, dedupd up to and including the radius); knn =
``search(q, k)``; both turned into dedupd's sorted (distance, id) ``Match`` lists, so the
Python-side cost is counted as for dedupd. Row numbers are the ids (the benchmark's ids are
0..N-1; a real integration would need ``IndexBinaryIDMap``, 8 more bytes per hash, and
tombstones). ``faiss.omp_set_num_threads(1)``: one core, like the numpy backends (a one-query
search does not use OpenMP anyway). Agreement: radius results must be identical; knn may
break ties at the k-th distance differently, so only its distances are compared.

``--variants`` measures instead what isometric matching costs the hamming backend: a newcomer's
8 rotations and mirrors looked up with one ``radius_any`` (one pass over the packed hashes)
against one ``radius`` query and against 8 separate ``radius`` queries, interleaved query by
query in a fresh process per size; the 7 extra queries are other random hashes (what they
find does not change the scan). Written to bench/results/index-variants.json by default.

Run from the repository root (the default run takes a few minutes on 2 cores):

    .venv/bin/python bench/index.py [--sizes 10000,100000,1000000] [--bits 64,256] [--full]
                                    [--queries 200] [--budget 15] [--out bench/results/index.json]
    .venv/bin/python bench/index.py --variants [--sizes 100000,1000000] [--bits 64,256]

The JSON is printed to stdout and written to --out; progress and the ckdtree/hamming p50 ratio
table go to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import multiprocessing
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from importlib.metadata import version
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

import numpy as np
from machine import machine_info

from dedupd.index import BACKENDS, HammingIndex, Match, make_index

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "bench" / "results" / "index.json"
SEED = 20_261_123
K = 10
AGREE_QUERIES = 5
MIN_QUERIES = 10
CKDTREE_MAX_FLOAT_BYTES = 1 << 30  # without --full
FAISS = "faiss"
ALL_BACKENDS = (*BACKENDS, FAISS)


# -- data ----------------------------------------------------------------------------------
def make_hashes(size: int, bits: int) -> list[bytes]:
    nbytes = bits // 8
    raw = np.random.default_rng([SEED, size, bits]).bytes(size * nbytes)
    return [raw[i : i + nbytes] for i in range(0, size * nbytes, nbytes)]


def make_queries(hashes: list[bytes], bits: int, n: int) -> tuple[list[bytes], list[int]]:
    """`n` existing hashes with 1..radius random bits flipped, and how many were flipped."""
    rng = np.random.default_rng([SEED, len(hashes), bits, 1])
    radius = query_radius(bits)
    queries, flipped = [], []
    for src in rng.integers(0, len(hashes), n):
        unpacked = np.unpackbits(np.frombuffer(hashes[src], np.uint8))
        flips = int(rng.integers(1, max(1, radius) + 1))
        unpacked[rng.choice(bits, flips, replace=False)] ^= 1
        queries.append(np.packbits(unpacked).tobytes())
        flipped.append(flips)
    return queries, flipped


def query_radius(bits: int) -> int:
    return int(0.1 * bits)


def ckdtree_skip_reason(size: int, bits: int, full: bool) -> str | None:
    need = size * bits * 8
    if full or need <= CKDTREE_MAX_FLOAT_BYTES:
        return None
    return (
        f"cKDTree needs {need / 2**30:.1f} GiB of float64 bit vectors at {size} x {bits} bits "
        "and is slow to build; run with --full to include it"
    )


def faiss_skip_reason() -> str | None:
    try:
        import faiss  # type: ignore[import-not-found]  # noqa: F401  # optional: faiss-cpu
    except ImportError as exc:
        return f"faiss-cpu not usable: {type(exc).__name__}: {exc}"
    return None


class FaissFlat:
    """faiss.IndexBinaryFlat behind the part of `HammingIndex`'s interface timed here."""

    backend = FAISS

    def __init__(self, bits: int):
        import faiss

        faiss.omp_set_num_threads(1)
        self.bits, self.nbytes = bits, bits // 8
        self.index = faiss.IndexBinaryFlat(bits)

    def add(self, ids: range, hashes: list[bytes]) -> None:
        if ids != range(self.index.ntotal, self.index.ntotal + len(hashes)):
            raise ValueError("this wrapper's ids are the row numbers, in order")
        codes = np.frombuffer(b"".join(hashes), np.uint8).reshape(-1, self.nbytes)
        self.index.add(codes)

    def rebuild(self) -> None:
        pass  # nothing to fold in: faiss's flat index searches what was added

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def _query(self, query: bytes) -> np.ndarray:
        return np.frombuffer(query, np.uint8).reshape(1, self.nbytes)

    @staticmethod
    def _sorted(ids: np.ndarray, dists: np.ndarray) -> list[Match]:
        order = np.lexsort((ids, dists))
        return [Match(int(i), int(d)) for i, d in zip(ids[order], dists[order], strict=True)]

    def radius(self, query: bytes, radius: int) -> list[Match]:
        _, dists, ids = self.index.range_search(self._query(query), radius + 1)
        return self._sorted(ids, dists)

    def knn(self, query: bytes, k: int) -> list[Match]:
        dists, ids = self.index.search(self._query(query), k)
        keep = ids[0] >= 0
        return self._sorted(ids[0][keep], dists[0][keep])

    def memory_bytes(self) -> int:
        return int(self.index.ntotal) * int(self.index.code_size)


AnyIndex = HammingIndex | FaissFlat


def preload(backends: list[str]) -> None:
    """Import and touch faiss before anything is measured: its import (a large shared
    library, ~14 MB RSS) is no part of an index's build time or memory."""
    if FAISS in backends:
        FaissFlat(8).add(range(1), [b"\0"])


# -- process memory ------------------------------------------------------------------------
def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _trim_heap() -> None:
    """Hand freed heap memory back to the OS (glibc), so RSS reflects live memory only."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
    except OSError:
        return False
    return True


def build(backend: str, hashes: list[bytes], bits: int) -> tuple[AnyIndex, float, float]:
    index: AnyIndex = (
        FaissFlat(bits) if backend == FAISS else make_index(backend, bits)  # type: ignore[arg-type]
    )
    t0 = time.perf_counter()
    index.add(range(len(hashes)), hashes)
    t1 = time.perf_counter()
    index.rebuild()
    t2 = time.perf_counter()
    return index, t1 - t0, t2 - t1


# -- subprocess workers --------------------------------------------------------------------
def memory_worker(backend: str, size: int, bits: int) -> dict[str, Any]:
    """In a fresh process: build one index and measure its time and RSS growth."""
    preload([backend])
    hashes = make_hashes(size, bits)
    gc.collect()
    _trim_heap()
    peak_reset = _reset_peak()
    rss0 = _status_kib("VmRSS") * 1024
    index, add_s, rebuild_s = build(backend, hashes, bits)
    gc.collect()
    _trim_heap()
    rss1 = _status_kib("VmRSS") * 1024
    hwm = _status_kib("VmHWM") * 1024
    mem = index.memory_bytes()
    return {
        "add_s": add_s,
        "rebuild_s": rebuild_s,
        "build_s": add_s + rebuild_s,
        "memory_bytes": mem,
        "bytes_per_hash": mem / size,
        "rss_before_bytes": rss0,
        "rss_growth_bytes": rss1 - rss0,
        "rss_growth_per_hash": (rss1 - rss0) / size,
        "peak_rss_growth_bytes": hwm - rss0 if peak_reset else None,
        "len": len(index),
    }


def _time_interleaved(
    indexes: dict[str, AnyIndex],
    call: Callable[[AnyIndex, bytes], list[Any]],
    queries: list[bytes],
    budget_s: float,
) -> tuple[dict[str, list[float]], dict[str, list[int]]]:
    """Per backend, seconds per query (and result counts), the backends' order rotating per
    query."""
    times: dict[str, list[float]] = {b: [] for b in indexes}
    found: dict[str, list[int]] = {b: [] for b in indexes}
    spent = dict.fromkeys(indexes, 0.0)
    for i, query in enumerate(queries):
        active = [b for b in indexes if len(times[b]) < MIN_QUERIES or spent[b] < budget_s]
        if not active:
            break
        shift = i % len(active)
        for b in active[shift:] + active[:shift]:  # rotating order
            t0 = time.perf_counter()
            result = call(indexes[b], query)
            dt = time.perf_counter() - t0
            times[b].append(dt)
            spent[b] += dt
            found[b].append(len(result))
    return times, found


def _latency(samples: list[float]) -> dict[str, Any]:
    ms = np.asarray(samples) * 1000
    return {
        "n": len(samples),
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": float(ms.mean()),
        "max_ms": float(ms.max()),
    }


# All pairs within the radius is O(N^2) for brute force: measured where it finishes in
# seconds. faiss's IndexBinaryFlat has no all-pairs call (it would be N range searches).
ALL_PAIRS_MAX = {"hamming": 10_000, "ckdtree": 10_000}


def _all_pairs(backend: str, ix: Any, size: int, radius: int) -> dict[str, Any]:
    limit = ALL_PAIRS_MAX.get(backend)
    if limit is None:
        return {"skipped": "no all-pairs call in this backend"}
    if size > limit:
        return {"skipped": f"O(N^2): measured up to {limit:,} hashes"}
    started = time.perf_counter()
    found = ix.pairs(radius)
    return {"s": time.perf_counter() - started, "pairs": len(found)}


def query_worker(
    size: int, bits: int, backends: list[str], n_queries: int, budget_s: float
) -> dict[str, Any]:
    """In a fresh process: build every backend, check agreement, time queries interleaved."""
    preload(backends)
    hashes = make_hashes(size, bits)
    queries, flipped = make_queries(hashes, bits, n_queries)
    radius = query_radius(bits)
    indexes, builds = {}, {}
    for b in backends:
        indexes[b], add_s, rebuild_s = build(b, hashes, bits)
        builds[b] = add_s + rebuild_s
    del hashes
    gc.collect()

    # Agreement on the first queries (also warms every backend up before timing): radius
    # results must be identical; knn ones too between dedupd's backends, while faiss may keep
    # other ids at a tie on the k-th distance, so only its distances are compared.
    first = queries[:AGREE_QUERIES]
    by_radius = {b: [ix.radius(q, radius) for q in first] for b, ix in indexes.items()}
    by_knn = {b: [ix.knn(q, K) for q in first] for b, ix in indexes.items()}
    ours = [b for b in BACKENDS if b in indexes]
    agree = None
    if len(indexes) > 1:
        agree = all(r == by_radius[backends[0]] for r in by_radius.values())
    knn_agree = all(by_knn[b] == by_knn[ours[0]] for b in ours) if len(ours) > 1 else None
    faiss_knn_agree: bool | None = None
    if FAISS in indexes and ours:
        faiss_knn_agree = [[m.distance for m in r] for r in by_knn[FAISS]] == [
            [m.distance for m in r] for r in by_knn[ours[0]]
        ]

    r_times, r_found = _time_interleaved(
        indexes, lambda ix, q: ix.radius(q, radius), queries, budget_s
    )
    k_times, _ = _time_interleaved(indexes, lambda ix, q: ix.knn(q, K), queries, budget_s)
    all_pairs = {b: _all_pairs(b, ix, size, radius) for b, ix in indexes.items()}
    return {
        "radius": radius,
        "bits_flipped_mean": float(np.mean(flipped)),
        "agree": agree,
        "knn_agree": knn_agree,
        "faiss_knn_distances_agree": faiss_knn_agree,
        "per_backend": {
            b: {
                "build_s": builds[b],
                "radius_query": {
                    **_latency(r_times[b]),
                    "matches_mean": float(np.mean(r_found[b])),
                },
                "knn": {"k": K, **_latency(k_times[b])},
                "all_pairs": all_pairs[b],
                "radius_s_samples": r_times[b],
            }
            for b in indexes
        },
    }


VARIANTS = 8  # a newcomer's rotations and mirrors (dedupd.hashers.TRANSFORMS)


def variants_worker(size: int, bits: int, n_queries: int, budget_s: float) -> dict[str, Any]:
    """In a fresh process: one radius query vs radius_any over 8 queries vs 8 radius queries,
    on the hamming backend, interleaved query by query."""
    hashes = make_hashes(size, bits)
    queries, _ = make_queries(hashes, bits, n_queries)
    rng = np.random.default_rng([SEED, size, bits, VARIANTS])
    extra = [rng.bytes(bits // 8) for _ in range(n_queries * (VARIANTS - 1))]
    groups = [
        [q, *extra[i * (VARIANTS - 1) : (i + 1) * (VARIANTS - 1)]] for i, q in enumerate(queries)
    ]
    radius = query_radius(bits)
    ix, add_s, rebuild_s = build("hamming", hashes, bits)
    del hashes
    gc.collect()
    calls: dict[str, Callable[[list[bytes]], Any]] = {
        "one_radius": lambda g: ix.radius(g[0], radius),
        "radius_any_8": lambda g: ix.radius_any(g, radius),
        "eight_radius": lambda g: [ix.radius(q, radius) for q in g],
    }
    # Agreement (and warm-up): radius_any finds what the 8 separate queries find.
    for g in groups[:AGREE_QUERIES]:
        best: dict[int, int] = {}
        for q in g:
            for m in ix.radius(q, radius):
                best[m.id] = min(best.get(m.id, bits), m.distance)
        assert {m.id: m.distance for m in ix.radius_any(g, radius)} == best
    times: dict[str, list[float]] = {c: [] for c in calls}
    spent = dict.fromkeys(calls, 0.0)
    for i, g in enumerate(groups):
        active = [c for c in calls if len(times[c]) < MIN_QUERIES or spent[c] < budget_s]
        if not active:
            break
        shift = i % len(active)
        for c in active[shift:] + active[:shift]:
            t0 = time.perf_counter()
            calls[c](g)
            dt = time.perf_counter() - t0
            times[c].append(dt)
            spent[c] += dt
    paired = [
        a / b for a, b in zip(times["radius_any_8"], times["one_radius"], strict=False)
    ]
    return {
        "size": size,
        "bits": bits,
        "radius": radius,
        "build_s": add_s + rebuild_s,
        **{c: _latency(t) for c, t in times.items()},
        "radius_any_8_over_one_radius": {
            "p50_ratio": float(np.percentile(times["radius_any_8"], 50))
            / float(np.percentile(times["one_radius"], 50)),
            "paired_median_ratio": float(np.median(paired)),
        },
        "eight_radius_over_one_radius_p50": float(np.percentile(times["eight_radius"], 50))
        / float(np.percentile(times["one_radius"], 50)),
    }


def run_variants(args: argparse.Namespace) -> None:
    info = machine_info()
    started = time.perf_counter()
    results = []
    for size in args.sizes:
        for bits in args.bits:
            _log(f"{size} x {bits} bits: one radius vs radius_any(8) vs 8 radius, hamming")
            r = in_fresh_process(variants_worker, size, bits, args.queries, args.budget)
            results.append(r)
            if "error" not in r:
                ratio = r["radius_any_8_over_one_radius"]
                _log(
                    f"  one {r['one_radius']['p50_ms']:.2f} ms, any-of-8 "
                    f"{r['radius_any_8']['p50_ms']:.2f} ms ({ratio['p50_ratio']:.2f}x; paired "
                    f"{ratio['paired_median_ratio']:.2f}x), 8 separate "
                    f"{r['eight_radius']['p50_ms']:.2f} ms "
                    f"({r['eight_radius_over_one_radius_p50']:.2f}x)"
                )
    info["loadavg_end"] = list(os.getloadavg())
    doc = {
        "benchmark": "index-variants",
        "machine": info,
        "config": {
            "backend": "hamming",
            "seed": SEED,
            "radius": "int(0.1 * bits)",
            "queries": "existing hash with 1..radius bits flipped, plus 7 random hashes",
            "max_queries": args.queries,
            "budget_s_per_kind": args.budget,
            "goal": "radius_any over 8 queries <= 2x one radius query",
        },
        "results": results,
        "wall_s": time.perf_counter() - started,
    }
    text = json.dumps(doc, indent=2)
    print(text)
    out = args.out if args.out != DEFAULT_OUT else DEFAULT_OUT.with_name("index-variants.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
    _log(f"wrote {out} in {doc['wall_s']:.0f} s")


def in_fresh_process(func: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    try:
        with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
            return pool.submit(func, *args).result()
    except Exception as exc:  # e.g. MemoryError, or the worker killed by the OOM killer
        return {"error": f"{type(exc).__name__}: {exc}"}


# -- driver --------------------------------------------------------------------------------
def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _paired_ratio(
    per_backend: dict[str, Any], num: str, den: str = "hamming"
) -> dict[str, Any] | None:
    """`num` p50 / `den` p50 for radius and knn queries (higher = `den` faster), and build."""
    if num not in per_backend or den not in per_backend:
        return None
    a, b = per_backend[num], per_backend[den]
    pairs = zip(a["radius_s_samples"], b["radius_s_samples"], strict=False)
    return {
        "radius_p50_ratio": a["radius_query"]["p50_ms"] / b["radius_query"]["p50_ms"],
        "knn_p50_ratio": a["knn"]["p50_ms"] / b["knn"]["p50_ms"],
        "radius_paired_median_ratio": float(np.median([x / y for x, y in pairs])),
        "build_ratio": a["build_s"] / b["build_s"],
        "meaning": f"{num} / {den}: query p50s, the median of per-query ratios (same query, "
        f"same process), and build seconds in the query process (higher = {den} faster)",
    }


def run_combo(
    size: int, bits: int, args: argparse.Namespace, faiss_skip: str | None
) -> tuple[list[dict], dict]:
    skip = {
        "hamming": None,
        "ckdtree": ckdtree_skip_reason(size, bits, args.full),
        FAISS: faiss_skip,
    }
    backends = [b for b in ALL_BACKENDS if skip[b] is None]
    memory = {}
    for b in backends:
        _log(f"{size} x {bits} bits, {b}: build + memory in a fresh process")
        memory[b] = in_fresh_process(memory_worker, b, size, bits)
    how = " and ".join(backends) + (" interleaved" if len(backends) > 1 else " only")
    _log(f"{size} x {bits} bits: queries, {how}")
    queried = in_fresh_process(query_worker, size, bits, backends, args.queries, args.budget)

    rows: list[dict] = []
    for b in ALL_BACKENDS:
        row: dict[str, Any] = {"backend": b, "size": size, "bits": bits}
        if skip[b]:
            rows.append({**row, "skipped": skip[b]})
            continue
        if "error" in memory[b] or "error" in queried:
            rows.append({**row, "error": memory[b].get("error") or queried.get("error")})
            continue
        q = queried["per_backend"][b]
        mem = memory[b]
        row.update(
            radius=queried["radius"],
            bits_flipped_mean=queried["bits_flipped_mean"],
            build_s=float(np.median([mem["build_s"], q["build_s"]])),
            build_s_samples=[mem["build_s"], q["build_s"]],
            add_s=mem["add_s"],
            rebuild_s=mem["rebuild_s"],
            radius_query=q["radius_query"],
            knn=q["knn"],
            all_pairs=q["all_pairs"],
            memory_bytes=mem["memory_bytes"],
            bytes_per_hash=mem["bytes_per_hash"],
            rss_growth_bytes=mem["rss_growth_bytes"],
            rss_growth_per_hash=mem["rss_growth_per_hash"],
            peak_rss_growth_bytes=mem["peak_rss_growth_bytes"],
            agree=queried["agree"],
            knn_agree=queried["knn_agree"],
        )
        if b == FAISS:
            row["knn_distances_agree"] = queried["faiss_knn_distances_agree"]
        if queried["agree"] is None:
            row["agree_note"] = "only one backend ran, nothing to compare"
        rows.append(row)

    ratio: dict[str, Any] = {"size": size, "bits": bits}
    per_backend = queried.get("per_backend", {})
    ckd = _paired_ratio(per_backend, "ckdtree")
    if ckd is None:
        ratio["ratio"] = None
        ratio["note"] = "ckdtree " + ("skipped" if skip["ckdtree"] else "failed")
    else:
        ckd["meaning"] = "ckdtree p50 / hamming p50 (higher = hamming faster)"
        del ckd["build_ratio"]
        ratio.update(ckd)
    ratio["faiss_vs_hamming"] = _paired_ratio(per_backend, FAISS) or {
        "note": "faiss " + ("skipped" if skip[FAISS] else "failed")
    }
    return rows, ratio


def _int_list(text: str) -> list[int]:
    try:
        values = [int(float(v)) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a comma list of integers: {text!r}") from exc
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"need positive integers: {text!r}")
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes", type=_int_list, default=[10_000, 100_000, 1_000_000], help="comma list"
    )
    parser.add_argument("--bits", type=_int_list, default=[64, 256], help="comma list")
    parser.add_argument("--full", action="store_true", help="include cKDTree at >1 GiB")
    parser.add_argument("--no-faiss", action="store_true", help="leave faiss-cpu out")
    parser.add_argument("--queries", type=int, default=200, help="max queries per backend")
    parser.add_argument("--budget", type=float, default=15.0, help="seconds per backend/kind")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON output path")
    parser.add_argument(
        "--variants", action="store_true", help="cost of isometric (8-query) lookups only"
    )
    args = parser.parse_args()
    if any(b % 8 for b in args.bits):
        parser.error("--bits must be multiples of 8 (hashes are bits/8 bytes)")
    if args.queries < AGREE_QUERIES:
        parser.error(f"--queries must be at least {AGREE_QUERIES}")
    if args.variants:
        run_variants(args)
        return

    info = machine_info()
    faiss_skip = "--no-faiss" if args.no_faiss else faiss_skip_reason()
    info["faiss_cpu"] = None if faiss_skip else version("faiss-cpu")
    started = time.perf_counter()
    results, ratios = [], []
    for size in args.sizes:
        for bits in args.bits:
            rows, ratio = run_combo(size, bits, args, faiss_skip)
            results += rows
            ratios.append(ratio)
    info["loadavg_end"] = list(os.getloadavg())
    doc = {
        "benchmark": "index",
        "machine": info,
        "config": {
            "sizes": args.sizes,
            "bits": args.bits,
            "full": args.full,
            "seed": SEED,
            "radius": "int(0.1 * bits)",
            "queries": "existing hash with 1..radius distinct random bits flipped",
            "max_queries": args.queries,
            "budget_s_per_backend_and_kind": args.budget,
            "min_queries": MIN_QUERIES,
            "knn_k": K,
            "agree_checked_on_first": AGREE_QUERIES,
            "build": "add(all) + rebuild(), median of 2 samples (memory and query processes)",
            "memory": "VmRSS growth over the build in a fresh spawned process (glibc "
            "malloc_trim before and after); peak from VmHWM reset via /proc/self/clear_refs",
            "timer": "time.perf_counter per query, the backends' order rotating per query",
            "faiss": "IndexBinaryFlat, omp_set_num_threads(1); radius = range_search(q, r + 1) "
            "(faiss keeps d < threshold); ids are row numbers; results turned into dedupd's "
            "sorted Match lists"
            if not faiss_skip
            else {"skipped": faiss_skip},
        },
        "results": results,
        "ratios": ratios,
        "wall_s": time.perf_counter() - started,
    }
    _log("\np50 / hamming p50 (radius, knn):")
    for r in ratios:
        ckd = (
            f"ckdtree radius {r['radius_p50_ratio']:7.1f}x knn {r['knn_p50_ratio']:7.1f}x"
            if r.get("radius_p50_ratio") is not None
            else f"ckdtree n/a ({r['note']})"
        )
        f = r["faiss_vs_hamming"]
        fai = (
            f"faiss radius {f['radius_p50_ratio']:6.2f}x knn {f['knn_p50_ratio']:6.2f}x"
            if "radius_p50_ratio" in f
            else f"faiss n/a ({f['note']})"
        )
        _log(f"  {r['size']:>9} x {r['bits']:>3} bits: {ckd}   {fai}")
    text = json.dumps(doc, indent=2)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_text(text + "\n")
    tmp.replace(args.out)
    _log(f"wrote {args.out} in {doc['wall_s']:.0f} s")


if __name__ == "__main__":
    main()
