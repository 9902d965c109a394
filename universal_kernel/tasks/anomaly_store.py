"""Where fitted anomaly detectors live: one folder that kernels and the server share.

A detector is a pickle, and unpickling runs code: so a file this project did not write is
never unpickled. `manifest.json` holds, for each name, an HMAC-SHA256 of its file under a secret key
created once in the folder (`.key`, mode 0600); a file is verified against it, from the very bytes
that are then loaded, before `pickle.loads`. A file that does not match, or that the manifest does not
name, is refused. The manifest also keeps each detector's description, so listing loads no pickle.

Writes are atomic (a temp file, then `os.replace`) and serialised between processes by an exclusive
`flock` on `.lock`; readers take a shared one, so they never see a manifest and a file out of step.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import pickle
import re
import secrets
import tempfile
from pathlib import Path
from typing import Any

from ..errors import ModelNotFound, ReferenceRefused

MANIFEST = "manifest.json"
KEY = ".key"
LOCK = ".lock"
SUFFIX = ".pickle"

# letters, digits, '_', '-', '.'; never a leading dot (hidden files, '..'): no name can leave the folder
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}")


def check_name(name) -> str:
    """The detector's name, or ReferenceRefused (param "model") saying why it cannot name a file here."""
    if not isinstance(name, str) or not name:
        raise ReferenceRefused("a detector needs a name: a non-empty string")
    if not _NAME.fullmatch(name):
        raise ReferenceRefused(f"{name!r} is not a detector name: use letters, digits, '_', '-' and '.', "
                               f"at most 128, not starting with a dot (no slashes, backslashes or NUL)")
    return name


class DetectorStore:
    def __init__(self, folder: Path | str):
        self.folder = Path(folder).expanduser()

    # Locking and the key -------------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self, exclusive: bool):
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.folder / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def _key(self, create: bool) -> bytes | None:
        path = self.folder / KEY
        if not path.exists():
            if not create:
                return None
            # O_EXCL with mode 0600: created once, readable by this user only (writers hold the lock)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(secrets.token_bytes(32))
        return path.read_bytes()

    @staticmethod
    def _signature(key: bytes, name: str, payload: bytes) -> str:
        # the name is signed too: a file copied over another detector's is refused
        return hmac.new(key, name.encode() + b"\0" + payload, hashlib.sha256).hexdigest()

    # The manifest --------------------------------------------------------------------------------
    def _manifest(self) -> dict[str, dict]:
        try:
            entries = json.loads((self.folder / MANIFEST).read_text("utf-8"))
        except FileNotFoundError:
            return {}
        except (ValueError, UnicodeDecodeError):
            raise ReferenceRefused(f"{self.folder / MANIFEST} is not a manifest written by universal-kernel; "
                                   f"no detector in {self.folder} is loaded") from None
        return entries if isinstance(entries, dict) else {}

    def _write_atomic(self, filename: str, payload: bytes) -> None:
        fd, temp = tempfile.mkstemp(dir=self.folder, prefix=".tmp-", suffix="-" + filename)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(payload)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temp, self.folder / filename)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
            raise

    # What the task uses ------------------------------------------------------------------------
    def save(self, name: str, fitted: Any, description: dict) -> str:
        """Write the detector and sign it; returns its signature (`signature(name)` reads it back)."""
        # the C pickler, protocol 5: joblib's pure-Python path took 0.3 s for 200 trees
        payload = pickle.dumps(fitted, protocol=5)
        with self._locked(exclusive=True):
            key = self._key(create=True)
            self._write_atomic(check_name(name) + SUFFIX, payload)
            manifest = self._manifest()
            signature = self._signature(key, name, payload)
            manifest[name] = {"file": name + SUFFIX, "hmac": signature, "detector": description}
            self._write_atomic(MANIFEST, json.dumps(manifest, indent=1, sort_keys=True).encode("utf-8"))
        return signature

    def signature(self, name: str) -> str | None:
        """The signature the manifest holds for `name` now (None: no such detector); loads no pickle."""
        with self._locked(exclusive=False):
            entry = self._manifest().get(check_name(name))
        return entry.get("hmac") if isinstance(entry, dict) else None

    def load(self, name: str) -> Any:
        """The fitted detector saved under `name`, after its file's signature is verified; ModelNotFound when
        there is none, ReferenceRefused (never unpickled) when the file is not one this project wrote."""
        check_name(name)
        path = self.folder / (name + SUFFIX)
        with self._locked(exclusive=False):
            entry = self._manifest().get(name)
            key = self._key(create=False)
            try:
                payload = path.read_bytes()
            except FileNotFoundError:
                payload = None
        if payload is None:
            raise ModelNotFound(f"no anomaly detector named {name!r} in {self.folder}; fit one first "
                                f"(anomaly_fit, POST /anomaly/fit, %anomaly --fit NAME)")
        expected = entry.get("hmac") if isinstance(entry, dict) else None
        if key is None or not isinstance(expected, str) or not hmac.compare_digest(
                expected, self._signature(key, name, payload)):
            raise ReferenceRefused(f"{path} was not written by universal-kernel (its signature does not match "
                                   f"the manifest): refused, not loaded")
        return pickle.loads(payload)  # exactly the bytes that were verified

    def describe_all(self) -> dict[str, dict]:
        """{name: description} of every detector the manifest signs for; no pickle is loaded."""
        if not self.folder.exists():
            return {}
        with self._locked(exclusive=False):
            manifest = self._manifest()
        return {name: entry["detector"] for name, entry in sorted(manifest.items())
                if isinstance(entry, dict) and isinstance(entry.get("detector"), dict)}

    def delete(self, name: str) -> bool:
        check_name(name)
        if not self.folder.exists():
            return False
        with self._locked(exclusive=True):
            manifest = self._manifest()
            known = manifest.pop(name, None) is not None
            if known:
                self._write_atomic(MANIFEST, json.dumps(manifest, indent=1, sort_keys=True).encode("utf-8"))
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.folder / (name + SUFFIX))
                known = True
        return known
