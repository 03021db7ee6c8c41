"""fal storage on the emulator: the CDN token, single uploads, the initiate/PUT fallback,
multipart uploads, and GET of every stored file (docs/fal.md, Storage and uploads).

Files live in memory for the emulator's lifetime. REST and CDN paths share one host, so a
client pointed at the emulator with one base URL finds all of them.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from batchgen.emulator.http import authorized, base_url, emulator_of, unauthorized

TOKEN_TTL = timedelta(hours=1)


@dataclass(slots=True)
class StoredFile:
    data: bytes
    content_type: str
    name: str


@dataclass(slots=True)
class Multipart:
    content_type: str
    name: str
    parts: dict[int, bytes] = field(default_factory=dict)


class FileStore:
    """Uploaded files by id, plus open multipart uploads."""

    def __init__(self) -> None:
        self.files: dict[str, StoredFile] = {}
        self.multipart: dict[str, Multipart] = {}
        self.reserved: dict[str, StoredFile] = {}  # initiated, waiting for their PUT

    def put(self, data: bytes, content_type: str, name: str) -> str:
        fid = uuid.uuid4().hex
        self.files[fid] = StoredFile(data, content_type, name)
        return fid


def _safe_name(name: str | None, default: str = "upload.bin") -> str:
    name = (name or "").replace("/", "_").replace("\\", "_").strip() or default
    return name[:200]


def _file_url(request: Request, fid: str, name: str) -> str:
    return f"{base_url(request)}/files/{fid}/{quote(name)}"


def _store(request: Request) -> FileStore:
    store: FileStore = request.app.state.files
    return store


async def token(request: Request) -> Response:
    if not authorized(request):
        return unauthorized(request)
    expires = datetime.now(UTC) + TOKEN_TTL
    # isoformat() of an aware datetime ends in +00:00: fal-client parses it with fromisoformat
    # and compares it with an aware "now", so it must be tz-aware and must not end in "Z".
    return JSONResponse(
        {
            "token": uuid.uuid4().hex,
            "token_type": "Bearer",
            "base_url": base_url(request),
            "expires_at": expires.isoformat(),
        }
    )


def _upload_fault(request: Request) -> Response | None:
    model = emulator_of(request)
    if model.dice.roll("upload500"):
        model.counters["uploads_failed"] += 1
        return JSONResponse({"detail": "Internal server error"}, status_code=500)
    return None


async def upload(request: Request) -> Response:
    if not authorized(request):
        return unauthorized(request)
    fault = _upload_fault(request)
    if fault is not None:
        return fault
    data = await request.body()
    name = _safe_name(request.headers.get("x-fal-file-name"))
    ctype = request.headers.get("content-type", "application/octet-stream")
    fid = _store(request).put(data, ctype, name)
    emulator_of(request).counters["uploads"] += 1
    return JSONResponse({"access_url": _file_url(request, fid, name)})


async def initiate(request: Request) -> Response:
    if not authorized(request):
        return unauthorized(request)
    try:
        body: Any = await request.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        return JSONResponse({"detail": "body must be a JSON object"}, status_code=422)
    name = _safe_name(body.get("file_name"))
    ctype = str(body.get("content_type") or "application/octet-stream")
    fid = uuid.uuid4().hex
    _store(request).reserved[fid] = StoredFile(b"", ctype, name)
    return JSONResponse(
        {
            "upload_url": f"{base_url(request)}/storage/put/{fid}",
            "file_url": _file_url(request, fid, name),
        }
    )


async def signed_put(request: Request) -> Response:
    # A signed URL authorises by itself (fal-client happens to send its Key header too).
    fault = _upload_fault(request)
    if fault is not None:
        return fault
    store = _store(request)
    fid = request.path_params["fid"]
    held = store.reserved.pop(fid, None)
    if held is None:
        return JSONResponse({"detail": "unknown or used upload URL"}, status_code=404)
    ctype = request.headers.get("content-type", held.content_type)
    store.files[fid] = StoredFile(await request.body(), ctype, held.name)
    emulator_of(request).counters["uploads"] += 1
    return Response(status_code=200)


async def multipart_create(request: Request) -> Response:
    if not authorized(request):
        return unauthorized(request)
    name = _safe_name(request.headers.get("x-fal-file-name"))
    ctype = request.headers.get("content-type", "application/octet-stream")
    fid, uid = uuid.uuid4().hex, uuid.uuid4().hex
    _store(request).multipart[uid] = Multipart(ctype, name)
    return JSONResponse({"access_url": _file_url(request, fid, name), "uploadId": uid})


async def multipart_part(request: Request) -> Response:
    if not authorized(request):
        return unauthorized(request)
    mp = _store(request).multipart.get(request.path_params["uid"])
    if mp is None:
        return JSONResponse({"detail": "unknown upload id"}, status_code=404)
    data = await request.body()
    mp.parts[int(request.path_params["part"])] = data
    return Response(status_code=200, headers={"ETag": f'"{hashlib.md5(data).hexdigest()}"'})


async def multipart_complete(request: Request) -> Response:
    if not authorized(request):
        return unauthorized(request)
    store = _store(request)
    uid = request.path_params["uid"]
    mp = store.multipart.get(uid)
    if mp is None:
        return JSONResponse({"detail": "unknown upload id"}, status_code=404)
    try:
        listed = (await request.json())["parts"]
        numbers = sorted(int(p["partNumber"]) for p in listed)  # the client lists them unsorted
    except (ValueError, KeyError, TypeError):
        return JSONResponse({"detail": "body must be {parts: [{partNumber, etag}]}"}, 422)
    missing = [n for n in numbers if n not in mp.parts]
    if missing:
        return JSONResponse({"detail": f"parts never uploaded: {missing}"}, status_code=400)
    fid, name = request.path_params["fid"], request.path_params["name"]
    store.files[fid] = StoredFile(b"".join(mp.parts[n] for n in numbers), mp.content_type, name)
    del store.multipart[uid]
    emulator_of(request).counters["uploads"] += 1
    return JSONResponse({"access_url": _file_url(request, fid, name)})


async def get_file(request: Request) -> Response:
    emulator_of(request).counters["file_requests"] += 1
    f = _store(request).files.get(request.path_params["fid"])
    if f is None:
        return JSONResponse({"detail": "file not found"}, status_code=404)
    # Set verbatim: media_type= would add "; charset=utf-8" to text types.
    return Response(f.data, headers={"content-type": f.content_type})


def storage_routes() -> list[Route]:
    return [
        Route("/storage/auth/token", token, methods=["POST"]),
        Route("/storage/upload/initiate", initiate, methods=["POST"]),
        Route("/storage/put/{fid}", signed_put, methods=["PUT"]),
        Route("/files/upload", upload, methods=["POST"]),
        Route("/files/upload/multipart", multipart_create, methods=["POST"]),
        Route("/files/{fid}/{name}/multipart/{uid}/{part:int}", multipart_part, methods=["PUT"]),
        Route("/files/{fid}/{name}/multipart/{uid}/complete", multipart_complete, methods=["POST"]),
        Route("/files/{fid}/{name}", get_file, methods=["GET", "HEAD"]),
    ]
