"""fal storage on the emulator: token, single upload, initiate/PUT, multipart, GET back."""

from __future__ import annotations

from datetime import UTC, datetime

from conftest import MakeClient
from emu_helpers import stats


async def test_cdn_token_is_tz_aware_and_points_at_this_host(make_client: MakeClient) -> None:
    client, _ = await make_client()
    r = await client.post("/storage/auth/token", params={"storage_type": "fal-cdn-v3"}, json={})
    body = r.json()
    assert set(body) == {"token", "token_type", "base_url", "expires_at"}
    assert body["base_url"] == "http://emulator"
    assert not body["expires_at"].endswith("Z")
    assert datetime.fromisoformat(body["expires_at"]) > datetime.now(UTC)


async def test_single_upload_round_trip(make_client: MakeClient) -> None:
    client, _ = await make_client()
    r = await client.post(
        "/files/upload",
        content=b"\x00\x01 raw bytes",
        headers={
            "Authorization": "Bearer cdn-token",
            "Content-Type": "image/png",
            "X-Fal-File-Name": "ref.png",
        },
    )
    url = r.json()["access_url"]
    assert url.startswith("http://emulator/files/") and url.endswith("/ref.png")
    got = await client.get(url, headers={"Authorization": ""})  # CDN files are public
    assert (got.content, got.headers["content-type"]) == (b"\x00\x01 raw bytes", "image/png")
    assert (await stats(client))["uploads"] == 1


async def test_initiate_then_put(make_client: MakeClient) -> None:
    client, _ = await make_client()
    r = await client.post(
        "/storage/upload/initiate",
        params={"storage_type": "gcs"},
        json={"file_name": "mask.webp", "content_type": "image/webp"},
    )
    urls = r.json()
    assert (await client.get(urls["file_url"])).status_code == 404  # not uploaded yet
    put = await client.put(
        urls["upload_url"], content=b"webp!", headers={"Content-Type": "image/webp"}
    )
    assert put.status_code == 200
    got = await client.get(urls["file_url"])
    assert got.content == b"webp!"
    again = await client.put(urls["upload_url"], content=b"twice")
    assert again.status_code == 404  # a signed URL is used once


async def test_multipart_sorts_parts_and_returns_etags(make_client: MakeClient) -> None:
    client, _ = await make_client()
    created = await client.post(
        "/files/upload/multipart",
        headers={"Content-Type": "application/zip", "X-Fal-File-Name": "big.zip"},
    )
    access, uid = created.json()["access_url"], created.json()["uploadId"]
    etags = {}
    for n, chunk in [(2, b"BBB"), (1, b"AAA"), (3, b"C")]:
        r = await client.put(f"{access}/multipart/{uid}/{n}", content=chunk)
        etags[n] = r.headers["ETag"]
        assert etags[n].startswith('"')
    parts = [{"partNumber": n, "etag": etags[n]} for n in (3, 1, 2)]  # completion order
    done = await client.post(f"{access}/multipart/{uid}/complete", json={"parts": parts})
    assert done.json()["access_url"] == access
    assert (await client.get(access)).content == b"AAABBBC"


async def test_multipart_complete_with_a_missing_part_is_refused(make_client: MakeClient) -> None:
    client, _ = await make_client()
    created = (await client.post("/files/upload/multipart")).json()
    access, uid = created["access_url"], created["uploadId"]
    await client.put(f"{access}/multipart/{uid}/1", content=b"x")
    parts = [{"partNumber": 1, "etag": "a"}, {"partNumber": 2, "etag": "b"}]
    r = await client.post(f"{access}/multipart/{uid}/complete", json={"parts": parts})
    assert r.status_code == 400
    assert "[2]" in r.json()["detail"]
    bad = await client.post(f"{access}/multipart/{uid}/complete", json={"nope": 1})
    assert bad.status_code == 422


async def test_storage_needs_auth(make_client: MakeClient) -> None:
    client, _ = await make_client()
    bare = {"Authorization": ""}
    assert (await client.post("/storage/auth/token", json={}, headers=bare)).status_code == 401
    assert (await client.post("/files/upload", content=b"x", headers=bare)).status_code == 401
    assert (await stats(client))["unauthorized"] == 2
