"""`websoft9-backup serve`: the Docker watcher, the scheduler, the job runner and
the API with /metrics on waitress, until SIGTERM or SIGINT.

Start: unlock the repository key (a wrong key refuses to start), open and
migrate the catalog, mark jobs an earlier process left unfinished as
interrupted, start containers an interrupted backup left stopped, take the
inventory and follow Docker's events. Stop: the server stops taking requests,
queued jobs are marked interrupted, running ones get `grace` seconds to
finish (after that, or after a SIGKILL, the next start marks them
interrupted), then the watcher stops. The scheduler stops first: it starts
nothing more; a run it missed meanwhile is caught up at the next start."""

from __future__ import annotations

import logging
import os
import signal
import threading
from dataclasses import dataclass
from pathlib import Path

from sidecar.errors import InvalidRequest
from sidecar.jobs.child import ChildSpec
from sidecar.jobs.scheduler import SchedulerConfig

log = logging.getLogger(__name__)


@dataclass
class ServeOptions:
    host: str = "0.0.0.0"
    port: int = 8080
    api_key: str | None = None
    insecure_no_auth: bool = False
    max_concurrent: int = 2
    grace: float = 60.0  # seconds running jobs get to finish at shutdown
    docker: bool = True
    threads: int = 8
    scheduler: SchedulerConfig | None = None  # None: no scheduled work (serve --no-scheduler)


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:  # 0: any free port
        raise InvalidRequest(f"listen address must be HOST:PORT, got {text!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


class Daemon:
    def __init__(  # type: ignore[no-untyped-def]
        self, options: ServeOptions, open_repo, repo_info, catalog_url: str, state_dir: Path, child: ChildSpec | None
    ) -> None:
        from sidecar.api import create_app
        from sidecar.catalog import Catalog, open_catalog
        from sidecar.jobs.runner import JobRunner
        from sidecar.metrics import Metrics
        from sidecar.operations import Operations

        self.options = options
        if not options.api_key and not options.insecure_no_auth:
            raise InvalidRequest(
                "BACKUP_API_KEY is not set: serve does not start without an API key "
                "(--insecure-no-auth for local use only)"
            )
        # store workers run below the API's priority (backups are background work; requests are not)
        os.environ.setdefault("BACKUP_WORKER_NICE", "10")
        os.environ.setdefault("BACKUP_JOB_NICE", "10")
        repo = open_repo()  # for the repository-size metric (the caller has checked the key)
        open_catalog(catalog_url)
        catalog = Catalog()
        interrupted = catalog.interrupt_unfinished()
        if interrupted:
            log.warning("%d job(s) of an earlier run were left unfinished: marked interrupted", interrupted)
        self.registry = None
        self.watcher = None
        client_factory = None
        if options.docker:
            from sidecar.docker.apps import Registry
            from sidecar.docker.client import EventWatcher, connect
            from sidecar.jobs.backup import restart_left_stopped

            client = connect()  # DOCKER_UNAVAILABLE now rather than at the first job
            restarted = restart_left_stopped(client, state_dir)
            if restarted:
                log.warning("started %d container(s) an interrupted backup had left stopped", len(restarted))
            self.registry = Registry()
            self.registry.inventory(client)
            self.watcher = EventWatcher(self.registry.inventory, self.registry.handle_event)
            client_factory = lambda: client  # noqa: E731  (docker-py's client is thread-safe for API calls)

        def repository_size() -> int:
            return sum(size for _, size in repo.backend.list(""))

        self.runner = JobRunner(catalog, options.max_concurrent)
        self.operations = Operations(
            catalog=catalog,
            runner=self.runner,
            open_repo=open_repo,
            repo_info=repo_info,
            state_dir=state_dir,
            registry=self.registry,
            docker_client=client_factory,
            metrics=Metrics(repository_size=repository_size),
            child=child,
        )
        self.scheduler = None
        if options.scheduler is not None:
            from sidecar.jobs.scheduler import Scheduler
            from sidecar.jobs.scheduling import OperationsLauncher, ScheduleSources

            config = options.scheduler
            self.operations.tz = config.tz
            self.scheduler = Scheduler(
                config,
                OperationsLauncher(self.operations),
                ScheduleSources(self.registry, config),
                metrics=self.operations.metrics,
            )
            self.operations.scheduler = self.scheduler
            if self.registry is not None:
                self.registry.listeners.append(self.scheduler.wake)
        self.app = create_app(self.operations, options.api_key, insecure_no_auth=options.insecure_no_auth)
        self._server = None
        self._stopping = threading.Event()

    def serve(self) -> None:
        """Run until `stop()` (or SIGTERM/SIGINT when called from the main thread)."""
        from waitress.server import create_server

        if self.watcher is not None:
            self.watcher.start()
        if self.scheduler is not None:
            self.scheduler.start()
        self._server = create_server(
            self.app,
            host=self.options.host,
            port=self.options.port,
            threads=self.options.threads,
            ident="websoft9-backup",
        )
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda signum, frame: self.stop())
        log.info(
            "serving the API on http://%s:%s%s",
            self.options.host,
            self.port,
            " WITHOUT AUTHENTICATION" if self.options.insecure_no_auth else "",
        )
        try:
            self._server.run()
        except OSError:
            if not self._stopping.is_set():
                raise
        finally:
            self._shutdown()

    @property
    def port(self) -> int:
        return self._server.effective_port if self._server is not None else self.options.port  # type: ignore[attr-defined]

    def stop(self) -> None:
        if self._stopping.is_set():
            return
        self._stopping.set()
        log.info("stopping: no new requests; running jobs get %.0f s to finish", self.options.grace)
        if self._server is not None:
            self._server.close()

    def _shutdown(self) -> None:
        from sidecar.catalog.db import close_catalog

        if self.scheduler is not None:
            self.scheduler.stop()  # starts nothing more; what it started is drained below
        done = threading.Event()

        def drain() -> None:
            self.runner.shutdown(wait=True)
            done.set()

        threading.Thread(target=drain, name="drain", daemon=True).start()
        if not done.wait(self.options.grace):
            log.error(
                "jobs still running after %.0f s: they will be marked interrupted at the next start", self.options.grace
            )
        if self.watcher is not None:
            self.watcher.stop()
        close_catalog()
