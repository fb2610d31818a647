"""The package index pip and twine speak: PEP 503 simple pages and their PEP 691 JSON form (with PEP 592
yanking), file downloads, and the legacy upload API (``twine upload --repository-url .../legacy/``).

An upload is written to a temporary file, checked (hash, archive safety, metadata), moved into place
under its sha256 and only then recorded in the database, so the index never links a partial file.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

from fastapi import APIRouter, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from starlette.datastructures import UploadFile

from .distfile import BadDistribution, check_filename, inspect
from .server_state import State, authenticate, sorted_releases, state
from .store import File, Project, Release, User

JSON_V1, HTML_V1 = "application/vnd.pypi.simple.v1+json", "application/vnd.pypi.simple.v1+html"
router = APIRouter()


def _negotiate(request: Request) -> str:
    """The PEP 691 media type for this request: ``?format=`` first, then the Accept header's best q."""
    wanted = request.query_params.get("format")
    if wanted:
        if wanted not in (JSON_V1, HTML_V1, "text/html"):
            raise HTTPException(406, f"format {wanted!r} is not served; use {JSON_V1} or {HTML_V1}")
        return wanted
    best, best_q = None, -1.0
    for part in (request.headers.get("accept") or "text/html").split(","):
        media, *params = (p.strip() for p in part.split(";"))
        q = 1.0
        for param in params:
            if param.startswith("q="):
                try:
                    q = float(param[2:])
                except ValueError:
                    q = 0.0
        chosen = {"*/*": HTML_V1, "text/*": "text/html"}.get(media, media)
        if chosen in (JSON_V1, HTML_V1, "text/html") and q > best_q and q > 0:
            best, best_q = chosen, q
    if best is None:
        raise HTTPException(406, f"none of the accepted types is served; use {JSON_V1} or {HTML_V1}")
    return best


@router.get("/simple/")
async def simple_root(request: Request) -> Response:
    return await _cached(request, "/simple/", _root_data, "simple_root.html")


def _root_data(st: State, _key: str) -> dict:
    with st.sessions() as session:
        names = session.scalars(select(Project.name).order_by(Project.name)).all()
    return {"projects": [{"name": n} for n in names]}


@router.get("/simple/{name}/")
async def simple_project(name: str, request: Request) -> Response:
    canonical = canonicalize_name(name)
    if canonical != name:
        return RedirectResponse(f"/simple/{canonical}/", status_code=301)
    return await _cached(request, canonical, _project_data, "simple_project.html")


def _project_data(st: State, canonical: str) -> dict | None:
    with st.sessions() as session:
        project = session.scalar(select(Project).where(Project.name == canonical))
        if project is None:
            return None
        files = []
        for release in sorted_releases(project):
            for f in sorted(release.files, key=lambda f: f.filename):
                files.append({"filename": f.filename, "url": f"/files/{f.filename}", "hashes": {"sha256": f.sha256},
                              "requires-python": release.requires_python or None, "size": f.size,
                              "upload-time": f.created.isoformat() + "Z",
                              "yanked": (release.yanked_reason or True) if release.yanked else False})
        return {"name": canonical, "files": files, "versions": [r.version for r in sorted_releases(project)]}


async def _cached(request: Request, key: str, load, template: str) -> Response:
    """Index pages are what pip asks for most: rendered once per change of the index, then served from memory
    without touching the database (the generation check is a stat)."""
    st = state(request)
    media = _negotiate(request)
    generation = st.generation()
    hit = st.pages.get((key, media))
    if hit is None or hit[0] != generation:
        data = await run_in_threadpool(load, st, key)
        if data is None:
            raise HTTPException(404, f"no project named {key!r}")
        if media == JSON_V1:
            body = json.dumps({"meta": {"api-version": "1.1"}, **data}).encode()
        else:
            body = st.templates.get_template(template).render(**data).encode()
        hit = st.pages[(key, media)] = (generation, body)
    return Response(hit[1], media_type=media, headers={"Vary": "Accept"})  # one URL, a body per Accept


@router.get("/files/{filename}")
def download(filename: str, request: Request) -> Response:
    st = state(request)
    with st.sessions() as session:
        row = session.scalar(select(File).where(File.filename == filename))
        if row is None:
            raise HTTPException(404, f"no file named {filename!r}")
        session.execute(update(File).where(File.id == row.id).values(downloads=File.downloads + 1))
        session.commit()
    return FileResponse(st.files / row.sha256, media_type="application/octet-stream", filename=filename,
                        headers={"ETag": f'"{row.sha256}"'})


