"""`dedupctl review` as a user runs it: a process of its own on the loopback, its URL read
from its output, asked over HTTP with and without its token, from its own origin and from
another; and the service operation its "quarantine this copy" button asks for."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from dedupd.cli import dedupd
from dedupd.config import load_config
from dedupd.errors import NotFoundError, Refused
from dedupd.service import LocalService
from dedupd.store import Store
from dedupd.thumbs import Thumbnails, cache_dir, placeholder
from tests import photos
from tests.reviewing import (
    DEDUPCTL,
    REPO,
    Library,
    make_library,
    reviewing,
    start_review,
    stop_review,
)
from tests.test_daemon import Env, _idle, running, wait_for


@pytest.fixture
def lib(tmp_path: Path) -> Library:
    return make_library(tmp_path)


def _json(body: bytes) -> dict[str, object]:
    answer = json.loads(body)
    assert isinstance(answer, dict)
    return answer


def _quarantined(lib: Library) -> dict[str, int]:
    """Original path → action id of what is in quarantine now, from the database."""
    with Store(lib.db, readonly=True) as store:
        return {a.src: a.id for a in store.quarantined()}


def test_the_page_with_its_token_shows_quarantined_photos_and_keepers_as_pictures(
    lib: Library,
) -> None:
    """The printed URL opens the page and sets the token cookie; with it, the quarantine
    lists each photo with its keeper, and both pictures are served by the page (JPEG
    thumbnails, cached under $XDG_CACHE_HOME, nothing written beside the photos)."""
    before = lib.files()
    with reviewing(lib.config) as review:
        status, headers, page = review.request("GET", review.url.removeprefix(review.base))
        assert status == 200
        assert b'<script src="/app.js"' in page
        cookie = headers["Set-Cookie"]
        assert cookie.startswith(review.cookie() + ";")
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
        auth = {"Cookie": review.cookie()}
        status, _, body = review.request("GET", "/api/quarantine", headers=auth)
        assert status == 200
        entries = _json(body)["quarantined"]
        assert isinstance(entries, list)
        by_src = {e["src"]: e for e in entries}
        assert set(by_src) == {
            str(lib.photos / "chat" / "coffee-wa.jpg"),
            str(lib.photos / "astronaut (1).jpg"),
        }
        wa = by_src[str(lib.photos / "chat" / "coffee-wa.jpg")]
        assert (wa["kind"], wa["keeper_path"]) == ("near", str(lib.photos / "coffee.jpg"))
        assert (wa["file"]["width"], wa["file"]["height"]) == (600, 400)
        assert wa["keeper"]["size"] == (lib.photos / "coffee.jpg").stat().st_size
        for e in entries:
            for path in (f"/img/action/{e['id']}", f"/img/file/{e['keeper_id']}"):
                status, headers, data = review.request("GET", path, headers=auth)
                assert (status, headers["Content-Type"]) == (200, "image/jpeg"), path
                with Image.open(io.BytesIO(data)) as im:
                    assert im.format == "JPEG" and max(im.size) == 320
        status, _, body = review.request("GET", "/api/groups", headers=auth)
        assert [g["keeper"]["path"] for g in _json(body)["groups"]] == [  # type: ignore[attr-defined]
            str(lib.shared / "chelsea-rotated.jpg")
        ]
    assert lib.files() == before, "the page wrote nothing beside the photos"
    # By sha256: the exact copy and its keeper share one; coffee-wa and coffee have theirs.
    assert len(list(cache_dir().rglob("*.jpg"))) == 3


def test_every_request_without_the_token_is_refused(lib: Library) -> None:
    with reviewing(lib.config) as review:
        (entry,) = [i for i in _quarantined(lib).values()][:1]
        for path in (
            "/",
            "/app.js",
            "/api/quarantine",
            "/api/groups",
            f"/img/action/{entry}",
            "/?token=wrong",
            "/?token=%ff%fe",
            "/?token=",
        ):
            status, _, _ = review.request("GET", path)
            assert status == 401, path
        status, _, _ = review.request(
            "GET", "/", headers={"Cookie": f"dedupd_review_{review.port}=wrong"}
        )
        assert status == 401
        status, _, _ = review.request(
            "POST",
            "/api/restore",
            json.dumps({"ids": [entry]}).encode(),
            {"Content-Type": "application/json", "Origin": review.base},
        )
        assert status == 401
    assert entry in _quarantined(lib).values()


def test_another_host_name_and_cross_origin_changes_are_refused(lib: Library) -> None:
    """DNS rebinding sends its own Host; another site open in the browser sends its own
    Origin (or Sec-Fetch-Site: cross-site), or a form: each is refused, and nothing moves.
    The same change from the page's own origin restores the photo."""
    quarantined = _quarantined(lib)
    wa = str(lib.photos / "chat" / "coffee-wa.jpg")
    with reviewing(lib.config) as review:
        auth = {"Cookie": review.cookie()}
        for host in ("evil.example", f"evil.example:{review.port}", "127.0.0.1:1"):
            status, _, _ = review.request("GET", "/", headers={**auth, "Host": host})
            assert status == 403, host
        body = json.dumps({"ids": [quarantined[wa]]}).encode()
        json_type = {"Content-Type": "application/json"}
        refused = [
            ({"Origin": "http://evil.example"}, 403),
            ({"Origin": f"http://evil.example:{review.port}"}, 403),
            ({"Origin": "null"}, 403),
            ({"Sec-Fetch-Site": "cross-site"}, 403),
            ({"Origin": review.base, "Sec-Fetch-Site": "same-site"}, 403),
            ({}, 403),  # says nothing of where it comes from
        ]
        for extra, expected in refused:
            status, _, _ = review.request(
                "POST", "/api/restore", body, {**auth, **json_type, **extra}
            )
            assert status == expected, extra
        form = {"Content-Type": "application/x-www-form-urlencoded", "Origin": review.base}
        status, _, _ = review.request("POST", "/api/restore", body, {**auth, **form})
        assert status == 415
        assert _quarantined(lib) == quarantined, "nothing was restored"
        same = {**auth, **json_type, "Origin": review.base, "Sec-Fetch-Site": "same-origin"}
        status, _, answer = review.request("POST", "/api/restore", body, same)
        assert status == 200, answer
        assert _json(answer)["results"] == [{"item": str(quarantined[wa]), "restored": wa}]
    assert os.path.isfile(wa)
    assert wa not in _quarantined(lib)


