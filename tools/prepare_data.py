"""Fetch and select the openly licensed photographs that train and evaluate streamsr's default model.

Sources (see ../shared/reference/ECOSYSTEM.md section 10):

* four Debian wallpaper packages, fetched with ``apt-get download PKG=VERSION`` into ``data/debs/``
  and unpacked with ``dpkg-deb -x`` into ``data/extract/<pkg>/`` (no root install);
* four photographs that ship inside scikit-image (``skimage.data.*``, offline), written as PNG into
  ``data/eval/``.

Only real photographs are kept; abstract art, renders, illustrations, logos and composites are
left out, each for a reason written in ``PACKAGES`` below (the choice was made by looking at every
image). Size variants of one plasma wallpaper are deduplicated by keeping the largest one.

Splits: lomiri-wallpapers-16.04, mate-backgrounds (nature/) and plasma-workspace-wallpapers are
"train"; lomiri-wallpapers-20.04 (Kleiber) and the scikit-image photographs are "eval". The script
refuses to write a manifest where an eval image equals a train image (same sha256) or nearly equals
one (32x32 grey thumbnails closer than THUMB_TOLERANCE).

Outputs:

* ``configs/photos.json``: the committed manifest, paths relative to ``data/``; per image: path,
  name, split, package, package_version, sha256, width, height, licence, copyright, licence_source
  (plus debian_licence / debian_copyright where a wallpaper's own metadata overrides the package's
  copyright file, and pixels_sha256 for the PNGs written here);
* ``data/photos.json``: the same list with absolute paths, for the training tool.

Every step skips what is already there, so re-running is cheap. ``--check`` only verifies that the
files listed in configs/photos.json exist with the recorded sha256.

    .venv/bin/python -m tools.prepare_data            # fetch, extract, select, write manifests
    .venv/bin/python -m tools.prepare_data --check    # verify data/ against configs/photos.json

Needs apt-get and dpkg-deb (Debian/Ubuntu), Pillow, and scikit-image for the eval PNGs.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import math
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from tools.harness import REPO

Image.MAX_IMAGE_PIXELS = None  # the wallpapers are large but trusted (Debian archive)

DEFAULT_DATA = REPO / "data"
DEFAULT_CONFIG = REPO / "configs" / "photos.json"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
THUMB_SIZE = 32
THUMB_TOLERANCE = 6.0  # mean absolute difference (0..255) below which two images count as the same

_RENDERED = "rendered or vector abstract art"


@dataclass(frozen=True)
class Package:
    """One Debian package: where its images live, which of them are photographs, and why not the rest.

    ``install_dir`` is the image folder inside the extracted package; ``source_dir`` is the same folder
    as the package's debian/copyright file names it (DEP-5 patterns use upstream source paths).
    ``photos`` and the keys of ``not_photos`` are fnmatch patterns relative to ``install_dir``: file
    paths, or wallpaper folder names when ``wallpaper_dirs`` is set (plasma: one folder per wallpaper,
    ``contents/images/<W>x<H>.jpg`` size variants, metadata.json or metadata.desktop beside them).
    """

    version: str
    split: str
    install_dir: str
    source_dir: str
    photos: tuple[str, ...]
    not_photos: dict[str, str] = field(default_factory=dict)
    wallpaper_dirs: bool = False


PACKAGES: dict[str, Package] = {
    "lomiri-wallpapers-16.04": Package(
        version="20.04.0-2", split="train",
        install_dir="usr/share/backgrounds", source_dir="16.04",
        photos=(
            "Bridge_by_Sander_Klootwijk.jpg", "Dragonfly_by_Bolly.jpg", "Picture_0B_by_freespace.jpg",
            "Picture_1A_by_freespace.jpg", "Wine_by_Jakkub_Mede.jpg", "aitzgorri_by_Aitzol_Berasategi.jpg",
            "free_by_Peter_Nerlich.jpg", "friends_by_Aitzol_Berasategi.jpg", "greentock_by_Peter_Nerlich.jpg",
            "life_by_Aitzol_Berasategi.jpg", "picosdeeuropa_by_Aitzol_Berasategi.jpg",
            "seeding_by_Clements_Engelhardt.jpg", "sunset_by_Aitzol_Berasategi.jpg",
        ),
        not_photos={
            "umang_by_Abhishek_Mudgal.jpg": "abstract colour gradient",
            "analogpattern_by_Peter_Nerlich.jpg":
                "ambiguous: close-up of an embossed texture under a strong synthetic colour wash",
        },
    ),
    "mate-backgrounds": Package(
        version="1.26.0-1", split="train",
        install_dir="usr/share/backgrounds/mate", source_dir="",
        photos=(
            "nature/Aqua.jpg", "nature/Blinds.jpg", "nature/Dune.jpg", "nature/FreshFlower.jpg",
            "nature/Garden.jpg", "nature/GreenMeadow.jpg", "nature/LadyBird.jpg", "nature/RainDrops.jpg",
            "nature/Storm.jpg", "nature/TwoWings.jpg", "nature/Wood.jpg", "nature/YellowFlower.jpg",
        ),
        not_photos={
            "abstract/*": "abstract art (Elephants is one painting in three sizes)",
            "desktop/*": "logos, stripes and blurred gradients",
        },
    ),
    "plasma-workspace-wallpapers": Package(
        version="4:5.27.5-2", split="train",
        install_dir="usr/share/wallpapers", source_dir="", wallpaper_dirs=True,
        photos=(
            "BytheWater", "ColdRipple", "ColorfulCups", "DarkestHour", "EveningGlow", "FallenLeaf",
            "Grey", "Kite", "OneStandsOut", "Path", "summer_1am",
        ),
        not_photos={
            "Altai": "low-poly illustration", "Autumn": "painted illustration",
            "FlyingKonqui": "cartoon mascot", "SafeLanding": "illustration",
            **{name: _RENDERED for name in (
                "Canopee", "Cascade", "Cluster", "Elarun", "Flow", "Honeywave", "IceCold", "Kay",
                "Kokkini", "MilkyWay", "Opal", "PastelHills", "Patak", "Shell", "Volna")},
        },
    ),
    "lomiri-wallpapers-20.04": Package(
        version="20.04.0-2", split="eval",
        install_dir="usr/share/backgrounds", source_dir="20.04",
        photos=("Kleiber_by_Lukas_Baubkus.jpg",),
        not_photos={
            "Fossa_by_Jasper_Roks.jpg": _RENDERED,
            "Painting-Colors_by__herobrine7gamer.jpg": "flat colour stripes",
            "Infinite-Sea_by_Aury88.jpg":
                "composite: Milky Way photo under synthetic polygons, gradient sky and rendered sea",
        },
    ),
}

# scikit-image photographs: (name, licence, copyright holder, phrase its docstring must contain).
SKIMAGE_PHOTOS = (
    ("astronaut", "public domain", "NASA (portrait of astronaut Eileen Collins)", "public domain"),
    ("coffee", "CC0-1.0", "Rachel Michetti (courtesy of Pikolo Espresso Bar)", "CC0"),
    ("chelsea", "CC0-1.0", "Stefan van der Walt", "CC0"),
    ("rocket", "public domain", "SpaceX (launch of DSCOVR on Falcon 9)", "public domain"),
)


def log(msg: str) -> None:
    print(msg, flush=True)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_pixels(img: Image.Image) -> str:
    """Hash of the decoded RGB pixels and size: stable across PNG encoders, unlike the file hash."""
    img = img.convert("RGB")
    h = hashlib.sha256(f"RGB {img.width}x{img.height}\n".encode())
    h.update(img.tobytes())
    return h.hexdigest()


def run(cmd: list[str], cwd: Path | None = None) -> None:
    log("$ " + " ".join(cmd))
    subprocess.run(cmd, cwd=cwd, check=True)


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)


# ---------------------------------------------------------------------------------------------
# 1. download and extract


def deb_field(deb: Path, name: str) -> str:
    return subprocess.run(["dpkg-deb", "-f", str(deb), name], check=True,
                          capture_output=True, text=True).stdout.strip()


def find_deb(debs: Path, pkg: str, version: str | None) -> Path | None:
    """The downloaded .deb of ``pkg`` (of ``version`` unless None), if there is one."""
    for deb in sorted(debs.glob(f"{pkg}_*.deb")):
        if deb_field(deb, "Package") == pkg and version in (None, deb_field(deb, "Version")):
            return deb
    return None


def download(debs: Path, any_version: bool) -> dict[str, Path]:
    """apt-get download every package not yet in ``debs``; one `apt-get update` and a retry on failure."""
    debs.mkdir(parents=True, exist_ok=True)
    wanted = {pkg: None if any_version else spec.version for pkg, spec in PACKAGES.items()}
    missing = [pkg for pkg, ver in wanted.items() if find_deb(debs, pkg, ver) is None]
    if missing:
        cmd = ["apt-get", "download"] + [p if wanted[p] is None else f"{p}={wanted[p]}" for p in missing]
        try:
            run(cmd, cwd=debs)
        except subprocess.CalledProcessError:
            log("download failed; refreshing the package lists and retrying once")
            run(["apt-get", "update"])
            run(cmd, cwd=debs)
    else:
        log(f"debs: all {len(wanted)} packages already in {debs}")
    found = {pkg: find_deb(debs, pkg, ver) for pkg, ver in wanted.items()}
    absent = [pkg for pkg, deb in found.items() if deb is None]
    if absent:
        sys.exit(f"error: no .deb for {absent} in {debs} (pass --any-version to accept another version)")
    return found


def extract(deb: Path, root: Path) -> None:
    """dpkg-deb -x into ``root`` unless it already holds this very .deb (marker .deb-sha256)."""
    marker = root / ".deb-sha256"
    digest = sha256_file(deb)
    if marker.is_file() and marker.read_text().strip() == digest:
        log(f"extract: {root.name} already extracted")
        return
    tmp = root.with_name(root.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    run(["dpkg-deb", "-x", str(deb), str(tmp)])
    (tmp / ".deb-sha256").write_text(digest + "\n")
    shutil.rmtree(root, ignore_errors=True)
    tmp.rename(root)


# ---------------------------------------------------------------------------------------------
# 2. licences


def parse_dep5(text: str) -> list[dict[str, str]]:
    """Paragraphs of a machine-readable debian/copyright file as {field: value} (continuations joined)."""
    paragraphs, fields, key = [], {}, None
    for line in text.splitlines() + [""]:
        if not line.strip():
            if fields:
                paragraphs.append(fields)
            fields, key = {}, None
        elif line[0] in " \t" and key:
            fields[key] += "\n" + line.strip()
        elif ":" in line:
            key, value = line.split(":", 1)
            key = key.strip()
            fields[key] = value.strip()
    return paragraphs


def dep5_lookup(paragraphs: list[dict[str, str]], source_path: str) -> tuple[str, str]:
    """(licence, copyright) of ``source_path``: the last Files paragraph whose pattern matches (DEP-5)."""
    match = None
    for para in paragraphs:
        patterns = para.get("Files", "").split()
        if any(fnmatch.fnmatchcase(source_path, pat) for pat in patterns):
            match = para
    if match is None:
        raise LookupError(f"debian/copyright has no Files paragraph for {source_path}")
    licence = match["License"].splitlines()[0].strip()
    holders = "; ".join(s.strip() for s in match["Copyright"].splitlines() if s.strip())
    return licence, holders


def wallpaper_metadata(folder: Path) -> tuple[str, str, Path]:
    """(licence, authors, file) from a plasma wallpaper's metadata.json, else its metadata.desktop."""
    meta = folder / "metadata.json"
    if meta.is_file():
        plugin = json.loads(meta.read_text(encoding="utf-8"))["KPlugin"]
        authors = [a["Name"] + (f" <{a['Email']}>" if a.get("Email") else "")
                   for a in plugin.get("Authors", [])]
        return plugin["License"], "; ".join(authors), meta
    meta = folder / "metadata.desktop"
    kv = dict(line.split("=", 1) for line in meta.read_text(encoding="utf-8").splitlines() if "=" in line)
    author = kv.get("X-KDE-PluginInfo-Author", "")
    email = kv.get("X-KDE-PluginInfo-Email")
    return kv["X-KDE-PluginInfo-License"], author + (f" <{email}>" if email else ""), meta


