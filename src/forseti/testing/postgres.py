"""A throwaway PostgreSQL server for tests and benchmarks (no Docker, works as root).

PostgreSQL refuses to run as root, so when the current user is root the cluster belongs to the
``postgres`` system user and ``initdb``/``pg_ctl`` run through ``runuser -u postgres --``; any
other user runs them directly. The cluster lives in a private temporary directory, listens on
loopback only, runs with ``fsync=off`` and disappears on :meth:`TemporaryPostgres.stop` (also
registered with :mod:`atexit`, so a crashed test session does not leave a server behind)::

    with TemporaryPostgres() as pg:
        reg = forseti.open(pg.new_schema_url("t_demo"))
"""

from __future__ import annotations

import atexit
import logging
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Self

from ..errors import ConfigError

__all__ = ["TemporaryPostgres", "postgres_binaries"]

logger = logging.getLogger(__name__)

_REQUIRED = ("initdb", "pg_ctl")


def _has_binaries(path: Path) -> bool:
    return all(os.access(path / name, os.X_OK) for name in _REQUIRED)


def _version_key(path: Path) -> tuple[int, ...]:
    # /usr/lib/postgresql/<version>/bin
    return tuple(int(p) for p in re.findall(r"\d+", path.parent.name)) or (0,)


def postgres_binaries() -> Path | None:
    """The directory holding ``initdb`` and ``pg_ctl``, or ``None`` if there is none.

    Looks at ``$PG_BIN`` first, then the newest ``/usr/lib/postgresql/*/bin`` (Debian/Ubuntu
    layout), then ``$PATH``.
    """
    env = os.environ.get("PG_BIN")
    if env:
        path = Path(env).expanduser()
        if _has_binaries(path):
            return path
        logger.warning("PG_BIN=%s does not contain initdb and pg_ctl; looking elsewhere", env)
    candidates = [p for p in Path("/usr/lib/postgresql").glob("*/bin") if _has_binaries(p)]
    if candidates:
        return max(candidates, key=_version_key)
    found = shutil.which("initdb")
    if found:
        path = Path(found).resolve().parent
        if _has_binaries(path):
            return path
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class TemporaryPostgres:
    """A private PostgreSQL cluster on ``127.0.0.1``, started by :meth:`start` (or ``with``).

    ``port=None`` picks a free port. ``bin_dir=None`` uses :func:`postgres_binaries`.
    Connect as the ``postgres`` superuser without a password through :attr:`url`.
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        bin_dir: str | os.PathLike[str] | None = None,
        start_timeout: int = 30,
    ) -> None:
        self._fixed_port = port
        self._port: int | None = port
        self._bin_dir = Path(bin_dir) if bin_dir is not None else None
        self._start_timeout = start_timeout
        self._root: Path | None = None
        self._running = False

    # -- properties ----------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The TCP port the server listens on (only meaningful once started)."""
        if self._port is None:
            raise ConfigError("the temporary PostgreSQL server has not been started")
        return self._port

    @property
    def url(self) -> str:
        """``postgresql://postgres@127.0.0.1:PORT/postgres``."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def running(self) -> bool:
        """Whether the server is up."""
        return self._running

    @property
    def data_dir(self) -> Path | None:
        """The cluster's data directory while it exists."""
        return self._root / "data" if self._root else None

    def new_schema_url(self, name: str) -> str:
        """The store URL of schema ``name`` in this server (the store creates it if missing).

        The name is not checked here: opening the URL refuses an invalid one with ``ConfigError``.
        """
        return f"{self.url}?schema={name}"

    # -- lifecycle -----------------------------------------------------------------------------

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> Self:
        """Create the cluster and start the server; waits until it accepts connections."""
        if self._running:
            return self
        bin_dir = self._bin_dir or postgres_binaries()
        if bin_dir is None or not _has_binaries(bin_dir):
            raise ConfigError(
                "PostgreSQL binaries (initdb, pg_ctl) not found: apt-get install postgresql, "
                "or set PG_BIN to the directory holding them"
            )
        self._bin = bin_dir
        self._as_root = os.geteuid() == 0
        if self._as_root:
            try:
                owner = pwd.getpwnam("postgres")
            except KeyError:
                raise ConfigError(
                    "running as root needs a 'postgres' system user to own the cluster"
                ) from None
        root = Path(tempfile.mkdtemp(prefix="forseti-pg-"))
        self._root = root
        atexit.register(self.stop)
        try:
            root.chmod(0o755)
            if self._as_root:
                os.chown(root, owner.pw_uid, owner.pw_gid)
            self._run(
                "initdb",
                "-D",
                str(root / "data"),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-locale",
                "--no-sync",
            )
            attempts = 1 if self._fixed_port is not None else 3
            for attempt in range(1, attempts + 1):
                self._port = self._fixed_port or _free_port()
                try:
                    self._pg_ctl_start()
                    break
                except ConfigError:
                    if attempt == attempts or "could not bind" not in self._log_tail():
                        raise
                    logger.info("port %s was taken; retrying on another port", self._port)
        except BaseException:
            self.stop()
            raise
        self._running = True
        logger.info("temporary PostgreSQL (%s) listening on 127.0.0.1:%s", bin_dir, self._port)
        return self

    def _pg_ctl_start(self) -> None:
        assert self._root is not None
        options = (
            f"-p {self._port} -k {self._root} -c listen_addresses=127.0.0.1 -c fsync=off "
            f"-c max_connections=200"
        )
        self._run(
            "pg_ctl",
            "-D",
            str(self._root / "data"),
            "-l",
            str(self._root / "log"),
            "-w",
            "-t",
            str(self._start_timeout),
            "-o",
            options,
            "start",
            new_session=True,
        )

    def stop(self) -> None:
        """Stop the server (``-m immediate``) and delete its directory; idempotent."""
        atexit.unregister(self.stop)
        root, self._root = self._root, None
        if root is None:
            return
        if (root / "data" / "postmaster.pid").exists():
            try:
                self._run("pg_ctl", "-D", str(root / "data"), "-m", "immediate", "stop", cwd=root)
            except ConfigError:
                logger.warning("could not stop the temporary PostgreSQL in %s", root, exc_info=True)
        self._running = False
        shutil.rmtree(root, ignore_errors=True)
        logger.info("temporary PostgreSQL on port %s stopped", self._port)

    # -- helpers -------------------------------------------------------------------------------

    def _run(
        self, tool: str, *args: str, cwd: Path | None = None, new_session: bool = False
    ) -> None:
        cmd = [str(self._bin / tool), *args]
        if self._as_root:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        logger.debug("running %s", cmd)
        try:
            proc = subprocess.run(
                cmd,
                check=False,
                cwd=cwd or self._root,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=self._start_timeout + 30,
                start_new_session=new_session,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ConfigError(f"{tool} failed: {exc}\n{self._log_tail()}") from None
        if proc.returncode != 0:
            raise ConfigError(
                f"{tool} exited with status {proc.returncode}:\n{proc.stdout.strip()[-2000:]}\n"
                f"--- server log ---\n{self._log_tail()}"
            )

    def _log_tail(self, lines: int = 30) -> str:
        if self._root is None:
            return ""
        try:
            text = (self._root / "log").read_text(errors="replace")
        except OSError:
            return "(no server log)"
        return "\n".join(text.splitlines()[-lines:])

    def __repr__(self) -> str:
        state = f"port {self._port}" if self._running else "stopped"
        return f"TemporaryPostgres({state})"
