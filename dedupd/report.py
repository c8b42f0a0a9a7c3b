"""Pictures of what dedupd found: a self-contained HTML report of the duplicate groups, and
the t-SNE map of the indexed photos (as the `show` of the CLI dedupd descends from drew).

The report is one file: its thumbnails are inline data: URIs and it links to nothing, so it
can be mailed or archived. The map needs matplotlib and scikit-learn, the optional extra
`dedupd[viz]`; without them `tsne_map` raises MissingExtra naming it.
"""

from __future__ import annotations

import html
import io
import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dedupd.errors import DedupdError
from dedupd.render import shown
from dedupd.thumbs import Thumbnails

if TYPE_CHECKING:
    from dedupd.store import Store

__all__ = ["DEFAULT_SAMPLE", "MapReport", "MissingExtra", "html_report", "tsne_map"]

DEFAULT_SAMPLE = 2000  # points on a map: t-SNE is quadratic-ish, and a map of more is a blur
MAX_PICTURES = 150  # thumbnails drawn on a map at their points; the other points are dots

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5rem; color: #222; }
.group { border: 1px solid #ddd; border-radius: 6px; padding: .8rem; margin-bottom: 1rem; }
.members { display: flex; flex-wrap: wrap; gap: 1rem; }
figure { margin: 0; width: 240px; }
img { width: 240px; height: 180px; object-fit: contain; background: #eee; display: block; }
figcaption { font-size: .8rem; overflow-wrap: anywhere; }
.role { font-weight: 700; text-transform: uppercase; font-size: .7rem; color: #666; }
"""


class MissingExtra(DedupdError):
    """An optional dependency is not installed; the message names the extra to install."""


def _caption(role: str, f: Mapping[str, Any], how: str = "") -> str:
    pixels = f"{f['width']}×{f['height']}" if f.get("width") else "-"
    size = f"{(f.get('size') or 0) / 1000:.1f} KB"
    lines = [
        f'<span class="role">{html.escape(role)}</span>',
        html.escape(shown(f["path"])),
        html.escape(f"{pixels} · {size} · taken {f.get('taken_at') or '-'}"),
    ]
    if how:
        lines.append(html.escape(how))
    return "<br>".join(lines)


def html_report(
    answer: Mapping[str, Any], thumbs: Thumbnails, *, now: Callable[[], float] = time.time
) -> str:
    """The `groups` answer as one self-contained HTML page, thumbnails inline."""
    groups = answer["groups"]
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8"><title>dedupd: duplicate groups</title>',
        f"<style>{_STYLE}</style></head><body>",
        "<h1>dedupd: duplicate groups</h1>",
        f"<p>{len(groups)} groups, "
        f"{sum(len(g['duplicates']) for g in groups)} duplicates, "
        f"{answer.get('in_quarantine', 0)} photos in quarantine; "
        f"{html.escape(time.strftime('%Y-%m-%d %H:%M', time.localtime(now())))}</p>",
    ]
    for g in groups:
        figures = [_figure(thumbs, "keeper", g["keeper"])]
        for d in g["duplicates"]:
            how = d.get("kind") or "match"  # a kind this report does not know: by its name
            if d.get("distance") is not None and how != "exact":
                how += f", distance {d['distance']}"
            figures.append(_figure(thumbs, "duplicate", d, how))
        parts.append(
            f'<section class="group"><div class="members">{"".join(figures)}</div></section>'
        )
    if not groups:
        parts.append("<p>No duplicate groups.</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _figure(thumbs: Thumbnails, role: str, f: Mapping[str, Any], how: str = "") -> str:
    src = thumbs.data_uri(str(f["path"]), f)
    alt = html.escape(f"{role}: {shown(f['path'])}", quote=True)
    return (
        f'<figure><img src="{src}" alt="{alt}"><figcaption>{_caption(role, f, how)}'
        "</figcaption></figure>"
    )


class MapReport:
    """What a map drew: `drawn` of `total` indexed photos, `pictures` of them as thumbnails,
    `links` lines between members of a duplicate group."""

    def __init__(self, drawn: int, total: int, pictures: int, links: int):
        self.drawn, self.total, self.pictures, self.links = drawn, total, pictures, links


def _sample(ids: Sequence[int], grouped: Iterable[int], limit: int, seed: int) -> list[int]:
    """At most `limit` of `ids`: the members of duplicate groups first (the map's point),
    then a random choice of the others."""
    present = set(ids)
    first = [i for i in dict.fromkeys(grouped) if i in present][:limit]
    chosen = set(first)
    rest = [i for i in ids if i not in chosen]
    random.Random(seed).shuffle(rest)
    return first + rest[: limit - len(first)]


def tsne_map(
    store: Store,
    hasher: str,
    groups: Sequence[Mapping[str, Any]],
    out: Path,
    thumbs: Thumbnails,
    *,
    sample: int = DEFAULT_SAMPLE,
    seed: int = 0,
    progress: Callable[[str, int, int], None] = lambda step, done, total: None,
    pictures: int = MAX_PICTURES,
) -> MapReport:
    """Draw the t-SNE map of the indexed photos (their `hasher` hashes in `store`; at most
    `sample` of them, the members of `groups` first) as a PNG at `out`: each photo a point
    placed by the Hamming distances of its hash bits, the members of each duplicate group
    joined by lines, and thumbnails at up to `pictures` points, group members first.
    `progress(step, done, total)` follows its two slow steps: "t-SNE" (0 of 1, then 1 of 1)
    and "thumbnails" (one at a time).
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.offsetbox import AnnotationBbox, OffsetImage
        from sklearn.manifold import TSNE
        from threadpoolctl import threadpool_limits
    except ImportError as exc:
        raise MissingExtra(
            f"the t-SNE map needs matplotlib and scikit-learn ({exc.name} is missing): "
            "pip install 'dedupd[viz]'"
        ) from exc
    import numpy as np
    from PIL import Image

    from dedupd.queries import file_json

    arrays = store.hash_arrays(hasher)
    ids, bits = [int(i) for i in arrays.ids], arrays.bits
    grouped = [f["id"] for g in groups for f in (g["keeper"], *g["duplicates"])]
    chosen = _sample(ids, grouped, sample, seed)
    if len(chosen) < 2:
        raise DedupdError(f"{len(chosen)} indexed photos: a map needs at least 2")
    row = {i: n for n, i in enumerate(ids)}
    features = np.unpackbits(bits[[row[i] for i in chosen]], axis=1).astype(np.float32)
    perplexity = max(1.0, min(30.0, (len(chosen) - 1) / 3))
    progress("t-SNE", 0, 1)
    # One thread: t-SNE's OpenMP threads spin while they wait, and on a busy 2-core machine
    # 500 points took 40 s with them and 5 s without (bench/review.py).
    with threadpool_limits(limits=1):
        points = TSNE(
            n_components=2,
            metric="hamming",
            perplexity=perplexity,
            init="random",
            random_state=seed,
        ).fit_transform(features)
    progress("t-SNE", 1, 1)
    where = {i: points[n] for n, i in enumerate(chosen)}

    fig = Figure(figsize=(16, 12), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.scatter(points[:, 0], points[:, 1], s=6, c="#888", zorder=1)
    links = 0
    colours = [f"C{n % 10}" for n in range(len(groups))]
    for g, colour in zip(groups, colours, strict=True):
        keeper = g["keeper"]["id"]
        for d in g["duplicates"]:
            if keeper in where and d["id"] in where:
                (x0, y0), (x1, y1) = where[keeper], where[d["id"]]
                ax.plot([x0, x1], [y0, y1], color=colour, linewidth=1.5, zorder=2)
                links += 1
    drawn_pictures = 0
    records = store.files(chosen[:pictures])
    shown = [file_json(records[i]) for i in chosen[:pictures] if i in records]
    for done, record in enumerate(shown, 1):
        data, media = thumbs.picture(str(record["path"]), record)
        progress("thumbnails", done, len(shown))
        if media != "image/jpeg":
            continue
        with Image.open(io.BytesIO(data)) as im:
            im.thumbnail((48, 48))
            box = OffsetImage(np.asarray(im.convert("RGB")), zoom=1.0)
        ax.add_artist(AnnotationBbox(box, tuple(where[record["id"]]), frameon=False, zorder=3))
        drawn_pictures += 1
    ax.set_title(
        f"dedupd: t-SNE of {len(chosen)} of {len(ids)} photos by hash bits; "
        f"{len(groups)} duplicate groups linked"
    )
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(out, format="png")
    return MapReport(len(chosen), len(ids), drawn_pictures, links)
