"""$CORRAL_HOME: the state directory of one platform, and what lives in it.

$CORRAL_HOME/
  store.db            the Store (SQLite, WAL)
  lock                flock held by the one control plane serving this home
  server.pid          the control plane's pid
  api                 the API base URL (http://127.0.0.1:PORT, no path), written when ready
  server.log          the control plane's own log (never secrets)
  token read-token ingest-token     mode 0600, generated on first start
  instances/<id>/     one directory per instance: launch, shim and exit records, logs
  data/<pet-id>/      DATA_DIR of each pet, surviving restarts
"""

from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass
from pathlib import Path

from corral import ids
from corral.errors import AlreadyRunning

TOKEN_FILES = {"admin": "token", "read": "read-token", "ingest": "ingest-token"}


def default_home() -> Path:
    env = os.environ.get("CORRAL_HOME")
    if env:
        return Path(env).expanduser().resolve()
    return Path.home() / ".corral"


@dataclass(frozen=True)
class Home:
    path: Path

    @classmethod
    def resolve(cls, path: str | Path | None = None) -> Home:
        return cls(Path(path).expanduser().resolve() if path else default_home())

    @property
    def store_path(self) -> Path:
        return self.path / "store.db"

    @property
    def api_file(self) -> Path:
        return self.path / "api"

    @property
    def pid_file(self) -> Path:
        return self.path / "server.pid"

    @property
    def lock_file(self) -> Path:
        return self.path / "lock"

    @property
    def log_file(self) -> Path:
        return self.path / "server.log"

    @property
    def instances_dir(self) -> Path:
        return self.path / "instances"

    def data_dir(self, instance_id: str) -> Path:
        return self.path / "data" / instance_id

    def create(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        os.chmod(self.path, 0o700)
        self.instances_dir.mkdir(exist_ok=True)
        (self.path / "data").mkdir(exist_ok=True)

    def ensure_tokens(self) -> dict[str, str]:
        """Generate the three tokens on first start (mode 0600); return role → token."""
        tokens: dict[str, str] = {}
        for role, name in TOKEN_FILES.items():
            path = self.path / name
            if not path.exists():
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w") as f:
                    f.write(ids.token() + "\n")
            tokens[role] = path.read_text().strip()
        return tokens

    def token(self, role: str = "admin") -> str | None:
        path = self.path / TOKEN_FILES[role]
        try:
            return path.read_text().strip()
        except FileNotFoundError:
            return None

    def api_url(self) -> str | None:
        try:
            return self.api_file.read_text().strip() or None
        except FileNotFoundError:
            return None

    def server_pid(self) -> int | None:
        try:
            return int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def lock(self) -> int:
        """Take the exclusive lock on this home; refuse if another control plane holds it.
        Returns the fd, which must stay open for the life of the server."""
        self.create()
        fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            pid = self.server_pid()
            raise AlreadyRunning(
                f"another control plane (pid {pid or '?'}) is serving {self.path}",
                "use that one (`corral status`), or stop it with `corral down`; set "
                "CORRAL_HOME to run a separate platform",
            ) from None
        return fd

    def is_locked(self) -> bool:
        """True while some control plane holds this home's lock."""
        if not self.lock_file.exists():
            return False
        fd = os.open(self.lock_file, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False

    def write_atomic(self, name: str, text: str, mode: int = 0o644) -> None:
        tmp = self.path / f".{name}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, self.path / name)