@router.post("/legacy/")
async def upload(request: Request) -> Response:
    st = state(request)
    form = await request.form(max_files=1, max_fields=200, max_part_size=1 << 20)
    if form.get(":action") != "file_upload":
        raise HTTPException(400, f"unsupported :action {form.get(':action')!r} (only file_upload)")
    content = form.get("content")
    if not isinstance(content, UploadFile) or not content.filename:
        raise HTTPException(400, "the upload has no 'content' file")
    try:
        name, version, _ = check_filename(content.filename)
    except BadDistribution as exc:
        raise HTTPException(400, str(exc)) from None
    _check_form(form, content.filename, name, version)
    with st.sessions() as session:
        user = authenticate(request, session)
    temp, sha256, blake2, size = await _spool(content, st)
    try:
        for field_name, actual in (("sha256_digest", sha256), ("blake2_256_digest", blake2)):
            stated = str(form.get(field_name) or "").strip().lower()
            if stated and stated != actual:
                raise HTTPException(400, f"{content.filename}: {field_name} {stated} does not match the file "
                                         f"({actual})")
        try:
            info = await run_in_threadpool(inspect, temp, content.filename, st.max_unpacked)
        except BadDistribution as exc:
            raise HTTPException(400, str(exc)) from None
        return await run_in_threadpool(_record, st, user.id, info, content.filename, temp, sha256, size)
    finally:
        temp.unlink(missing_ok=True)


def _check_form(form, filename: str, name: str, version: Version) -> None:
    """twine sends the name and version beside the file; as PyPI, refuse an upload where they disagree
    (the file's own metadata is checked against its name later, by ``inspect``)."""
    stated = str(form.get("name") or "").strip()
    if stated and canonicalize_name(stated) != name:
        raise HTTPException(400, f"{filename}: the form names project {stated!r}, the file {name!r}")
    stated = str(form.get("version") or "").strip()
    if stated:
        try:
            said = Version(stated)
        except InvalidVersion:
            raise HTTPException(400, f"{filename}: the form's version {stated!r} does not follow PEP 440") from None
        if said != version:
            raise HTTPException(400, f"{filename}: the form says version {said}, the file {version}")


async def _spool(content: UploadFile, st: State) -> tuple[Path, str, str, int]:
    sha, blake = hashlib.sha256(), hashlib.blake2b(digest_size=32)
    size = 0
    handle, name = tempfile.mkstemp(dir=st.incoming, suffix=".part")
    with os.fdopen(handle, "wb") as out:
        while chunk := await content.read(1 << 20):
            size += len(chunk)
            if size > st.max_upload:
                out.close()
                Path(name).unlink(missing_ok=True)
                raise HTTPException(413, f"{content.filename}: over the upload limit of {st.max_upload:,} bytes")
            sha.update(chunk)
            blake.update(chunk)
            out.write(chunk)
        out.flush()
        os.fsync(out.fileno())
    return Path(name), sha.hexdigest(), blake.hexdigest(), size


def _record(st: State, user_id: int, info, filename: str, temp: Path, sha256: str, size: int) -> Response:
    with st.sessions() as session:
        project = session.scalar(select(Project).where(Project.name == info.canonical))
        user = session.get(User, user_id)
        if project is None:
            project = Project(name=info.canonical, display_name=info.name, owner_id=user_id)
            session.add(project)
        elif not project.may_publish(user):
            raise HTTPException(403, f"{user.name} may not publish {project.name!r}: it belongs to "
                                     f"{project.owner.name} (ask the owner to add you as a maintainer)")
        if session.scalar(select(File).where(File.filename == filename)) is not None:
            raise HTTPException(400, f"File already exists: {filename} (a published file never changes; "
                                     "publish a new version)")
        version = str(info.version)
        release = session.scalar(select(Release).where(Release.project == project, Release.version == version))
        if release is None:
            release = Release(project=project, version=version, summary=info.summary[:1000],
                              description=info.description, requires_python=info.requires_python)
            session.add(release)
        if info.manifest is not None and (release.manifest is None or info.packagetype == "bdist_wheel"):
            release.manifest = info.manifest
        target = st.files / sha256
        if not target.exists():
            os.replace(temp, target)
            _fsync_dir(st.files)
        session.add(File(release=release, filename=filename, packagetype=info.packagetype, sha256=sha256, size=size))
        try:
            session.commit()
        except IntegrityError:
            session.rollback()
            raise HTTPException(409, f"{filename}: another upload of the same name or file won the race; retry") \
                from None
    st.changed()
    return JSONResponse({"ok": True, "name": info.canonical, "version": version, "sha256": sha256})


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
