"""Read what an uploaded wheel or sdist says about itself, as data: its core metadata and its
``apt-plugin.toml``. Nothing in an upload is imported, executed or extracted to disk; every archive is
treated as hostile (traversing or absolute member names, links, bombs, a manifest that is not TOML).
"""

from __future__ import annotations

import stat
import tarfile
import tomllib
import zipfile
from dataclasses import dataclass, field
from email.parser import Parser
from pathlib import Path, PurePosixPath

from packaging.utils import (
    InvalidSdistFilename,
    InvalidWheelFilename,
    canonicalize_name,
    parse_sdist_filename,
    parse_wheel_filename,
)
from packaging.version import InvalidVersion, Version

from apt_kernel.api import MANIFEST_FILE, ManifestError, parse_manifest

MAX_MEMBERS = 10_000
MAX_MEMBER_READ = 1 << 20  # METADATA, PKG-INFO and apt-plugin.toml are small; more is refused, not read
MAX_RATIO = 200  # a member that unpacks to 200x its compressed size is a bomb, whatever its absolute size


class BadDistribution(ValueError):
    """An upload that is not a well-formed, safe wheel or sdist; the message says what and where."""


@dataclass
class DistInfo:
    name: str  # as the metadata spells it
    version: Version
    packagetype: str  # "bdist_wheel" | "sdist"
    summary: str = ""
    description: str = ""
    requires_python: str = ""
    requires_dist: list[str] = field(default_factory=list)
    manifest: dict | None = None  # the parsed apt-plugin.toml, if the distribution has one

    @property
    def canonical(self) -> str:
        return canonicalize_name(self.name)

    def provides(self) -> dict[str, list[str]]:
        tables = (self.manifest or {}).get("provides", {})
        return {kind: sorted(names) for kind, names in tables.items()}


def check_filename(filename: str) -> tuple[str, Version, str]:
    """(canonical name, version, packagetype) from a wheel or sdist file name; refuse anything else."""
    if not filename or filename != PurePosixPath(filename).name or "\\" in filename or filename.startswith("."):
        raise BadDistribution(f"file name {filename!r}: must be a plain file name, with no folders")
    try:
        if filename.endswith(".whl"):
            name, version, _, _ = parse_wheel_filename(filename)
            return name, version, "bdist_wheel"
        if filename.endswith((".tar.gz", ".zip")):
            name, version = parse_sdist_filename(filename)
            return name, version, "sdist"
    except (InvalidWheelFilename, InvalidSdistFilename, InvalidVersion) as exc:
        raise BadDistribution(f"file name {filename!r}: {exc} (versions must follow PEP 440)") from None
    raise BadDistribution(f"file name {filename!r}: only wheels (.whl) and sdists (.tar.gz) are accepted")


def _member_name(name: str, where: str) -> PurePosixPath:
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or "\\" in name or ":" in (path.parts[0] if path.parts else ""):
        raise BadDistribution(f"{where}: member {name!r} points outside the archive")
    return path


def inspect(path: Path, filename: str, max_unpacked: int) -> DistInfo:
    """Check the file behind ``filename`` and read its metadata; raise ``BadDistribution`` on anything odd."""
    name, version, packagetype = check_filename(filename)
    reader = _wheel if packagetype == "bdist_wheel" else _sdist
    info = reader(path, filename, max_unpacked)
    if info.canonical != name:
        raise BadDistribution(f"{filename}: the metadata names {info.name!r}, the file name {name!r}")
    if info.version != version:
        raise BadDistribution(f"{filename}: the metadata says version {info.version}, the file name {version}")
    return info


def _wheel(path: Path, filename: str, max_unpacked: int) -> DistInfo:
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise BadDistribution(f"{filename}: not a wheel (a zip archive): {exc}") from None
    with archive:
        members = archive.infolist()
        _limits(filename, [(m.filename, m.file_size, m.compress_size) for m in members], max_unpacked)
        files: dict[PurePosixPath, zipfile.ZipInfo] = {}
        for member in members:
            path_in = _member_name(member.filename, filename)
            mode = member.external_attr >> 16
            if stat.S_ISLNK(mode):
                raise BadDistribution(f"{filename}: member {member.filename!r} is a symbolic link")
            files[path_in] = member

        def read(member: zipfile.ZipInfo) -> str:
            try:
                with archive.open(member) as handle:
                    return _decode(handle.read(MAX_MEMBER_READ + 1), member.filename, filename)
            except (zipfile.BadZipFile, OSError, EOFError) as exc:  # CRC errors, truncation
                raise BadDistribution(f"{filename}: member {member.filename!r} cannot be read: {exc}") from None

        metadata = [p for p in files if len(p.parts) == 2 and p.parts[0].endswith(".dist-info")
                    and p.name == "METADATA"]
        if len(metadata) != 1:
            raise BadDistribution(f"{filename}: a wheel has exactly one *.dist-info/METADATA (found {len(metadata)})")
        info = _metadata(read(files[metadata[0]]), f"{filename}: {metadata[0]}", "bdist_wheel")
        manifests = [p for p in files if p.name == MANIFEST_FILE and len(p.parts) == 2]
        info.manifest = _manifest(read(files[manifests[0]]), f"{filename}: {manifests[0]}") if manifests else None
    return info


