"""Fetch zoo files: sha256-verified, cached, downloaded atomically (https:// and file:// URLs).

Downloads go to ``$CONVERTSNN_CACHE/zoo/SHA16/FILENAME`` (default ``~/.cache/convertsnn``),
keyed by the first 16 hex digits of the expected sha256 so a new version never reuses an old
file. A download streams into a temporary file next to its destination, is checked against the
announced length and the sha256, and only then renamed into place: an interrupted, truncated or
tampered download leaves nothing behind. Files already on disk are verified on every use.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import unquote, urlparse

from tqdm.auto import tqdm

from convertsnn.errors import ConvertSNNError
from convertsnn.snn.serialize import atomic_write

CACHE_ENV = "CONVERTSNN_CACHE"
DEFAULT_CACHE = "~/.cache/convertsnn"
CHUNK = 1 << 20


def cache_dir() -> Path:
    """The download cache: ``$CONVERTSNN_CACHE`` or ``~/.cache/convertsnn``."""
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE).expanduser()


def cache_path(url: str, sha256: str) -> Path:
    """Where the file at ``url`` with digest ``sha256`` is kept in the cache."""
    name = Path(unquote(urlparse(url).path)).name or "model.safetensors"
    return cache_dir() / "zoo" / sha256[:16] / name


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 digest of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _mismatch(what: str, actual: str, expected: str, hint: str) -> ConvertSNNError:
    return ConvertSNNError(
        f"{what} fails the sha256 check (got {actual[:16]}..., the zoo index says "
        f"{expected[:16]}...): the file is damaged or was tampered with; {hint}"
    )


def verify(path: Path, sha256: str, hint: str) -> Path:
    """Return ``path`` if its sha256 is ``sha256``; otherwise a one-line error ending in ``hint``."""
    actual = sha256_file(path)
    if actual != sha256:
        raise _mismatch(str(path), actual, sha256, hint)
    return path


def download(url: str, dest: Path, sha256: str, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest`` atomically, refusing short or mismatching content."""

    def write(tmp: str) -> None:
        digest, received, announced = hashlib.sha256(), 0, None
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as out:
                length = response.headers.get("Content-Length")
                announced = int(length) if length and length.isdigit() else None
                with tqdm(total=announced, unit="B", unit_scale=True, desc=dest.name,
                          disable=None, leave=False) as bar:  # fmt: skip
                    while chunk := response.read(CHUNK):
                        out.write(chunk)
                        digest.update(chunk)
                        received += len(chunk)
                        bar.update(len(chunk))
                out.flush()
                os.fsync(out.fileno())
        except urllib.error.HTTPError as err:
            raise ConvertSNNError(
                f"cannot download {url}: the server answered HTTP {err.code} {err.reason}; "
                "check the url in the zoo index"
            ) from None
        except (urllib.error.URLError, http.client.HTTPException, OSError) as err:
            reason = getattr(err, "reason", None) or str(err) or type(err).__name__
            raise ConvertSNNError(
                f"cannot download {url} ({reason}); check the connection and retry, or put the "
                f"file at {dest} yourself"
            ) from None
        if announced is not None and received != announced:
            raise ConvertSNNError(
                f"download of {url} was cut short ({received} of {announced} bytes); nothing "
                "was kept, retry"
            )
        actual = digest.hexdigest()
        if actual != sha256:
            raise _mismatch(f"download of {url}", actual, sha256, "nothing was kept")

    atomic_write(dest, write)
    return dest


def fetch(url: str, sha256: str, force: bool = False, hint: str = "") -> Path:
    """The verified local copy of ``url``: the cached file, else a fresh download."""
    dest = cache_path(url, sha256)
    if dest.is_file() and not force:
        return verify(dest, sha256, hint or f"delete {dest} to download it again")
    return download(url, dest, sha256)
