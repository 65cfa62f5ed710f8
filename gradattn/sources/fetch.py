"""Getting a source's files into data/raw/<dataset>/: download, verify, or copy from disk.

Rules every source module follows through these helpers:
- A file reaches its final name only after it is complete and, where the source publishes a
  checksum, verified; it is written under a temporary name first. So an interrupted download
  never counts as done, and a present file with the right checksum is not fetched again.
- Each network call has a short timeout (name lookup included), so with no network a download
  fails within seconds with one line naming the URL, the `data.sources.<name>` key and the
  file names to put there by hand.
"""

from __future__ import annotations

import http.client
import os
import shutil
import socket
import threading
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import urlparse

from tqdm import tqdm

from gradattn.core.errors import GradattnError
from gradattn.core.io import atomic_path, file_digest, one_line
from gradattn.core.paths import user_path

# Seconds allowed for the name lookup, the connection, and each read. Short on purpose: with no
# network the stage must fail fast rather than hang (the whole download fails in < 60 s).
TIMEOUT = 15.0
BLOCK = 1 << 20


def md5sum(path: str | os.PathLike) -> str:
    return file_digest(path, "md5")


def verify(path: Path, md5: str | None, *, dataset: str, accept=None, fix: str) -> None:
    """Refuse `path` unless its md5 is `md5` (or `accept(path)` passes: an equal file packed
    differently). Run both when a file is fetched and again right before it is parsed."""
    if md5 is None or md5sum(path) == md5 or (accept is not None and accept(path)):
        return
    raise GradattnError(
        f"{dataset}: {path} does not match the published checksum (md5 {md5}): "
        f"a damaged or different file; {fix}"
    )


def verify_raw(raw_dir: Path, md5s: dict[str, str], *, dataset: str, accept=None) -> None:
    """Check the downloaded files again before preprocess parses them."""
    for name, md5 in md5s.items():
        path = raw_dir / name
        if not path.is_file():
            raise GradattnError(
                f"{dataset}: {path} is missing: run `dvc repro download@{dataset}` first"
            )
        verify(path, md5, dataset=dataset, accept=(accept or {}).get(name),
               fix=f"it changed since download: run `dvc repro -f download@{dataset}`")


def manual_hint(dataset: str, files: str) -> str:
    """What a user without network does instead (the second half of every download error)."""
    return (
        f"without network, fetch {files} by hand into a folder and set "
        f"data.sources.{dataset}: <that folder> in machine.yaml (or run with "
        f"-S machine.yaml:data.sources.{dataset}=<that folder>)"
    )