def test_a_body_nested_too_deeply_is_a_bad_request_and_the_page_goes_on(lib: Library) -> None:
    """`[[[[…` 20,000 deep made json.loads raise RecursionError: a 500 with a traceback
    logged. It is the client's error (400), like any body that is not a JSON object."""
    with reviewing(lib.config) as review:
        headers = {
            "Cookie": review.cookie(),
            "Content-Type": "application/json",
            "Origin": review.base,
        }
        status, _, answer = review.request("POST", "/api/restore", b"[" * 20_000, headers)
        assert (status, _json(answer)) == (400, {"error": "body is nested too deeply"})
        digits = b'{"ids": [' + b"1" * 5000 + b"]}"  # over int's digit limit: a ValueError
        status, _, answer = review.request("POST", "/api/restore", digits, headers)
        assert status == 400 and "not JSON" in str(_json(answer)["error"])
        status, _, _ = review.request("GET", "/api/quarantine", headers=headers)
        assert status == 200


def test_pictures_are_served_by_listed_ids_only(lib: Library) -> None:
    """No path from the request is ever opened: unknown ids and path-like URLs are 404."""
    with reviewing(lib.config) as review:
        auth = {"Cookie": review.cookie()}
        for path in (
            "/img/file/999999",
            "/img/action/999999",
            "/img/file/../../etc/passwd",
            f"/img/path{lib.photos}/coffee.jpg",
            "/review_static/app.js",
            "/app.py",
        ):
            status, _, _ = review.request("GET", path, headers=auth)
            assert status == 404, path


