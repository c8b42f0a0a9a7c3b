"""Crop accuracy (the crop section of bench/accuracy.py): crops found, per bucket of kept area,
and false links among distinct photos and burst shots, through dedupd's own path.

Data: the real photos of bench/accuracy.py (`sources()`), each upscaled to the long side and
saved as a quality-92 JPEG (the *original*). From it (seeded, per photo):

- crops removing 10-80% of the area (kept 90%, 80%, ... 20%), centred and off-centre (a
  random position), with the frame's aspect;
- social crops: squares and 4:5 portraits of several sizes;
- a crop re-encoded and resized (an off-centre crop keeping 50% or 70%, then half size, JPEG
  quality 70);
- a screenshot containing the photo plus interface: a 1080x1920 app page, white, with rows of
  text and icons, the photo shown full width in its middle (the photo is then the crop, of
  the screenshot).

Distinct photos: the originals and the four quarters of each (non-overlapping, each upscaled
to the long side: the same camera, textures and colours, no shared point). An original and
one of its own quarters are related (a crop), every other pair is distinct; a crop and a
quarter of its own original may overlap, so only links to other photos count as false. Burst shots:
two windows of the same size over one original, shifted by 1%, 3% and 8% of its width (the
camera moved a little): they overlap but neither lies inside the other, so they must stay
near matches or bursts, never crops. Collages (`collages`): two pictures made of different
photos beside one shared photo, framed so that through the shared tile one lies inside the
other, as a crop's frame would: never crops (the keypoints alone took 12 of 21 for crops).

Every file is hashed by ``dedupd.imaging.hash_image`` with dedupd's default hashers (pHash
16x16 + PDQ, so the JPEG draft decode, the border trim and the feature image are what the
daemon's workers get), and its stored features (`HashedImage.features`) are used. Each
crop is a newcomer against a `dedupd.index.CropIndex` holding every distinct photo: the
engine's `CROP_CANDIDATES` best by shared words (at least `CROP_MIN_SHARED`) are verified with
`dedupd.features.verify` when `CROP_MIN_AGREEING` of their shared words agree on one similarity
that nests the frames (`features.agreement`), as `Ingest._crops` does. A crop is *found* when
its original is verified with the right side as the crop. It counts as found by the *near*
stage when pHash 16x16 is within its default threshold (the crop stage is then skipped: near
wins), so the recall a user sees is "near or crop". False links: any verified pair of
unrelated photos (a distinct photo as newcomer against all the others; a crop against other
photos).
"""

from __future__ import annotations

import random
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from dedupd import features
from dedupd.engine import CROP_CANDIDATES, CROP_MIN_AGREEING, CROP_MIN_SHARED
from dedupd.hashers import Hasher, second_opinion
from dedupd.imaging import hash_image
from dedupd.index import CropCandidate, CropIndex, distance

BUCKETS = ((0.2, 0.5), (0.5, 0.7), (0.7, 0.95))
TARGETS = {"20-50%": 0.60, "50-70%": 0.90, "70-95%": 0.95}  # the "done when"
SHIFTS = (0.01, 0.03, 0.08)
FIRST = Hasher("phash", 16)
HASHERS = [FIRST, second_opinion(FIRST)]
Box = tuple[float, float, float, float]  # left, top, right, bottom as fractions


def _bucket(kept: float) -> str | None:
    for lo, hi in BUCKETS:
        if lo <= kept < hi:
            return f"{round(lo * 100)}-{round(hi * 100)}%"
    return None


