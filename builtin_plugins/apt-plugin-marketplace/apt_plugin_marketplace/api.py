"""The JSON API (search, plugin info, the newest compatible version, ratings, yanking, maintainers) and
the plugin directory page. Search terms only ever reach SQL as bound parameters."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import HTMLResponse
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version
from pydantic import BaseModel, Field
from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from apt_kernel.api import KERNEL_API_VERSION, Catalog, InvalidRange, ResolutionError, satisfies, solve

from .server_state import authenticate, sorted_releases, state
from .store import Project, Rating, Release, User

router = APIRouter(prefix="/api")
page = APIRouter()


def _project(session: Session, name: str) -> Project:
    project = session.scalar(select(Project).where(Project.name == canonicalize_name(name)))
    if project is None:
        raise HTTPException(404, f"no plugin named {name!r}")
    return project


def _latest(project: Project) -> Release | None:
    live = [r for r in sorted_releases(project) if not r.yanked]
    stable = [r for r in live if not Version(r.version).is_prerelease]
    return (stable or live or [None])[-1]


def _summary(project: Project, base: str) -> dict:
    latest = _latest(project)
    manifest = (latest.manifest if latest else None) or {}
    provides = {kind: sorted(names) for kind, names in manifest.get("provides", {}).items()}
    stars = [r.stars for r in project.ratings]
    return {"name": project.name, "display_name": project.display_name,
            "summary": latest.summary if latest else "", "latest": latest.version if latest else None,
            "kinds": sorted(provides), "provides": provides, "kernel_api": manifest.get("kernel_api"),
            "versions": [r.version for r in sorted_releases(project)],
            "yanked": {r.version: r.yanked_reason for r in sorted_releases(project) if r.yanked},
            "rating": round(sum(stars) / len(stars), 2) if stars else None, "ratings": len(stars),
            "downloads": sum(f.downloads for r in project.releases for f in r.files),
            "install": f"pip install --index-url {base}simple/ {project.name}"}


def _search(session: Session, q: str, kind: str | None, component: str | None, kernel_api: str | None,
            base: str) -> list[dict]:
    query = select(Project).order_by(Project.name)
    if q:
        matching = select(Release.project_id).where(or_(Release.summary.icontains(q, autoescape=True),
                                                        Release.description.icontains(q, autoescape=True)))
        query = query.where(or_(Project.name.icontains(q, autoescape=True),
                                Project.display_name.icontains(q, autoescape=True), Project.id.in_(matching)))
    found = []
    for project in session.scalars(query):
        row = _summary(project, base)
        if kind and kind not in row["kinds"]:
            continue
        if component and not any(component in names for names in row["provides"].values()):
            continue
        if kernel_api and not (row["kernel_api"] and _fits(kernel_api, row["kernel_api"])):
            continue
        found.append(row)
    return found


def _fits(kernel_api: str, wanted: str) -> bool:
    try:
        return satisfies(kernel_api, wanted)
    except InvalidRange:
        return False


@router.get("/search")
def search(request: Request, q: str = "", kind: str | None = None, component: str | None = None,
           kernel_api: str | None = None) -> list[dict]:
    with state(request).sessions() as session:
        return _search(session, q, kind, component, kernel_api, str(request.base_url))


@router.get("/plugins/{name}")
def info(name: str, request: Request) -> dict:
    with state(request).sessions() as session:
        project = _project(session, name)
        data = _summary(project, str(request.base_url))
        data["owner"] = project.owner.name
        data["maintainers"] = sorted(m.name for m in project.maintainers)
        data["releases"] = [{"version": r.version, "yanked": r.yanked, "yanked_reason": r.yanked_reason,
                             "requires_python": r.requires_python, "manifest": r.manifest, "summary": r.summary,
                             "files": [{"filename": f.filename, "sha256": f.sha256, "size": f.size,
                                        "packagetype": f.packagetype, "url": f"/files/{f.filename}",
                                        "downloads": f.downloads} for f in r.files]}
                            for r in sorted_releases(project)]
        data["comments"] = [{"user": r.user.name, "stars": r.stars, "comment": r.comment} for r in project.ratings]
        return data


@router.get("/plugins/{name}/compatible")
def compatible(name: str, request: Request, kernel_api: str = KERNEL_API_VERSION,
               installed: list[str] = Query(default=[])) -> dict:
    """The newest version of ``name`` that the kernel's solver accepts beside the installed plugins
    (``installed=apt-plugin-lm==0.1.0``, repeatable), with every other plugin it needs from this index."""
    pins: dict[str, str] = {}
    for item in installed:
        pin_name, sep, pin_version = item.partition("==")
        try:
            Version(pin_version)
        except InvalidVersion:
            raise HTTPException(422, f"installed={item!r}: expected NAME==VERSION") from None
        pins[canonicalize_name(pin_name)] = pin_version
    try:
        Version(kernel_api)
    except InvalidVersion:
        raise HTTPException(422, f"kernel_api={kernel_api!r} is not a version") from None
    with state(request).sessions() as session:
        wanted = _project(session, name).name
        catalog = Catalog(kernel_api)
        for project in session.scalars(select(Project)):
            for release in sorted_releases(project):
                if release.yanked or not release.files:
                    continue
                manifest = release.manifest or {}
                requires = {canonicalize_name(n): r for n, r in manifest.get("requires", {}).items()}
                catalog.add(project.name, release.version, requires, manifest.get("kernel_api"))
        for pin, version in pins.items():
            if not any(str(c.version) == Version(version).public for c in catalog.versions.get(pin, [])):
                catalog.add(pin, version)  # installed from elsewhere (pip): a fact, with no known needs
            catalog.installed.add(pin)
        root = {wanted: "*", **{pin: f"=={version}" for pin, version in pins.items() if pin != wanted}}
        try:
            chosen = solve(catalog, root, root_name="the request")
        except ResolutionError as exc:
            raise HTTPException(409, str(exc)) from None
        plan = {n: str(c.version) for n, c in chosen.items() if n in catalog.versions and n != "apt-kernel-api"}
        return {"name": wanted, "version": plan[wanted], "plan": plan}


class RatingIn(BaseModel):
    stars: int = Field(ge=1, le=5)
    comment: str = Field(default="", max_length=5000)


@router.post("/plugins/{name}/ratings")
def rate(name: str, rating: RatingIn, request: Request) -> dict:
    with state(request).sessions() as session:
        user = authenticate(request, session)
        project = _project(session, name)
        row = session.get(Rating, (project.id, user.id))
        if row is None:
            session.add(Rating(project_id=project.id, user_id=user.id, stars=rating.stars, comment=rating.comment))
        else:
            row.stars, row.comment = rating.stars, rating.comment
        session.commit()
        session.refresh(project)
        return {"name": project.name, "rating": _summary(project, str(request.base_url))["rating"]}


class YankIn(BaseModel):
    version: str
    reason: str = Field(default="", max_length=1000)
    yanked: bool = True


@router.post("/plugins/{name}/yank")
def yank(name: str, body: YankIn, request: Request) -> dict:
    with state(request).sessions() as session:
        user = authenticate(request, session)
        project = _project(session, name)
        if not project.may_publish(user):
            raise HTTPException(403, f"{user.name} may not yank {project.name!r}")
        try:
            version = str(Version(body.version))
        except InvalidVersion:
            raise HTTPException(422, f"version {body.version!r} does not follow PEP 440") from None
        release = next((r for r in project.releases if r.version == version), None)
        if release is None:
            raise HTTPException(404, f"{project.name} has no version {version}")
        release.yanked, release.yanked_reason = body.yanked, body.reason if body.yanked else ""
        session.commit()
        state(request).changed()
        return {"name": project.name, "version": version, "yanked": release.yanked}


class MaintainerIn(BaseModel):
    user: str


@router.post("/plugins/{name}/maintainers")
def add_maintainer(name: str, body: MaintainerIn, request: Request) -> dict:
    with state(request).sessions() as session:
        user = authenticate(request, session)
        project = _project(session, name)
        if user.id != project.owner_id:
            raise HTTPException(403, f"only the owner of {project.name!r} ({project.owner.name}) adds maintainers")
        other = session.scalar(select(User).where(User.name == body.user))
        if other is None:
            raise HTTPException(404, f"no user named {body.user!r}")
        if other not in project.maintainers:
            project.maintainers.append(other)
        session.commit()
        return {"name": project.name, "maintainers": sorted(m.name for m in project.maintainers)}


@page.get("/", response_class=HTMLResponse)
def directory(request: Request, q: str = "", kind: str = "") -> HTMLResponse:
    st = state(request)
    with st.sessions() as session:
        plugins = _search(session, q, kind or None, None, None, str(request.base_url))
        kinds = sorted({k for p in _search(session, "", None, None, None, "") for k in p["kinds"]})
    html = st.templates.get_template("directory.html").render(plugins=plugins, q=q, kind=kind, kinds=kinds)
    return HTMLResponse(html)