def test_purge_now_through_the_page_deletes_only_the_chosen_photo(lib: Library) -> None:
    quarantined = _quarantined(lib)
    wa = str(lib.photos / "chat" / "coffee-wa.jpg")
    with Store(lib.db, readonly=True) as store:
        dst = store.action(quarantined[wa]).dst  # type: ignore[union-attr]
    assert dst is not None and os.path.isfile(dst)
    with reviewing(lib.config) as review:
        headers = {
            "Cookie": review.cookie(),
            "Content-Type": "application/json",
            "Origin": review.base,
        }
        body = json.dumps({"ids": [quarantined[wa]]}).encode()
        status, _, answer = review.request("POST", "/api/purge", body, headers)
        assert (status, _json(answer)["purged"]) == (200, [quarantined[wa]])
    assert not os.path.exists(dst)
    assert set(_quarantined(lib)) == {str(lib.photos / "astronaut (1).jpg")}


def test_quarantine_a_reported_copy_and_mark_another_distinct_through_the_page(
    lib: Library,
) -> None:
    keeper = str(lib.shared / "chelsea-rotated.jpg")
    copy = str(lib.shared / "chelsea.jpg")
    with reviewing(lib.config) as review:
        headers = {
            "Cookie": review.cookie(),
            "Content-Type": "application/json",
            "Origin": review.base,
        }
        body = json.dumps({"path": copy, "keeper": keeper}).encode()
        status, _, answer = review.request("POST", "/api/quarantine", body, headers)
        assert status == 200, answer
        # Two photos dedupd never matched cannot be quarantined one for the other.
        body = json.dumps({"path": str(lib.photos / "hubble.jpg"), "keeper": keeper}).encode()
        status, _, answer = review.request("POST", "/api/quarantine", body, headers)
        assert status == 409 and b"not duplicates dedupd found" in answer
    assert not os.path.exists(copy)
    assert _quarantined(lib)[copy]
    with Store(lib.db, readonly=True) as store:
        action = store.action(_quarantined(lib)[copy])
        assert action is not None and action.keeper_path == keeper
        assert action.reason == "user: quarantined by hand"
        assert os.path.isfile(action.dst or "")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_review_stops_cleanly_on_sigterm_and_ctrl_c(lib: Library, signum: int) -> None:
    review = start_review(lib.config)
    code, err = stop_review(review, signum)
    assert code == 0, err
    assert "Traceback" not in err
    with socket.socket() as probe, pytest.raises(ConnectionRefusedError):
        probe.connect(("127.0.0.1", review.port))


def test_review_listens_on_the_loopback_only(lib: Library) -> None:
    """The listening socket, as the kernel lists it, is 127.0.0.1:PORT, not 0.0.0.0."""
    with reviewing(lib.config) as review:
        listening = set()
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, port = local.split(":")
            if state == "0A" and int(port, 16) == review.port:  # 0A: LISTEN
                listening.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
        assert listening == {"127.0.0.1"}
        assert not any(
            f":{review.port:04X} " in line and " 0A " in line
            for line in Path("/proc/net/tcp6").read_text().splitlines()[1:]
        )


# -- the service operation behind "quarantine this copy" ------------------------------------------


def test_local_quarantine_moves_a_reported_duplicate_journaled_and_refuses_others(
    lib: Library,
) -> None:
    service = LocalService(load_config(lib.config))
    keeper, copy = str(lib.shared / "chelsea-rotated.jpg"), str(lib.shared / "chelsea.jpg")
    with pytest.raises(Refused, match="cannot be its own keeper"):
        service.quarantine(copy, copy)
    with pytest.raises(Refused, match="not duplicates dedupd found"):
        service.quarantine(str(lib.photos / "hubble.jpg"), keeper)
    with pytest.raises(NotFoundError):
        service.quarantine(str(lib.shared / "nothing.jpg"), keeper)
    with pytest.raises(Refused, match="is quarantined"):  # already gone from its folder
        service.quarantine(
            str(lib.photos / "chat" / "coffee-wa.jpg"), str(lib.photos / "coffee.jpg")
        )
    answer = service.quarantine(copy, keeper)
    assert answer["src"] == copy and os.path.isfile(answer["dst"])
    assert not os.path.exists(copy) and os.path.isfile(keeper)
    with Store(lib.db, readonly=True) as store:
        record = store.file_at(copy)
        assert record is not None and record.state == "quarantined"
        action = store.action(answer["id"])
        assert action is not None and (action.kind, action.state) == ("quarantine", "done")
    assert service.restore([str(answer["id"])])["results"][0]["restored"] == copy