def crop_boxes(width: int, height: int, rng: random.Random) -> dict[str, tuple[Box, str]]:
    """kind → (box, family) of the crops made from one original."""
    boxes: dict[str, tuple[Box, str]] = {}
    for removed in range(10, 90, 10):
        side = (1 - removed / 100) ** 0.5
        boxes[f"centred_{removed}"] = (
            ((1 - side) / 2, (1 - side) / 2, (1 + side) / 2, (1 + side) / 2),
            "centred",
        )
        x, y = rng.uniform(0, 1 - side), rng.uniform(0, 1 - side)
        boxes[f"offcentre_{removed}"] = ((x, y, x + side, y + side), "off-centre")
    aspect = width / height
    for name, ratio in (("square", 1.0), ("4:5", 0.8)):  # width / height of the crop
        for f in (1.0, 0.8, 0.6):
            h = f * min(1.0, aspect / ratio)  # as a fraction of the frame's height
            w = h * ratio / aspect
            x, y = rng.uniform(0, 1 - w), rng.uniform(0, 1 - h)
            boxes[f"{name}_{round(f * 100)}"] = ((x, y, x + w, y + h), "social")
    return boxes


def _cut(im: Image.Image, box: Box) -> Image.Image:
    w, h = im.size
    return im.crop((round(box[0] * w), round(box[1] * h), round(box[2] * w), round(box[3] * h)))


def _screenshot(photo: Image.Image) -> tuple[Image.Image, float]:
    """An app page showing `photo` full width between rows of text and icons; returns it and
    the share of its area the photo covers."""
    page = Image.new("RGB", (1080, 1920), "white")
    draw = ImageDraw.Draw(page)
    font = ImageFont.load_default(size=30)
    shown = photo.resize((1080, round(1080 * photo.height / photo.width)), Image.Resampling.LANCZOS)
    top = (1920 - shown.height) // 2
    for i in range(30):
        y = 20 + 56 * i
        if top - 50 < y < top + shown.height + 10:
            continue
        draw.text(
            (110, y),
            f"@friend{i}  what a view! #{i} liked by 1{i}3 people",
            fill="black",
            font=font,
        )
        draw.ellipse((30, y, 80, y + 46), outline=(40, 90, 200), width=4)
    page.paste(shown, (0, top))
    return page, shown.width * shown.height / (1080 * 1920)


def _save(im: Image.Image, dst: Path, quality: int = 90) -> Path:
    im.convert("RGB").save(dst, format="JPEG", quality=quality)
    return dst


def _hashed(path: Path) -> dict[str, Any]:
    result = hash_image(str(path), HASHERS, max_pixels=10**9)
    assert result.features is not None
    return {"features": result.features, "phash": result.hashes[FIRST.key]}


