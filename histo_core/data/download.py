"""Download the public PatchCamelyon record (Zenodo 2546921): resumable, verified, gunzipped.

Each ``.h5.gz`` is fetched with HTTP Range requests into ``<name>.gz.part`` (an
interrupted download continues where it stopped), decompressed as a stream, checked
against the MD5 of the published ``.h5`` and only then renamed into place; a file
already present with the right checksum is skipped. Nothing half-written ever carries a
final name.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import shutil
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

log = logging.getLogger(__name__)

PCAM_URL = "https://zenodo.org/records/2546921/files/{name}.gz?download=1"
# MD5 of the decompressed files, as published with the record.
PCAM_FILES = {
    "camelyonpatch_level_2_split_train_x.h5": "01844da899645b4d6f84946d417ba453",
    "camelyonpatch_level_2_split_train_y.h5": "0781386bf6c2fb62d58ff18891466aca",
    "camelyonpatch_level_2_split_valid_x.h5": "81cf9680f1724c40673f10dc88e909b1",
    "camelyonpatch_level_2_split_valid_y.h5": "94d8aacc249253159ce2a2e78a86e658",
    "camelyonpatch_level_2_split_test_x.h5": "2614b2e6717d6356be141d9d6dbfcb7e",
    "camelyonpatch_level_2_split_test_y.h5": "11ed647efe9fe457a4eb45df1dba19ba",
}
CHUNK = 1 << 20
Progress = Callable[[str, int, int | None], None]  # (file name, bytes so far, total or None)


class DownloadError(RuntimeError):
    """A file could not be fetched or failed its checksum; the message says which and why."""


@dataclass(frozen=True)
class Resource:
    name: str  # final (decompressed) file name
    url: str  # where its .gz lives
    md5: str


def pcam_resources(splits: Iterable[str] = ("train", "valid", "test"), url: str = PCAM_URL) -> list[Resource]:
    wanted = [n for n in PCAM_FILES if any(f"_split_{s}_" in n for s in splits)]
    return [Resource(n, url.format(name=n), PCAM_FILES[n]) for n in wanted]


def md5_file(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _fetch(url: str, target: Path, name: str, progress: Progress | None, timeout: float) -> None:
    """Download ``url`` into ``target``, resuming from its current size."""
    have = target.stat().st_size if target.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            if have and response.status != 206:  # the server ignored Range: start over
                have = 0
            total = response.headers.get("Content-Length")
            total = int(total) + have if total is not None else None
            with open(target, "ab" if have else "wb") as out:
                done = have
                while block := response.read(CHUNK):
                    out.write(block)
                    done += len(block)
                    if progress:
                        progress(name, done, total)
            if total is not None and done < total:  # the connection closed early without an error
                raise OSError(f"connection closed after {done} of {total} bytes")
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # asked for bytes past the end: the .gz is complete
            return
        raise DownloadError(f"{name}: HTTP {exc.code} {exc.reason} from {url}") from exc
    except (urllib.error.URLError, OSError) as exc:
        kept = target.stat().st_size if target.exists() else 0
        if not kept:
            host = urllib.parse.urlsplit(url).hostname
            raise DownloadError(f"{name}: could not download from {host} ({getattr(exc, 'reason', exc)}); "
                                "check the network, or pass --url with a mirror") from exc
        raise DownloadError(f"{name}: download interrupted after {kept} bytes ({exc}); run the command "
                            "again to resume from there") from exc


def download(resources: list[Resource], dest: Path | str, progress: Progress | None = None,
             timeout: float = 60.0) -> list[Path]:
    """Fetch, decompress and verify every resource into ``dest``; returns the final paths."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    done = []
    for res in resources:
        final = dest / res.name
        if final.exists() and md5_file(final) == res.md5:
            log.info("%s: present and verified", res.name)
            done.append(final)
            continue
        gz_part, h5_part = dest / f"{res.name}.gz.part", dest / f"{res.name}.part"
        _fetch(res.url, gz_part, res.name, progress, timeout)
        try:
            with gzip.open(gz_part, "rb") as src, open(h5_part, "wb") as out:
                shutil.copyfileobj(src, out, CHUNK)
        except (OSError, EOFError) as exc:
            gz_part.unlink(missing_ok=True)
            h5_part.unlink(missing_ok=True)
            raise DownloadError(f"{res.name}: the downloaded archive is corrupt ({exc}); it was removed, "
                                "run the command again") from exc
        actual = md5_file(h5_part)
        if actual != res.md5:
            gz_part.unlink()
            h5_part.unlink()
            raise DownloadError(f"{res.name}: MD5 {actual} does not match the published {res.md5}; "
                                "the partial files were removed, run the command again")
        os.replace(h5_part, final)
        gz_part.unlink()
        done.append(final)
    return done