def test_quarantine_by_hand_refuses_a_pair_marked_distinct(lib: Library) -> None:
    """Red team 12: a page loaded before `dedupctl distinct` (or a restore, which marks the
    pair too) still quarantined the copy, and its purge deleted a photo the user had called
    another picture."""
    service = LocalService(load_config(lib.config))
    keeper, copy = str(lib.shared / "chelsea-rotated.jpg"), str(lib.shared / "chelsea.jpg")
    service.distinct(copy, keeper)
    with pytest.raises(Refused, match="marked as different pictures"):
        service.quarantine(copy, keeper)
    assert os.path.isfile(copy)


def test_quarantine_by_hand_never_acts_in_a_reference_root(tmp_path: Path) -> None:
    """Red team 12: a reference root's photo, named as the copy of its exact duplicate in a
    camera folder, was quarantined; reference roots are never acted on."""
    camera, archive = tmp_path / "camera", tmp_path / "archive"
    photos.copy(photos.photo("coffee"), archive / "A.jpg")
    photos.copy(photos.photo("coffee"), camera / "A-copy.jpg")
    config = tmp_path / "dedupd.yaml"
    config.write_text(
        f"database: {tmp_path / 'dedupd.db'}\n"
        f"socket: {tmp_path / 'no-daemon.sock'}\n"
        f"roots:\n  - {{path: {archive}, policy: reference}}\n"
        f"  - {{path: {camera}, policy: look}}\n"
        "policies:\n  look: {exact: report, near: report}\n"
        f"quarantine: {{path: {tmp_path / 'quarantine'}}}\n"
    )
    scanned = CliRunner().invoke(dedupd, ["scan", "--config", str(config), "--workers", "1"])
    assert scanned.exit_code == 0, scanned.output
    service = LocalService(load_config(config))
    with pytest.raises(Refused, match="reference root"):
        service.quarantine(str(archive / "A.jpg"), str(camera / "A-copy.jpg"))
    assert (archive / "A.jpg").is_file()
    # Red team 11: the camera folder swapped for a link to the archive (a link root owns is
    # followed) made the archive's path map to the camera's policy, looked up again.
    camera.rename(tmp_path / "camera-old")
    camera.symlink_to(archive)
    with pytest.raises(Refused, match="reference root"):
        service.quarantine(str(archive / "A.jpg"), str(camera / "A-copy.jpg"))
    assert (archive / "A.jpg").is_file()
    camera.unlink()
    (tmp_path / "camera-old").rename(camera)
    answer = service.quarantine(str(camera / "A-copy.jpg"), str(archive / "A.jpg"))
    assert not (camera / "A-copy.jpg").exists() and os.path.isfile(answer["dst"])


# -- thumbnails ------------------------------------------------------------------------------


def test_a_video_or_an_unreadable_file_gets_a_placeholder_never_a_decode(tmp_path: Path) -> None:
    thumbs = Thumbnails(tmp_path / "cache", max_pixels=10**8)
    clip = tmp_path / "clip.mov"
    photos.copy(photos.photo("coffee"), clip)  # decodable bytes: a decode would succeed
    video = {"id": 1, "path": str(clip), "sha256": "ab" * 32, "format": "MOV", "size": 10}
    assert thumbs.picture(str(clip), video) == (placeholder("video"), "image/svg+xml")
    gone = {**video, "format": "JPEG", "path": str(tmp_path / "gone.jpg")}
    data, media = thumbs.picture(str(tmp_path / "gone.jpg"), gone)
    assert (data, media) == (placeholder("vanished"), "image/svg+xml")
    assert not (tmp_path / "cache").exists()


def test_a_thumbnail_of_a_changed_file_is_served_but_not_cached(tmp_path: Path) -> None:
    thumbs = Thumbnails(tmp_path / "cache", max_pixels=10**8)
    src = photos.copy(photos.photo("coffee"), tmp_path / "coffee.jpg")
    record = {"path": str(src), "sha256": "0" * 64, "format": "JPEG", "size": 1}
    data, media = thumbs.picture(str(src), record)
    assert media == "image/jpeg" and data.startswith(b"\xff\xd8")
    assert not list((tmp_path / "cache").rglob("*.jpg"))