# ---------------------------------------------------------------------------------------------
# 2. selection (continued)


def image_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as img:
        return img.size


def largest_variant(folder: Path) -> Path:
    """The largest of a plasma wallpaper's size variants (contents/images/*; images_dark is skipped).

    Most variants are symlinks to one real file, so they are resolved first.
    """
    variants = {p.resolve() for p in (folder / "contents" / "images").iterdir()
                if p.suffix.lower() in IMAGE_SUFFIXES}
    return max(sorted(variants), key=lambda p: math.prod(image_size(p)))


def candidates(base: Path, spec: Package) -> list[str]:
    """Every image (or wallpaper folder) the package ships under its install dir, relative to it."""
    if spec.wallpaper_dirs:
        return sorted(p.name for p in base.iterdir() if p.is_dir())
    return sorted(str(p.relative_to(base)) for p in base.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def classify(base: Path, spec: Package, pkg: str) -> list[str]:
    """The photographs of a package; fails when the package ships an image the table does not cover."""
    def matches(name, patterns):
        return any(fnmatch.fnmatchcase(name, pat) for pat in patterns)

    found = candidates(base, spec)
    photos = [n for n in found if matches(n, spec.photos)]
    unknown = [n for n in found if not matches(n, spec.photos) and not matches(n, spec.not_photos)]
    missing = [pat for pat in spec.photos if not fnmatch.filter(found, pat)]
    if unknown or missing:
        sys.exit(f"error: {pkg}: images not classified {unknown}, listed photos not found {missing}; "
                 "look at them and update PACKAGES in tools/prepare_data.py")
    return photos


def package_records(data: Path, pkg: str, spec: Package, deb: Path) -> list[dict]:
    root = data / "extract" / pkg
    base = root / spec.install_dir
    version = deb_field(deb, "Version")
    copyright_file = root / "usr/share/doc" / pkg / "copyright"
    dep5 = parse_dep5(copyright_file.read_text(encoding="utf-8"))
    records = []
    for name in classify(base, spec, pkg):
        image = largest_variant(base / name) if spec.wallpaper_dirs else (base / name).resolve()
        licence, holders = dep5_lookup(dep5, str(Path(spec.source_dir, image.relative_to(base))))
        extra, source = {}, copyright_file
        if spec.wallpaper_dirs:
            extra = {"debian_licence": licence, "debian_copyright": holders}
            licence, holders, source = wallpaper_metadata(base / name)
        records.append(image_record(
            data, image, name=f"{pkg}/{Path(name).stem}", split=spec.split, package=pkg,
            package_version=version, licence=licence, copyright=holders,
            licence_source=str(source.relative_to(data)), **extra))
    return records


def image_record(data: Path, path: Path, **fields) -> dict:
    width, height = image_size(path)
    return {"path": str(path.relative_to(data)), **fields, "sha256": sha256_file(path),
            "width": width, "height": height}


# ---------------------------------------------------------------------------------------------
# 3. scikit-image eval photographs


def skimage_records(data: Path) -> list[dict]:
    """Write the scikit-image photographs as data/eval/<name>.png (once) and describe them."""
    try:
        import skimage
        import skimage.data
    except ImportError:
        sys.exit("error: scikit-image is needed for the eval photographs (pip install scikit-image)")
    out = data / "eval"
    out.mkdir(parents=True, exist_ok=True)
    records = []
    for name, licence, holder, phrase in SKIMAGE_PHOTOS:
        loader = getattr(skimage.data, name)
        if phrase.lower() not in (loader.__doc__ or "").lower():
            sys.exit(f"error: skimage.data.{name} docstring no longer says {phrase!r}; re-check its licence")
        path = out / f"{name}.png"
        if not path.is_file():
            tmp = path.with_name(path.name + ".tmp.png")
            Image.fromarray(loader()).convert("RGB").save(tmp, format="PNG")
            tmp.replace(path)
            log(f"eval: wrote {path.relative_to(data)}")
        with Image.open(path) as img:
            pixels = sha256_pixels(img)
        records.append(image_record(
            data, path, name=f"skimage/{name}", split="eval", package="scikit-image",
            package_version=skimage.__version__, licence=licence, copyright=holder,
            licence_source=f"docstring of skimage.data.{name}", pixels_sha256=pixels))
    return records


# ---------------------------------------------------------------------------------------------
# safety: no eval image in train


def thumbnail(path: Path) -> list[int]:
    with Image.open(path) as img:
        img.draft("L", (THUMB_SIZE * 4, THUMB_SIZE * 4))
        return list(img.convert("L").resize((THUMB_SIZE, THUMB_SIZE), Image.Resampling.BOX).tobytes())


def assert_disjoint(data: Path, records: list[dict]) -> None:
    """Refuse duplicates (sha256) and any eval image that is a (resized) copy of a train image."""
    dup = [h for h, n in Counter(r["sha256"] for r in records).items() if n > 1]
    if dup:
        sys.exit(f"error: duplicate files in the selection: {dup}")
    thumbs = {r["path"]: thumbnail(data / r["path"]) for r in records}
    train = [r["path"] for r in records if r["split"] == "train"]
    for ev in (r["path"] for r in records if r["split"] == "eval"):
        for tr in train:
            mad = sum(abs(a - b) for a, b in zip(thumbs[ev], thumbs[tr])) / THUMB_SIZE ** 2
            if mad < THUMB_TOLERANCE:
                sys.exit(f"error: eval image {ev} looks like train image {tr} (thumbnail MAD {mad:.1f})")


# ---------------------------------------------------------------------------------------------
# 4. manifests, summary, --check


def write_manifests(data: Path, config: Path, records: list[dict], debs: dict[str, Path]) -> None:
    packages = {pkg: {"version": deb_field(deb, "Version"), "deb": deb.name, "deb_sha256": sha256_file(deb)}
                for pkg, deb in debs.items()}
    write_json(config, {
        "about": "Photographs for training (split train) and evaluating (split eval) streamsr's default "
                 "model; paths are relative to data/. Made by tools/prepare_data.py.",
        "packages": packages,
        "images": records,
    })
    write_json(data / "photos.json", {
        "root": str(data.resolve()),
        "images": [{**r, "path": str((data / r["path"]).resolve())} for r in records],
    })
    write_json(data / "photos_trainval.json", {
        "root": str(data.resolve()),
        "images": [{**r, "path": str((data / r["path"]).resolve()), "split": split}
                   for r, split in zip(records, validation_split(records))],
    })
    log(f"wrote {config}, {data / 'photos.json'} and {data / 'photos_trainval.json'}")


VALIDATION_PHOTOS = 4  # training photos held back to choose sampling settings (never the eval photos)


def validation_split(records: list[dict]) -> list[str]:
    """Each record's split with VALIDATION_PHOTOS "train" photos turned into "val": those with the smallest
    sha256 (a choice fixed by the files, blind to their content). The default model's training run
    (tools.train --data data/photos_trainval.json) never samples them; tools.tune_modes chooses the
    fidelity/detail settings on them."""
    train = sorted((r["sha256"], i) for i, r in enumerate(records) if r["split"] == "train")
    val = {i for _, i in train[:VALIDATION_PHOTOS]}
    return ["val" if i in val else r["split"] for i, r in enumerate(records)]


def summarise(records: list[dict]) -> None:
    for split in ("train", "eval"):
        part = [r for r in records if r["split"] == split]
        mp = sum(r["width"] * r["height"] for r in part) / 1e6
        log(f"{split}: {len(part)} photographs, {mp:.1f} MP")
    for licence, n in sorted(Counter(r["licence"] for r in records).items()):
        log(f"  licence {licence}: {n}")


def check(data: Path, config: Path) -> int:
    """Verify every file of ``config`` under ``data`` by sha256 (pixels_sha256 for re-encoded PNGs)."""
    images = json.loads(config.read_text(encoding="utf-8"))["images"]
    bad = 0
    for r in images:
        path = data / r["path"]
        if not path.is_file():
            status = "MISSING"
        elif sha256_file(path) == r["sha256"]:
            status = "ok"
        elif "pixels_sha256" in r and sha256_pixels(Image.open(path)) == r["pixels_sha256"]:
            status = "ok (same pixels, other PNG encoding)"
        else:
            status = "SHA256 MISMATCH"
        bad += not status.startswith("ok")
        if status != "ok":
            log(f"{status}: {r['path']}")
    log(f"check: {len(images) - bad}/{len(images)} files ok")
    return 1 if bad else 0


def prepare(data: Path, config: Path, any_version: bool) -> None:
    debs = download(data / "debs", any_version)
    for pkg, deb in debs.items():
        extract(deb, data / "extract" / pkg)
    records = [r for pkg, spec in PACKAGES.items() for r in package_records(data, pkg, spec, debs[pkg])]
    records += skimage_records(data)
    assert_disjoint(data, records)
    write_manifests(data, config, records, debs)
    summarise(records)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, default=DEFAULT_DATA, help="where data goes (default: %(default)s)")
    ap.add_argument("--config", type=Path, default=DEFAULT_CONFIG,
                    help="the committed manifest (default: %(default)s)")
    ap.add_argument("--check", action="store_true",
                    help="only verify the files of --config by sha256; download nothing")
    ap.add_argument("--any-version", action="store_true",
                    help="download whatever version apt offers instead of the pinned ones (hashes will change)")
    args = ap.parse_args(argv)
    data = args.data_dir.resolve()
    if args.check:
        return check(data, args.config)
    prepare(data, args.config, args.any_version)
    return 0


if __name__ == "__main__":
    sys.exit(main())