def _sdist(path: Path, filename: str, max_unpacked: int) -> DistInfo:
    if filename.endswith(".zip"):
        raise BadDistribution(f"{filename}: zip sdists are deprecated (PEP 625); upload a .tar.gz")
    try:
        archive = tarfile.open(path, "r:gz")
        members = archive.getmembers()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise BadDistribution(f"{filename}: not a gzip'd tar archive: {exc}") from None
    with archive:
        # sizes in a tar are stated, not compressed, so the whole archive's ratio is the bomb check
        _limits(filename, [(m.name, m.size, 0) for m in members], max_unpacked, whole=path.stat().st_size)
        files: dict[PurePosixPath, tarfile.TarInfo] = {}
        for member in members:
            path_in = _member_name(member.name, filename)
            if member.issym() or member.islnk():
                raise BadDistribution(f"{filename}: member {member.name!r} is a link")
            if not (member.isfile() or member.isdir()):
                raise BadDistribution(f"{filename}: member {member.name!r} is not a regular file")
            files[path_in] = member

        def read(member: tarfile.TarInfo) -> str:
            handle = archive.extractfile(member)
            assert handle is not None  # regular files only, checked above
            return _decode(handle.read(MAX_MEMBER_READ + 1), member.name, filename)

        pkg_info = [p for p in files if len(p.parts) == 2 and p.name == "PKG-INFO"]
        if len(pkg_info) != 1:
            raise BadDistribution(f"{filename}: an sdist has exactly one top-level */PKG-INFO (found {len(pkg_info)})")
        info = _metadata(read(files[pkg_info[0]]), f"{filename}: {pkg_info[0]}", "sdist")
        manifests = sorted((p for p in files if p.name == MANIFEST_FILE and 3 <= len(p.parts) <= 4
                            and "tests" not in p.parts), key=lambda p: len(p.parts))
        info.manifest = _manifest(read(files[manifests[0]]), f"{filename}: {manifests[0]}") if manifests else None
    return info


def _limits(filename: str, members: list[tuple[str, int, int]], max_unpacked: int, whole: int = 0) -> None:
    if len(members) > MAX_MEMBERS:
        raise BadDistribution(f"{filename}: {len(members)} members (at most {MAX_MEMBERS})")
    total = sum(size for _, size, _ in members)
    if total > max_unpacked or (whole and total > MAX_RATIO * max(whole, 1) and total > 1 << 20):
        raise BadDistribution(f"{filename}: unpacks to {total:,} bytes (limit {max_unpacked:,}, or {MAX_RATIO}x "
                              "the archive): refused as a possible archive bomb")
    for name, size, packed in members:
        if packed and size > 1 << 20 and size > MAX_RATIO * packed:
            raise BadDistribution(f"{filename}: member {name!r} unpacks {size:,} bytes from {packed:,}: "
                                  "refused as a possible archive bomb")


def _decode(data: bytes, member: str, filename: str) -> str:
    if len(data) > MAX_MEMBER_READ:
        raise BadDistribution(f"{filename}: member {member!r} is over {MAX_MEMBER_READ:,} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadDistribution(f"{filename}: member {member!r} is not UTF-8 text: {exc}") from None


def _metadata(text: str, where: str, packagetype: str) -> DistInfo:
    message = Parser().parsestr(text)
    name, version = message.get("Name"), message.get("Version")
    if not name or not version:
        raise BadDistribution(f"{where}: core metadata needs Name and Version")
    try:
        parsed = Version(version)
    except InvalidVersion:
        raise BadDistribution(f"{where}: version {version!r} does not follow PEP 440") from None
    body = message.get_payload()
    return DistInfo(name=name.strip(), version=parsed, packagetype=packagetype, summary=message.get("Summary", ""),
                    description=message.get("Description") or (body if isinstance(body, str) else ""),
                    requires_python=message.get("Requires-Python", ""),
                    requires_dist=list(message.get_all("Requires-Dist") or []))


def _manifest(text: str, where: str) -> dict:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise BadDistribution(f"{where}: not TOML: {exc}") from None
    try:
        parse_manifest(data, where)
    except ManifestError as exc:
        raise BadDistribution(str(exc)) from None
    return data
