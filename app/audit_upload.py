"""An audit's zip upload, read safely (docs/AUDIT.md, "As a service job").

Everything is checked on the zip's central directory before any member is expanded: the member count, each
member's name (no absolute path, no ``..``, no symlink, at most DFG_AUDIT_MAX_DEPTH folders deep), each member's
declared size (DFG_MAX_UPLOAD_BYTES, as one uploaded image) and compression ratio (DFG_AUDIT_MAX_RATIO: a zip
bomb), and the declared sizes together (DFG_AUDIT_MAX_UNCOMPRESSED_BYTES). Then only images under ``fake/`` and
``real/`` are read, each at most its declared size (a member that expands past it is refused), and each decoded
under the upload limits (``models.images.decode_image``). Nothing is written anywhere: the files go to Redis.
"""

from __future__ import annotations

import io
import stat
import zipfile
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from app.errors import InvalidParameter
from core.settings import Settings
from models.data.folder import IMAGE_EXTENSIONS
from models.detector import CLASS_NAMES
from models.images import ImageError, decode_image

#: Entries a zip made on a Mac or by a file manager carries besides the data: skipped, and said so.
_SKIPPED_NAMES = frozenset({".DS_Store", "Thumbs.db", "desktop.ini"})
_SKIPPED_FOLDERS = frozenset({"__MACOSX"})
#: Members below this size are not judged by their compression ratio: they cannot expand to much.
RATIO_FLOOR_BYTES = 256 << 10
#: Names shown in an error before "and N more".
SHOWN = 10


class BadAuditZip(InvalidParameter):
    title = "Invalid audit data"


class AuditZipTooLarge(BadAuditZip):
    status = 413
    title = "Audit data too large"


@dataclass(frozen=True)
class AuditUpload:
    """The audit's images: their names under the data folder (``fake/a.png``) and labels, in
    ``models.audit.runner.AuditData`` order, with each file's bytes; and what was skipped."""

    dataset: str
    items: tuple[tuple[str, int], ...]
    files: tuple[bytes, ...]
    skipped: tuple[str, ...] = field(default_factory=tuple)


def _names(names: list[str]) -> str:
    more = f" and {len(names) - SHOWN} more" if len(names) > SHOWN else ""
    return f"{names[:SHOWN]}{more}"


def _unsafe(info: zipfile.ZipInfo, max_depth: int) -> str | None:
    name = info.filename
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        return "is a symbolic link"
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return "is an absolute path"
    parts = name.replace("\\", "/").split("/")
    if ".." in parts:
        return "climbs out of the folder ('..')"
    if len([p for p in parts if p]) > max_depth + 1:
        return f"lies more than {max_depth} folders deep (DFG_AUDIT_MAX_DEPTH)"
    if info.flag_bits & 0x1:
        return "is encrypted"
    return None


def _skippable(name: str) -> bool:
    parts = [p for p in name.split("/") if p]
    return (
        name.endswith("/")
        or not parts
        or parts[0] in _SKIPPED_FOLDERS
        or parts[-1] in _SKIPPED_NAMES
        or parts[-1].startswith("._")
    )


def check_directory(infos: list[zipfile.ZipInfo], settings: Settings) -> None:
    """The checks made on the central directory alone, before anything is expanded."""
    if len(infos) > 2 * settings.audit_max_images + 64:
        raise AuditZipTooLarge(
            f"the zip has {len(infos)} members; an audit takes at most {settings.audit_max_images} images "
            "(DFG_AUDIT_MAX_IMAGES)"
        )
    unsafe = [(i.filename, why) for i in infos if (why := _unsafe(i, settings.audit_max_depth))]
    if unsafe:
        shown = "; ".join(f"{name!r} {why}" for name, why in unsafe[:SHOWN])
        raise BadAuditZip(f"the zip has unsafe member names, refused before reading anything: {shown}")
    total = 0
    for info in infos:
        if info.file_size > settings.max_upload_bytes:
            raise AuditZipTooLarge(
                f"zip member {info.filename!r} expands to {info.file_size} bytes; an image may have at most "
                f"{settings.max_upload_bytes} (DFG_MAX_UPLOAD_BYTES)"
            )
        ratio = info.file_size / max(info.compress_size, 1)
        if info.file_size > RATIO_FLOOR_BYTES and ratio > settings.audit_max_ratio:
            raise AuditZipTooLarge(
                f"zip member {info.filename!r} is compressed {ratio:.0f}:1 ({info.compress_size} bytes expand to "
                f"{info.file_size}), above {settings.audit_max_ratio}:1 (DFG_AUDIT_MAX_RATIO): a zip bomb, or no "
                "image"
            )
        total += info.file_size
    if total > settings.audit_max_uncompressed_bytes:
        raise AuditZipTooLarge(
            f"the zip's members expand to {total} bytes together, above {settings.audit_max_uncompressed_bytes} "
            "(DFG_AUDIT_MAX_UNCOMPRESSED_BYTES)"
        )