def _lookup(url: str, timeout: float) -> None:
    """Resolve the URL's host within `timeout` (socket timeouts do not cover name lookup)."""
    parsed = urlparse(url)
    if parsed.scheme in urllib.request.getproxies():
        return  # the proxy resolves the name
    result: dict = {}

    def resolve() -> None:
        try:
            socket.getaddrinfo(parsed.hostname, parsed.port or 443)
        except OSError as err:
            result["error"] = err

    thread = threading.Thread(target=resolve, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise OSError(f"looking up {parsed.hostname} took over {timeout:.0f} s")
    if "error" in result:
        raise result["error"]


def fetch(url: str, dest: Path, *, dataset: str, md5: str | None = None, hint: str = "") -> Path:
    """Download `url` to `dest` unless `dest` is already there (and matches `md5`)."""
    dest = Path(dest)
    if dest.exists():
        if md5 is None or md5sum(dest) == md5:
            print(f"{dataset}: {dest.name} already downloaded{' and verified' if md5 else ''}")
            return dest
        dest.unlink()  # wrong checksum: fetch it again
    created = not dest.parent.exists()
    try:
        with atomic_path(dest) as tmp:
            _stream(url, tmp, desc=dest.name, dataset=dataset, hint=hint)
            if md5 is not None and (got := md5sum(tmp)) != md5:
                raise GradattnError(
                    f"{dataset}: {url} arrived corrupted (md5 {got}, expected {md5}); "
                    "run the download again"
                )
    except BaseException:
        if created:
            _remove_if_empty(dest.parent)
        raise
    return dest


def _stream(url: str, tmp: Path, *, desc: str, dataset: str, hint: str) -> None:
    try:
        _lookup(url, TIMEOUT)
        request = urllib.request.Request(url, headers={"User-Agent": "gradattn"})
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with (
                open(tmp, "wb") as out,
                tqdm(
                    total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc
                ) as bar,
            ):
                while block := response.read(BLOCK):
                    out.write(block)
                    bar.update(len(block))
        if total is not None and tmp.stat().st_size != total:
            raise OSError(f"connection closed after {tmp.stat().st_size} of {total} bytes")
    except (OSError, http.client.HTTPException, ValueError) as err:
        plain = isinstance(err, urllib.error.URLError) and not isinstance(
            err, urllib.error.HTTPError
        )
        reason = one_line(err.reason if plain else err)
        raise GradattnError(f"{dataset}: cannot download {url} ({reason}); {hint}") from None


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()  # only if we created it and it is still empty
    except OSError:
        pass


def find_file(source: Path, name: str) -> Path | None:
    """`name` directly in `source`, else anywhere below it (the first in sorted order)."""
    direct = source / name
    if direct.is_file():
        return direct
    found = sorted(p for p in source.rglob(name) if p.is_file())
    return found[0] if found else None


def check_source(dataset: str, source: Path) -> Path:
    source = user_path(source)
    if not source.is_dir():
        raise GradattnError(
            f"data.sources.{dataset} = {str(source)!r} is not a folder: give the "
            "folder that holds the source's files"
        )
    return source


def missing_in_source(
    dataset: str, source: Path, missing: Iterable[str], expected: str
) -> GradattnError:
    return GradattnError(
        f"data.sources.{dataset} = {str(source)!r} lacks {', '.join(missing)} "
        f"(expected: {expected})"
    )


def install(src: Path, dest: Path, *, dataset: str, md5: str | None = None, accept=None) -> Path:
    """Copy a file from a local source into raw/, verified, atomically.

    `accept(path) -> bool` is a second test, passed when the md5 is not, for a source that
    may hold a re-packed but equal file (e.g. a re-compressed .gz). A present copy of the same
    size and mtime is kept (the copy preserves mtime).
    """
    src, dest = Path(src), Path(dest)
    verify(src, md5, dataset=dataset, accept=accept, fix="replace it with the original")
    st = src.stat()
    if (
        dest.exists()
        and dest.stat().st_size == st.st_size
        and dest.stat().st_mtime_ns == st.st_mtime_ns
    ):
        return dest
    with atomic_path(dest) as tmp:
        with (
            open(src, "rb") as fin,
            open(tmp, "wb") as fout,
            tqdm(
                total=st.st_size,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=f"copy {src.name}",
                leave=False,
            ) as bar,
        ):
            while block := fin.read(BLOCK):
                fout.write(block)
                bar.update(len(block))
        shutil.copystat(src, tmp)
    return dest


def pack_zip(
    members: Iterable[tuple[Path, str]], dest: Path, *, total: int | None = None, desc: str = "pack"
) -> Path:
    """Write (file, name in archive) pairs into an uncompressed zip, atomically.

    Folder sources with many small files (image folders) become one raw file: DVC then tracks
    one object instead of tens of thousands.
    """
    dest = Path(dest)
    with atomic_path(dest) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as archive:
            for path, arcname in tqdm(members, total=total, desc=desc, unit="file", leave=False):
                archive.write(path, arcname)
    return dest


def get_files(
    dataset: str,
    raw_dir: Path,
    source: Path | None,
    files: list[tuple[str, str, str | None]],
    *,
    accept: dict | None = None,
) -> None:
    """Put each (name, url, md5) into raw_dir: copied from `source` (a folder holding the files,
    at any depth) when given, else downloaded. Checksums are verified either way."""
    names = ", ".join(name for name, _, _ in files)
    if source is not None:
        source = check_source(dataset, source)
        found = {name: find_file(source, name) for name, _, _ in files}
        missing = [name for name, path in found.items() if path is None]
        if missing:
            raise missing_in_source(dataset, source, missing, names)
        for name, _, md5 in files:
            install(
                found[name],
                raw_dir / name,
                dataset=dataset,
                md5=md5,
                accept=(accept or {}).get(name),
            )
        return
    for name, url, md5 in files:
        fetch(url, raw_dir / name, dataset=dataset, md5=md5, hint=manual_hint(dataset, names))
