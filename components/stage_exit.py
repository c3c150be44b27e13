"""How a stage process ends: the orphan watchdog (:func:`watch_parent`), a stop requested by a
watchdog thread (:func:`stop_stage`), the check every writer makes before publishing
(:func:`refuse_if_orphaned`) and the fast exit (:func:`exit_now`).

A ground-floor module: it imports nothing of trainwise, so the data contract and the atomic
writers (components/atomic_io.py) can call it.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

_stop_reason: list[str] = []  # set once by stop_stage


def stopped_because() -> str | None:
    """Why a watchdog stopped this stage (run_stage prints it as the error), or None."""
    return _stop_reason[0] if _stop_reason else None


def stop_stage(reason: str, *, grace_s: float = 30.0) -> None:
    """Stop this stage from a watchdog thread, as an error the user can act on.

    The main thread gets SIGINT (Ray Train and Tune stop their workers on it, the MLflow run ends
    FAILED, nothing is published: refuse_if_orphaned checks the reason too) and run_stage prints
    ``trainwise: error: <reason>`` and exits 2. If the process is still alive ``grace_s`` later
    (an engine that swallowed the interrupt), it prints the error and exits hard.
    """
    if _stop_reason:
        return
    _stop_reason.append(reason)
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(grace_s)
    print(f"trainwise: error: {reason}", file=sys.stderr, flush=True)
    os._exit(2)


# Set once the process that started this stage is gone: from then on nothing is published.
ORPHANED = threading.Event()


class Orphaned(KeyboardInterrupt):
    """Raised instead of publishing an output after the stage was orphaned (like Ctrl-C)."""


def refuse_if_orphaned(what: str | os.PathLike) -> None:
    """Called by every writer right before it renames an output into place.

    A SIGINT alone does not stop every engine at once (Ray Train turns it into a graceful
    abort that may still return a result), so the publish step itself checks.
    """
    if ORPHANED.is_set():
        raise Orphaned(f"not writing {what}: the process that started this stage is gone")
    if stopped_because():
        raise Orphaned(f"not writing {what}: {stopped_because()}")


# Shells that may stand between `dvc repro` and the stage: DVC runs a stage's cmd through
# $SHELL (else /bin/sh), and dash, for one, keeps its own process instead of exec'ing the command.
SHELLS = {"sh", "dash", "bash", "zsh", "ksh", "ash", "busybox"}


def _watched_ancestors() -> list[tuple[int, int]]:
    """(pid, its parent's pid) pairs whose link must hold while the stage's starter is alive:
    this process -> its parent, and, when the parent is a shell, the shell -> its parent."""
    parent = os.getppid()
    links = [(os.getpid(), parent)]
    try:
        import psutil

        shell = psutil.Process(parent)
        if shell.name() in SHELLS and shell.ppid() > 1:
            links.append((parent, shell.ppid()))
    except Exception:  # psutil missing or the parent already gone: watch the direct link only
        pass
    return links


def _links_hold(links: list[tuple[int, int]]) -> bool:
    for pid, ppid in links:
        if pid == os.getpid():
            if os.getppid() != ppid:
                return False
            continue
        try:
            import psutil

            if psutil.Process(pid).ppid() != ppid:  # the shell was re-parented: its starter died
                return False
        except Exception:  # the shell itself is gone
            return False
    return True


def watch_parent(*, interval_s: float = 1.0, grace_s: float = 30.0, log=None,
                 on_orphaned=None) -> threading.Thread | None:
    """Stop this process when the process that started it dies (e.g. `dvc repro` was killed).

    An orphaned stage would otherwise keep training, and billing, for a pipeline nobody runs
    any more, and race the next `dvc repro` for the same outputs. On orphaning the main thread
    gets a KeyboardInterrupt (the stage ends its MLflow run as FAILED, Ray shuts down, nothing
    is renamed into place); if it has not exited ``grace_s`` later, the process exits hard.
    When the parent is a shell (DVC runs commands through one), the shell's parent is watched
    too: a shell that did not exec the command outlives a killed `dvc repro`. ``on_orphaned()``
    runs in the watcher's thread before the interrupt (e.g. stop a submitted Ray job: the main
    thread may be inside an event loop that swallows the interrupt); its errors are logged, and
    the interrupt follows regardless.
    Returns the watcher thread, or None when there is nothing to watch (started by init).
    """
    if os.getppid() <= 1:
        return None
    links = _watched_ancestors()
    gone = links[-1][1]

    def watch() -> None:
        while _links_hold(links):
            time.sleep(interval_s)
        ORPHANED.set()
        if log:
            log(f"the process that started this stage (pid {gone}) is gone; stopping")
        if on_orphaned:
            try:
                on_orphaned()
            except Exception as err:  # the interrupt and the hard exit below must still happen
                if log:
                    log(f"while stopping: {type(err).__name__}: {err}")
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(grace_s)
        os._exit(130)

    thread = threading.Thread(target=watch, name="trainwise-parent-watch", daemon=True)
    thread.start()
    return thread


FAST_EXIT_ENV = "TRAINWISE_FAST_EXIT"  # "0": end stage processes through the interpreter's full teardown


def exit_now(code: int | str | None = 0) -> None:
    """End this process as ``sys.exit(code)`` would, minus the interpreter's final teardown.

    A normal exit joins non-daemon threads (threading's own exit hooks first: thread pools),
    runs the atexit handlers (Ray's shutdown, MLflow's flushes, temporary directories, logging)
    and flushes stdout/stderr: all of that happens here too, in that order. What is skipped is
    what comes after: freeing every object of every imported module one by one, which with
    torch, MLflow and Ray loaded took 3-7 s per stage process on 2 cores and does nothing for a
    stage whose outputs are already written, closed and renamed into place
    (benchmarks/stage_exit.py measures it). ``TRAINWISE_FAST_EXIT=0`` exits the normal way.
    ``code`` is read like SystemExit's: None is 0, a string is printed to stderr and gives 1.
    """
    if code is None:
        code = 0
    elif not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    if os.environ.get(FAST_EXIT_ENV, "1").strip().lower() in ("0", "false", "no"):
        sys.exit(code)
    import atexit

    try:
        shutdown = getattr(threading, "_shutdown", None)  # what the interpreter calls first at exit
        if shutdown is not None:
            shutdown()
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
            try:
                stream.flush()
            except Exception:  # a closed or replaced stream: nothing left to flush
                pass
        os._exit(code)