def _data_root(names: list[str]) -> str:
    """``""`` when fake/ or real/ is at the zip's root, ``"top/"`` when under its one top folder."""
    split = [n.split("/") for n in names]
    tops = sorted({parts[0] for parts in split})
    if any(len(parts) >= 2 and parts[0] in CLASS_NAMES for parts in split):
        return ""
    if len(tops) == 1 and any(len(parts) >= 3 and parts[1] in CLASS_NAMES for parts in split):
        return tops[0] + "/"
    below = sorted({"/".join(parts[:2]) for parts in split if len(parts) >= 3})
    raise BadAuditZip(
        "the zip needs a fake/ or a real/ folder of images, at its root or under one top folder; found "
        f"{_names(tops)}{f' (and below them {_names(below)})' if below else ''}"
    )


def read_audit_zip(data: bytes, filename: str, settings: Settings) -> AuditUpload:
    """The images of an audit's zip, checked and decoded; a ``BadAuditZip`` (4xx) names what is wrong."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise BadAuditZip(f"{filename} is not a readable zip file ({exc})") from None
    with archive:
        infos = archive.infolist()
        check_directory(infos, settings)
        kept = [i for i in infos if not _skippable(i.filename)]
        # Folder entries are no files: not worth a word. Metadata files (.DS_Store, __MACOSX/...) are said skipped.
        skipped = sorted(i.filename for i in infos if _skippable(i.filename) and not i.filename.endswith("/"))
        if not kept:
            raise BadAuditZip(f"{filename} holds no files (only {_names(sorted(i.filename for i in infos))})")
        root = _data_root([i.filename for i in kept])
        images, others = [], []
        for info in kept:
            rel = info.filename[len(root) :]
            parts = PurePosixPath(rel).parts
            if info.filename.startswith(root) and len(parts) >= 2 and parts[0] in CLASS_NAMES and (
                PurePosixPath(rel).suffix.lower() in IMAGE_EXTENSIONS
            ):  # fmt: skip
                images.append((rel, CLASS_NAMES.index(parts[0]), info))
            else:
                others.append(info.filename)
        if others:
            raise BadAuditZip(
                f"the zip may hold only images ({sorted(IMAGE_EXTENSIONS)}) under fake/ and real/; it also holds "
                f"{_names(sorted(others))}"
            )
        if len(images) > settings.audit_max_images:
            raise AuditZipTooLarge(
                f"the zip holds {len(images)} images; an audit takes at most {settings.audit_max_images} "
                "(DFG_AUDIT_MAX_IMAGES)"
            )
        images.sort(key=lambda item: (item[1], item[0]))
        files = tuple(_read_image(archive, info, rel, settings) for rel, _, info in images)
    dataset = root.rstrip("/") or PurePosixPath(filename).stem or "upload"
    return AuditUpload(dataset, tuple((rel, label) for rel, label, _ in images), files, tuple(skipped))


def _read_image(archive: zipfile.ZipFile, info: zipfile.ZipInfo, rel: str, settings: Settings) -> bytes:
    try:
        with archive.open(info) as member:
            body = member.read(info.file_size + 1)  # never more than it declared (plus one byte, to notice)
    except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError, EOFError) as exc:
        raise BadAuditZip(f"zip member {info.filename!r} cannot be read: {exc}") from None
    if len(body) > info.file_size:
        raise AuditZipTooLarge(f"zip member {info.filename!r} expands past the {info.file_size} bytes it declares")
    try:
        decode_image(body, max_bytes=settings.max_upload_bytes, max_pixels=settings.max_pixels,
                     min_side=settings.min_image_side)  # fmt: skip
    except ImageError as exc:
        raise BadAuditZip(f"{rel}: {exc}") from None
    return body