@pytest.mark.slow  # ~4-8 s: run with the long suites (make test-slow)
def test_the_page_asks_the_running_daemon_which_moves_the_file_and_forgets_it(
    tmp_path: Path,
) -> None:
    """With a daemon running, the page's changes go through its socket (the review process
    never says it works on the database), and the daemon takes a photo quarantined by hand
    out of its index, as after its own moves."""
    env = Env(tmp_path)
    env.write_config(camera="{exact: report, near: report}")
    photos.copy(photos.photo("coffee"), env.root / "IMG_1.jpg")
    wa = photos.reencode(photos.photo("coffee"), env.root / "chat" / "wa.jpg")
    with running(env) as daemon:
        wait_for(lambda: daemon.stats.hashed == 2 and _idle(daemon))
        assert len(daemon.ingest.index) == 2
        assert len(daemon.ingest.crops) == 2
        review = start_review(env.config)
        try:
            headers = {
                "Cookie": review.cookie(),
                "Content-Type": "application/json",
                "Origin": review.base,
            }
            body = json.dumps({"path": str(wa), "keeper": str(env.root / "IMG_1.jpg")})
            status, _, answer = review.request("POST", "/api/quarantine", body.encode(), headers)
            assert status == 200, answer
            action = _json(answer)["id"]
            assert not wa.exists() and env.state(wa) == "quarantined"
            assert len(daemon.ingest.index) == 1
            assert len(daemon.ingest.crops) == 1  # its crop words left with it
            body = json.dumps({"ids": [action]})
            status, _, answer = review.request("POST", "/api/restore", body.encode(), headers)
            assert _json(answer)["results"] == [{"item": str(action), "restored": str(wa)}]
            assert wa.is_file()
        finally:
            code, err = stop_review(review)
    assert code == 0 and "not running" not in err, err


def test_the_quarantine_filters_by_root_and_lists_every_root(lib: Library) -> None:
    with reviewing(lib.config) as review:
        auth = {"Cookie": review.cookie()}
        status, _, body = review.request("GET", f"/api/quarantine?root={lib.shared}", headers=auth)
        answer = _json(body)
        assert (status, answer["quarantined"]) == (200, [])
        assert answer["roots"] == [str(lib.photos)]
        status, _, body = review.request("GET", "/api/quarantine?since=3600", headers=auth)
        assert len(_json(body)["quarantined"]) == 2  # type: ignore[arg-type]


def test_a_cache_inside_a_photo_folder_is_never_written(tmp_path: Path) -> None:
    """$XDG_CACHE_HOME pointed into a watched root would put thumbnails where dedupd indexes
    photos: the cache is then not used, and the thumbnail made anew."""
    root = tmp_path / "photos"
    src = photos.copy(photos.photo("coffee"), root / "coffee.jpg")
    from dedupd.imaging import file_sha256

    record = {"path": str(src), "sha256": file_sha256(str(src)), "format": "JPEG", "size": 1}
    thumbs = Thumbnails(root / ".cache" / "thumbs", max_pixels=10**8, roots=[root])
    assert thumbs.picture(str(src), record)[1] == "image/jpeg"
    assert [p.name for p in root.rglob("*")] == ["coffee.jpg"]
    outside = Thumbnails(tmp_path / "cache", max_pixels=10**8, roots=[root])
    outside.picture(str(src), record)
    assert len(list((tmp_path / "cache").rglob("*.jpg"))) == 1


def test_review_without_a_daemon_or_a_database_is_an_error_at_once(tmp_path: Path) -> None:
    """Not a page that serves only errors: the command itself exits 2, naming the database."""
    config = tmp_path / "dedupd.yaml"
    config.write_text(f"database: {tmp_path / 'none.db'}\nsocket: {tmp_path / 'none.sock'}\n")
    process = subprocess.Popen(
        [sys.executable, "-c", DEDUPCTL, "--config", str(config), "review", "--no-open"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        out, err = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        pytest.fail("dedupctl review served a page without a daemon or a database")
    assert process.returncode == 2, err
    assert out == ""
    assert str(tmp_path / "none.db") in err
