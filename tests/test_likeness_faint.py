"""Faint local changes (`dedupd.likeness`): a figure in a night photo, a silhouette in fog, a
pencil note on a letter differ from what they are laid on by 12 to 25 grey levels, under the
32 a textured picture's pixels must differ by. Where the two pictures are flat the check
asks less (FAINT), so these are different pictures; and such a photo's copies still move."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from dedupd.filestat import Counterpart, FileStat, Likeness
from dedupd.likeness import compare_files, refusal
from tests import photos


def _like(newcomer: Path, counterpart: Path) -> Likeness:
    stat = FileStat.of(os.stat(counterpart))
    return compare_files(str(newcomer), Counterpart(str(counterpart), stat), 10**9)


def _moves(newcomer: Path, counterpart: Path) -> tuple[bool, Likeness]:
    found = _like(newcomer, counterpart)
    return refusal(found, moving_is_newcomer=True) is None, found


def _scene(dst: Path, gain: float, offset: float = 0.0, figure: float = 0.0) -> Path:
    """The rocket photo (640x427) at `gain` x its levels + `offset` (a night: x0.25; fog: x0.3
    over light grey), with a standing figure (a 26x70 px body under a head, soft-edged)
    `figure` grey levels brighter or darker on the left, as a camera JPEG (q92)."""
    with Image.open(photos.photo("rocket")) as im:
        pixels = np.asarray(im.convert("RGB"), np.float32) * gain + offset
    mask = Image.new("L", (pixels.shape[1], pixels.shape[0]), 0)
    draw = ImageDraw.Draw(mask)
    draw.ellipse((87, 250, 101, 264), fill=255)
    draw.rounded_rectangle((81, 264, 107, 300), 5, fill=255)
    draw.rectangle((82, 296, 92, 334), fill=255)
    draw.rectangle((96, 296, 106, 334), fill=255)
    soft = np.asarray(mask.filter(ImageFilter.GaussianBlur(1.5)), np.float32) / 255
    pixels += figure * soft[..., None]
    out = Image.fromarray(np.clip(pixels, 0, 255).round().astype(np.uint8))
    out.save(dst, quality=92)
    return dst


def test_a_figure_standing_in_a_night_photo_is_a_different_picture(tmp_path: Path) -> None:
    night = _scene(tmp_path / "night.jpg", 0.25)
    person = _scene(tmp_path / "person.jpg", 0.25, figure=18)
    moved, found = _moves(person, night)
    assert not moved and found.worst > 1, found
    # and the other way round: the photo without the figure would not move either
    moved, found = _moves(night, person)
    assert not moved, found


def test_a_silhouette_in_fog_is_a_different_picture(tmp_path: Path) -> None:
    fog = _scene(tmp_path / "fog.jpg", 0.3, 0.7 * 176)
    figure = _scene(tmp_path / "figure.jpg", 0.3, 0.7 * 176, figure=-15)
    moved, found = _moves(figure, fog)
    assert not moved and found.worst > 1, found


def test_a_night_photos_re_encode_and_half_size_copy_still_move(tmp_path: Path) -> None:
    night = _scene(tmp_path / "night.jpg", 0.25)
    with Image.open(night) as im:
        im.save(tmp_path / "q70.jpg", quality=70)
        im.resize((320, 214), Image.Resampling.LANCZOS).save(tmp_path / "half.jpg", quality=80)
    for copy in ("q70.jpg", "half.jpg"):
        moved, found = _moves(tmp_path / copy, night)
        assert moved, (copy, found)


def _letter(dst: Path, note: float = 0.0, quality: int = 85) -> Path:
    """A scanned letter (800x600): printed lines on paper with the scan's noise (σ 5), and
    when `note` is given a line written in pencil that many grey levels under the paper."""
    w, h = 800, 600
    ink = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(ink)
    font = ImageFont.load_default(size=20)
    draw.text((60, 40), "Northfield & Hale LLP", fill=255, font=ImageFont.load_default(size=36))
    for row in range(10):
        draw.text((60, 200 + 34 * row), photos._WORDS[row] * 6, fill=255, font=font)
    pencil = Image.new("L", (w, h), 0)
    ImageDraw.Draw(pencil).text(
        (70, 130), "paid 12/3, ref 4921 - call Anna", fill=255, font=ImageFont.load_default(size=26)
    )
    ink_f = np.asarray(ink.filter(ImageFilter.GaussianBlur(0.7)), np.float32) / 255
    lead = np.asarray(pencil.filter(ImageFilter.GaussianBlur(0.8)), np.float32) / 255
    noise = np.random.default_rng(3).normal(0, 5, (h, w)).astype(np.float32)
    grey = (236 + noise) * (1 - ink_f) + 25 * ink_f - note * lead
    paper = np.stack([grey + 4, grey + 1, grey - 6], axis=2)
    Image.fromarray(paper.clip(0, 255).astype(np.uint8)).save(dst, quality=quality)
    return dst


def test_a_pencil_note_on_a_letter_is_a_different_picture(tmp_path: Path) -> None:
    letter = _letter(tmp_path / "letter.jpg")
    noted = _letter(tmp_path / "noted.jpg", note=18)
    moved, found = _moves(noted, letter)
    assert not moved and found.worst > 1, found


def test_a_scanned_letters_re_encoded_copy_still_moves(tmp_path: Path) -> None:
    letter = _letter(tmp_path / "letter.jpg")
    with Image.open(letter) as im:
        im.save(tmp_path / "q70.jpg", quality=70)
    moved, found = _moves(tmp_path / "q70.jpg", letter)
    assert moved, found


def test_a_brightened_copy_with_clipped_highlights_still_moves(tmp_path: Path) -> None:
    """Brightened by 20%, the astronaut's white suit clips: many levels became 255, which
    map back onto no one level of the original. There, and at any level the tone map fits
    worse all over, the check asks STRONG levels again, not FAINT."""
    from PIL import ImageEnhance

    original = photos.copy(photos.photo("astronaut"), tmp_path / "astronaut.jpg")
    with Image.open(original) as im:
        brighter = ImageEnhance.Brightness(im.convert("RGB")).enhance(1.2)
    brighter.save(tmp_path / "brighter.jpg", quality=90)
    moved, found = _moves(tmp_path / "brighter.jpg", original)
    assert moved, found