def process(name: str, src: Path, long_side: int, seed: int) -> dict[str, Any]:
    """Make one original's crops, quarters and burst shots, and hash each through dedupd."""
    started = time.perf_counter()
    rng = random.Random(f"{seed}:{name}")
    out: dict[str, Any] = {"name": name, "crops": {}, "quarters": {}, "bursts": {}}
    with tempfile.TemporaryDirectory(prefix="dedupd-crops-") as tmp_name:
        tmp = Path(tmp_name)
        with Image.open(src) as raw:
            rgb = raw.convert("RGB")
        scale = long_side / max(rgb.size)
        base = rgb.resize(
            (round(rgb.width * scale), round(rgb.height * scale)), Image.Resampling.LANCZOS
        )
        original = _save(base, tmp / "original.jpg", 92)
        with Image.open(original) as decoded:
            base = decoded.convert("RGB")
        out["original"] = _hashed(original)
        for kind, (box, family) in crop_boxes(base.width, base.height, rng).items():
            kept = (box[2] - box[0]) * (box[3] - box[1])
            path = _save(_cut(base, box), tmp / f"{kind}.jpg")
            out["crops"][kind] = {
                "family": family,
                "kept": kept,
                **_hashed(path),
                "crop_is": "newcomer",
            }
        for kept in (0.5, 0.7):
            side = kept**0.5
            x, y = rng.uniform(0, 1 - side), rng.uniform(0, 1 - side)
            cut = _cut(base, (x, y, x + side, y + side))
            small = cut.resize((cut.width // 2, cut.height // 2), Image.Resampling.LANCZOS)
            path = _save(small, tmp / f"resized_{kept}.jpg", 70)
            out["crops"][f"resized_reencoded_{round(kept * 100)}"] = {
                "family": "resized+re-encoded",
                "kept": kept,
                **_hashed(path),
                "crop_is": "newcomer",
            }
        page, share = _screenshot(base)
        path = page_path = tmp / "screenshot.png"
        page.save(page_path, format="PNG")
        out["crops"]["screenshot_ui"] = {
            "family": "screenshot with interface",
            "kept": share,
            **_hashed(path),
            "crop_is": "original",
        }
        for i, (x, y) in enumerate(((0, 0), (0.5, 0), (0, 0.5), (0.5, 0.5))):
            quarter = _cut(base, (x, y, x + 0.5, y + 0.5))
            quarter = quarter.resize(base.size, Image.Resampling.LANCZOS)
            out["quarters"][f"q{i}"] = _hashed(_save(quarter, tmp / f"q{i}.jpg", 92))
        for shift in SHIFTS:
            a = _save(_cut(base, (0, 0, 1 - shift, 1)), tmp / "burst_a.jpg", 92)
            b = _save(_cut(base, (shift, 0, 1, 1)), tmp / "burst_b.jpg", 92)
            out["bursts"][shift] = (_hashed(a), _hashed(b))
    out["seconds"] = time.perf_counter() - started
    return out


def _features(h: dict[str, Any]) -> features.Features:
    return features.Features.from_local(h["features"])


def score(
    per_photo: Sequence[dict[str, Any]],
    same_scene: Sequence[set[str]] = (),
    trace: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Recall per bucket and family, false links, and burst pairs taken for crops. Photos in
    one set of `same_scene` (a stereo pair: one scene shot twice) are no distinct photos: a
    link between them is reported apart, not counted as false.

    Candidates with fewer than `CROP_MIN_AGREEING` agreeing words are not verified, as in
    `Ingest._crops`; the bench verifies them anyway, for the trace only. With `trace`, one row
    per candidate pair is appended to it: the newcomer's and the candidate's word counts, the
    candidate's shared words and idf score (`CropCandidate`), its agreeing words
    (`features.agreeing_words`), whether it verifies, and whether it is the crop pair sought
    (`true`: the newcomer's own original, verified with the right side as the crop). What a
    rule that skips candidates before `verify` is calibrated on (`summarize_trace`)."""
    scene = {name: min(group) for group in same_scene for name in group}
    pool: dict[str, dict[str, Any]] = {}
    for p in per_photo:
        pool[p["name"]] = p["original"]
        for q, h in p["quarters"].items():
            pool[f"{p['name']}/{q}"] = h
    keys = list(pool)
    feats = {k: _features(h) for k, h in pool.items()}
    index = CropIndex()
    for i, k in enumerate(keys):
        index.add(i, feats[k].words)
    index.rebuild()
    family = {i: k.split("/")[0] for i, k in enumerate(keys)}

    def related(i: int, j: int) -> bool:  # an original and one of its own quarters
        return family[i] == family[j] and ("/" not in keys[i] or "/" not in keys[j])

    radius = FIRST.radius(FIRST.default_threshold)
    verified_pairs = 0
    buckets: dict[str, list[int]] = {}
    families: dict[str, list[int]] = {}
    near_buckets: dict[str, list[int]] = {}
    missed: list[str] = []
    false_links: list[str] = []
    scene_links: list[str] = []

    def link(newcomer: str, other: int) -> None:
        same = scene.get(newcomer.split("/")[0], newcomer) == scene.get(family[other], "")
        (scene_links if same else false_links).append(f"{newcomer} ~ {keys[other]}")

    candidate_lost = 0
    crop_candidates = crop_verified = skipped_true = 0
    kept_error: list[float] = []
    for p in per_photo:
        source = keys.index(p["name"])
        for kind, crop in p["crops"].items():
            mine = _features(crop)
            proposed = index.candidates(mine.words, CROP_CANDIDATES, min_shared=CROP_MIN_SHARED)
            hit = False
            for c in proposed:
                agreed = features.agreement(mine, feats[keys[c.id]])
                agree = agreed.agreeing if agreed.nests else 0  # no nesting: skipped like too few
                # verified here whatever the check says, so the trace tells what it skipped
                fit = features.verify(mine, feats[keys[c.id]])
                side = "first" if crop["crop_is"] == "newcomer" else "second"
                found = fit is not None and c.id == source and fit.cropped == side
                if trace is not None:
                    trace.append(
                        _row(f"{p['name']}/{kind}", mine, c, feats[keys[c.id]], fit, found, agree)
                    )
                crop_candidates += 1
                if agree < CROP_MIN_AGREEING:
                    skipped_true += found
                    continue  # as `Ingest._crops`: not verified
                verified_pairs += 1
                crop_verified += 1
                if fit is None:
                    continue
                if c.id == source:
                    hit = found
                    kept_error.append(abs(fit.kept - crop["kept"]))
                elif family[c.id] != p["name"]:
                    link(f"{p['name']}/{kind}", c.id)
            if not hit and features.verify(mine, feats[p["name"]]) is not None:
                candidate_lost += 1
            near = distance(crop["phash"], p["original"]["phash"]) <= radius
            bucket = _bucket(crop["kept"])
            if bucket is not None:
                buckets.setdefault(bucket, []).append(hit)
                near_buckets.setdefault(bucket, []).append(hit or near)
            families.setdefault(crop["family"], []).append(hit)
            if not hit:
                missed.append(
                    f"{p['name']}/{kind} (kept {crop['kept']:.0%}{', near' if near else ''})"
                )
    # distinct photos: each as a newcomer against all the others
    for i, k in enumerate(keys):
        for c in index.candidates(feats[k].words, CROP_CANDIDATES + 1, min_shared=CROP_MIN_SHARED):
            if c.id == i or related(c.id, i):
                continue
            agreed = features.agreement(feats[k], feats[keys[c.id]])
            agree = agreed.agreeing if agreed.nests else 0
            fit = features.verify(feats[k], feats[keys[c.id]])
            if trace is not None:
                trace.append(_row(k, feats[k], c, feats[keys[c.id]], fit, False, agree))
            if agree < CROP_MIN_AGREEING:
                continue
            verified_pairs += 1
            if fit is not None:
                link(k, c.id)
    bursts = {}
    for shift in SHIFTS:
        pairs = [p["bursts"][shift] for p in per_photo]
        as_crop = sum(
            features.verify(_features(a), _features(b)) is not None
            or features.verify(_features(b), _features(a)) is not None
            for a, b in pairs
        )
        near = sum(distance(a["phash"], b["phash"]) <= radius for a, b in pairs)
        bursts[f"{shift:.0%}"] = {"pairs": len(pairs), "as_crop": as_crop, "near_by_phash": near}
    rate = {b: round(sum(v) / len(v), 4) for b, v in sorted(buckets.items())}
    return {
        "recall_by_kept_area": rate,
        "crops_by_kept_area": {b: len(v) for b, v in sorted(buckets.items())},
        "recall_near_or_crop_by_kept_area": {
            b: round(sum(v) / len(v), 4) for b, v in sorted(near_buckets.items())
        },
        "targets": TARGETS,
        "meets_targets": all(rate.get(b, 0) >= t for b, t in TARGETS.items()),
        "recall_by_family": {f: round(sum(v) / len(v), 4) for f, v in sorted(families.items())},
        "kept_area_error_median": round(sorted(kept_error)[len(kept_error) // 2], 4)
        if kept_error
        else None,
        "distinct_photos": len(keys),
        "distinct_pairs": len(keys) * (len(keys) - 1) // 2 - 4 * len(per_photo),
        "pairs_verified": verified_pairs,
        "crop_newcomers": sum(len(p["crops"]) for p in per_photo),
        "candidates_per_crop_newcomer": round(
            crop_candidates / sum(len(p["crops"]) for p in per_photo), 2
        ),
        "verified_per_crop_newcomer": round(
            crop_verified / sum(len(p["crops"]) for p in per_photo), 2
        ),
        "crops_skipped_by_agreement": skipped_true,
        "false_links": false_links,
        "same_scene_links_not_counted": scene_links,
        "bursts": bursts,
        "lost_by_candidate_stage": candidate_lost,
        "missed": missed,
    }


def _row(
    newcomer: str,
    mine: features.Features,
    c: CropCandidate,
    theirs: features.Features,
    fit: features.CropFit | None,
    true: bool,
    agreeing: int,
) -> dict[str, Any]:
    return {
        "newcomer": newcomer,
        "words": len(mine.words),
        "candidate_words": len(theirs.words),
        "shared": c.shared,
        "score": round(c.score, 3),
        "agreeing": agreeing,
        "verified": fit is not None,
        "true": true,
    }


def summarize_trace(trace: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Percentiles of shared words and idf score, for the true crop pairs found and for every
    other candidate given to `verify` (most of which do not verify)."""

    def pct(values: list[float]) -> dict[str, float]:
        if not values:
            return {}
        v = sorted(values)
        return {
            f"p{q}": round(v[min(len(v) - 1, q * len(v) // 100)], 3)
            for q in (0, 1, 5, 10, 25, 50, 75, 90, 99)
        } | {"max": round(v[-1], 3)}

    groups = {
        "true_found": [r for r in trace if r["true"]],
        "other_verified": [r for r in trace if r["verified"] and not r["true"]],
        "not_verified": [r for r in trace if not r["verified"]],
    }
    return {
        name: {
            "pairs": len(rows),
            "shared": pct([r["shared"] for r in rows]),
            "score": pct([r["score"] for r in rows]),
            "shared_per_word": pct([r["shared"] / max(1, r["words"]) for r in rows]),
            "agreeing": pct([r["agreeing"] for r in rows]),
            "below_min_agreeing": sum(r["agreeing"] < CROP_MIN_AGREEING for r in rows),
        }
        for name, rows in groups.items()
    }


def _tile(path: Path, side: int) -> Image.Image:
    """A square from the middle of the photo at `path`, `side` px."""
    with Image.open(path) as raw:
        rgb = raw.convert("RGB")
    s = min(rgb.size)
    left, top = (rgb.width - s) // 2, (rgb.height - s) // 2
    return rgb.crop((left, top, left + s, top + s)).resize((side, side), Image.Resampling.LANCZOS)


def _row_of(*tiles: Image.Image) -> Image.Image:
    canvas = Image.new("RGB", (sum(t.width for t in tiles), tiles[0].height))
    x = 0
    for t in tiles:
        canvas.paste(t, (x, 0))
        x += t.width
    return canvas


def collages(
    sources: Sequence[tuple[str, Path]], same_scene: Sequence[set[str]] = ()
) -> dict[str, Any]:
    """Pairs of distinct pictures that share one photo, as collage apps make them: each source
    P in turn, beside the next (Q), and, smaller, beside the one after (R), the second frame
    cut so that, mapped through P's tile, it lies inside the first (as a crop's would), keeping
    ~90% of it. Both directions are verified; a verified pair is a false link, unless Q and R
    are one scene shot twice (a stereo pair: the whole frames then do look alike)."""
    paths = [path for _, path in sources]
    names = [name for name, _ in sources]
    scene = {name: min(group) for group in same_scene for name in group}
    false_links, scene_links, agreeing = [], [], 0
    with tempfile.TemporaryDirectory(prefix="dedupd-collages-") as tmp_name:
        tmp = Path(tmp_name)
        for i, name in enumerate(names):
            j, k = (i + 1) % len(names), (i + 2) % len(names)
            first = _row_of(_tile(paths[j], 800), _tile(paths[i], 800))  # 1600 x 800
            beside = _row_of(_tile(paths[k], 500), _tile(paths[i], 500)).crop((100, 0, 1000, 500))
            a = _features(_hashed(_save(first, tmp / "first.jpg", 90)))
            b = _features(_hashed(_save(beside, tmp / "beside.jpg", 90)))
            agreeing += features.agreeing_words(b, a) >= CROP_MIN_AGREEING
            if features.verify(b, a) is not None or features.verify(a, b) is not None:
                same = scene.get(names[j], names[j]) == scene.get(names[k], names[k])
                (scene_links if same else false_links).append(
                    f"{names[j]}+{name} ~ {names[k]}+{name}"
                )
    return {
        "pairs": len(names),
        "with_agreeing_words": agreeing,
        "false_links": false_links,
        "same_scene_links_not_counted": scene_links,
    }


def run(
    sources: Sequence[tuple[str, Path]],
    long_side: int,
    seed: int = 0,
    progress: Callable[[str], None] = lambda s: None,
    same_scene: Sequence[set[str]] = (),
) -> dict[str, Any]:
    started = time.perf_counter()
    per_photo = []
    for name, path in sources:
        per_photo.append(process(name, path, long_side, seed))
        progress(f"crops {name}: {per_photo[-1]['seconds']:.1f} s")
    trace: list[dict[str, Any]] = []
    result = score(per_photo, same_scene, trace)
    result["candidates_verified"] = summarize_trace(trace)
    progress("collages")
    result["collages"] = collages(sources, same_scene)
    result["config"] = {
        "features": features.FEATURES_KEY,
        "min_inliers": features.MIN_INLIERS,
        "candidates": CROP_CANDIDATES,
        "min_shared_words": CROP_MIN_SHARED,
        "min_agreeing_words": CROP_MIN_AGREEING,
        "long_side": long_side,
        "photos": [name for name, _ in sources],
        "hash_call": "dedupd.imaging.hash_image(path, [phash16, pdq], max_pixels=10**9)",
    }
    result["wall_s"] = round(time.perf_counter() - started, 1)
    return result


def markdown(r: dict[str, Any]) -> list[str]:
    lines = [
        "## Crops (local features, geometric verification)",
        "",
        f"{r['distinct_photos']} distinct photos (originals and their quarters), crops of each "
        f"original; features {r['config']['features']}, {r['config']['candidates']} candidates "
        f"by shared words (at least {r['config']['min_shared_words']}), verified when at least "
        f"{r['config']['min_agreeing_words']} shared words agree on one similarity that nests "
        f"the frames, with at least {r['config']['min_inliers']} inliers and the pictures "
        f"alike (patches). Per crop newcomer: "
        f"{r['candidates_per_crop_newcomer']} candidates, {r['verified_per_crop_newcomer']} "
        f"verified (crops the agreement check skipped: {r['crops_skipped_by_agreement']}).",
        "",
        "| kept area | crops | found (crop) | target | near or crop |",
        "|---|---|---|---|---|",
    ]
    for b, n in r["crops_by_kept_area"].items():
        lines.append(
            f"| {b} | {n} | {r['recall_by_kept_area'][b]:.1%} | {TARGETS.get(b, 0):.0%} "
            f"| {r['recall_near_or_crop_by_kept_area'][b]:.1%} |"
        )
    lines += ["", "| family | found |", "|---|---|"]
    lines += [f"| {f} | {v:.1%} |" for f, v in r["recall_by_family"].items()]
    lines += [
        "",
        f"False links among distinct photos and crops of other photos: {len(r['false_links'])}"
        f" ({r['pairs_verified']} candidate pairs verified; links within a stereo pair, one"
        f" scene shot twice, not counted: {len(r['same_scene_links_not_counted'])}). "
        f"Burst shots taken for crops: "
        + ", ".join(f"{s}: {b['as_crop']}/{b['pairs']}" for s, b in r["bursts"].items())
        + f". Crops the candidate stage lost (verify alone would find): "
        f"{r['lost_by_candidate_stage']}. Median error of the kept area: "
        f"{r['kept_area_error_median']}.",
    ]
    if "collages" in r:
        c = r["collages"]
        lines += [
            "",
            f"Collages sharing one picture (two frames that nest through the shared tile, as a"
            f" crop's would; {c['with_agreeing_words']} of {c['pairs']} pairs pass the"
            f" agreeing-words check): false links {len(c['false_links'])} of {c['pairs']}"
            f" (the other tiles one scene shot twice, not counted:"
            f" {len(c['same_scene_links_not_counted'])}).",
        ]
    return lines
