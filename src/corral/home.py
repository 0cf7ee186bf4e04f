"""$CORRAL_HOME: the state directory of one platform, and what lives in it.

$CORRAL_HOME/
  store.db            the Store (SQLite, WAL)
  store               the store URL this home runs on (sqlite | etcd://…), once chosen
  lock                flock held by the one control plane serving this home
  server.pid          the control plane's pid
  api                 the API base URL (http://127.0.0.1:PORT, no path), written when ready;
                      a cluster lists every node's, one a line, the leader's first
  cluster             present when this home's control plane is a cluster (`server --cluster`)
  nodes/<id>/         a cluster node's own files: its Raft log and store, server.log, api
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
from corral.runtime.driver import write_atomic

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
                # Written aside, then linked into place: the nodes of a cluster sharing this
                # home start at once, and none may read a token file that is still empty.
                tmp = self.path / f".{name}.{os.getpid()}.tmp"
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "w") as f:
                    f.write(ids.token() + "\n")
                try:
                    os.link(tmp, path)
                except FileExistsError:
                    pass  # another process made it first: use that one
                finally:
                    tmp.unlink()
            tokens[role] = path.read_text().strip()
        return tokens

    def token(self, role: str = "admin") -> str | None:
        path = self.path / TOKEN_FILES[role]
        try:
            return path.read_text().strip()
        except FileNotFoundError:
            return None

    def api_url(self) -> str | None:
        urls = self.api_urls()
        return urls[0] if urls else None

    def api_urls(self) -> list[str]:
        """Every API URL in the ``api`` file (a cluster lists each node's; leader first)."""
        try:
            text = self.api_file.read_text()
        except FileNotFoundError:
            return []
        return [line.strip() for line in text.splitlines() if line.strip()]

    @property
    def cluster_file(self) -> Path:
        return self.path / "cluster"

    def node_dir(self, node_id: int) -> Path:
        """A cluster node's own directory (its Raft data, log, pid and API address)."""
        return self.path / "nodes" / str(node_id)

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

    def lock_shared(self) -> int:
        """Like ``lock`` for the nodes of a cluster sharing this home (one machine): each holds
        it shared, so no single control plane can start here while any node runs."""
        self.create()
        fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            pid = self.server_pid()
            raise AlreadyRunning(
                f"a single control plane (pid {pid or '?'}) is serving {self.path}",
                "stop it (`corral down`) before starting cluster nodes on this home, or set "
                "CORRAL_HOME to another directory",
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
        # one helper, whose temp name is per process: several nodes share a home
        write_atomic(self.path / name, text.encode(), mode)
