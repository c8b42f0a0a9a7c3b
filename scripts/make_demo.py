"""Build the demo folder `make run` scans: real photos plus the duplicates uploads create."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests import photos


def main(target: Path) -> None:
    if target.exists() and any(target.iterdir()):
        print(f"demo folder {target} already exists; `make clean` to rebuild it")
        return
    for name in photos.PHOTOS:
        photos.copy(photos.photo(name), target / "camera" / f"{name}.jpg")
    src = photos.photo
    photos.copy(src("astronaut"), target / "camera" / "astronaut (1).jpg")
    photos.reencode(src("coffee"), target / "whatsapp" / "IMG-20261123-WA0001.jpg")
    photos.resize(src("rocket"), target / "whatsapp" / "IMG-20261123-WA0002.jpg")
    photos.exif_rotated(src("chelsea"), target / "edited" / "chelsea-rotated.jpg")
    photos.as_heic(src("hubble"), target / "export" / "hubble.heic")
    photos.hflip(src("coffee"), target / "edited" / "coffee-mirrored.jpg")
    (target / "camera" / "broken-upload.jpg").write_bytes(src("chelsea").read_bytes()[:4000])
    print(f"demo folder {target}: {sum(1 for p in target.rglob('*') if p.is_file())} files")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "demo/photos"))
