"""UMAP in a long-lived helper process, so the window never freezes while it runs.

UMAP's numba code (its JIT compilation above all) holds Python's GIL for hundreds of
milliseconds at a time; in a thread of the GUI process that freezes the window. Here a single
``spawn`` child process runs :func:`engine.analysis.embed_umap`; the calling worker thread sends
it log-normalised matrices and waits on a pipe, checking its cancel event every 50 ms. The child
is started (and its numba code compiled) in the background when a model loads, and reused for
every embedding. If the helper cannot start or dies, the embedding runs in the calling thread
instead (correct, only less smooth).

This module must stay importable without Qt: the child process imports it.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
import traceback
from typing import Any

log = logging.getLogger(__name__)

_TERMINATE_AFTER_S = 0.8  # a cancel the child has not honoured by then kills it


def _serve(conn, cancel) -> None:  # runs in the child process
    import os

    import numpy as np

    if hasattr(os, "nice"):
        try:
            os.nice(8)  # background work: never starve the window of CPU
        except OSError:
            pass

    from engine.errors import Cancelled

    def progress(p) -> None:
        conn.send(("progress", (float(p.fraction), str(p.phase))))

    while True:
        try:
            kind, payload = conn.recv()
        except (EOFError, OSError):
            return
        if kind == "quit":
            return
        try:
            import anndata as ad

            from engine.analysis import embed_umap

            if kind == "warm":
                rng = np.random.default_rng(0)
                x = rng.poisson(2.0, size=(120, 30)).astype(np.float32)
                embed_umap({"a": ad.AnnData(x)}, max_fit_cells=100)
                conn.send(("warmed", None))
                continue
            parts, kw = payload
            adatas = {}
            for name, (m, genes) in parts.items():
                a = ad.AnnData(m)
                a.var_names = genes
                adatas[name] = a
            cancel.clear()
            coords, labels = embed_umap(adatas, progress=progress, cancel=cancel, **kw)
            conn.send(("result", (coords, labels)))
        except Cancelled:
            conn.send(("cancelled", None))
        except Exception as e:  # noqa: BLE001 - sent back to the app and shown there
            conn.send(("error", (type(e).__name__, str(e), traceback.format_exc())))


class EmbedServer:
    def __init__(self) -> None:
        self._proc = None
        self._conn = None
        self._cancel = None
        self._lock = threading.Lock()
        self.disabled = False

    def _ensure(self) -> bool:
        if self.disabled:
            return False
        if self._proc is not None and self._proc.is_alive():
            return True
        try:
            import multiprocessing as mp

            ctx = mp.get_context("spawn")
            parent, child = ctx.Pipe()
            self._cancel = ctx.Event()
            self._proc = ctx.Process(target=_serve, args=(child, self._cancel), daemon=True,
                                     name="perturb-studio-umap")
            self._proc.start()
            child.close()
            self._conn = parent
            return True
        except Exception:  # noqa: BLE001 - fall back to the calling thread
            log.exception("could not start the UMAP helper process; using a thread")
            self.disabled = True
            self._proc = None
            return False

    def warm(self) -> None:
        """Start the helper and compile UMAP in it now (returns at once)."""
        with self._lock:
            if self._ensure():
                try:
                    self._conn.send(("warm", None))
                except (OSError, ValueError):
                    self._kill()

    def _kill(self) -> None:
        if self._proc is not None:
            try:
                self._proc.terminate()
                self._proc.join(2)
            except Exception:  # noqa: BLE001
                pass
        self._proc = self._conn = None

    def embed(self, adatas: dict[str, Any], *, progress=None, cancel=None, **kw):
        """Like :func:`engine.analysis.embed_umap` (same return value and errors)."""
        from engine.analysis import embed_umap, shared_log_normalized
        from engine.errors import Cancelled, DataError, PerturbStudioError
        from engine.progress import Progress, check_cancel

        with self._lock:
            if not self._ensure():
                return embed_umap(adatas, progress=progress, cancel=cancel, **kw)
            check_cancel(cancel)
            mats, genes = shared_log_normalized(adatas)
            check_cancel(cancel)
            parts = {k: (m, list(genes)) for k, m in mats.items()}
            self._cancel.clear()
            # send from a helper thread: a large message blocks until the child reads it (e.g.
            # while it is still compiling UMAP), and this loop must keep watching for Cancel
            conn, sent = self._conn, {}

            def send() -> None:
                try:
                    conn.send(("embed", (parts, kw)))
                except Exception as e:  # noqa: BLE001 - the child was killed or died
                    sent["error"] = e

            threading.Thread(target=send, name="umap-send", daemon=True).start()
            cancelled_at = None
            while True:
                if cancel is not None and cancel.is_set() and cancelled_at is None:
                    self._cancel.set()
                    cancelled_at = time.perf_counter()
                if "error" in sent and cancelled_at is None:
                    log.warning("could not hand the cells to the UMAP helper (%s); embedding "
                                "in this process", sent["error"])
                    self._kill()
                    return embed_umap(adatas, progress=progress, cancel=cancel, **kw)
                if cancelled_at is not None and \
                        time.perf_counter() - cancelled_at > _TERMINATE_AFTER_S:
                    self._kill()
                    raise Cancelled("cancelled by the user")
                try:
                    ready = self._conn.poll(0.05)
                except (OSError, EOFError):
                    ready, self._proc = None, None
                if ready is None or (not ready and not self._proc.is_alive()):
                    self._kill()
                    if cancelled_at is not None:
                        raise Cancelled("cancelled by the user")
                    log.warning("UMAP helper process died; embedding in this process")
                    return embed_umap(adatas, progress=progress, cancel=cancel, **kw)
                if not ready:
                    continue
                try:
                    kind, payload = self._conn.recv()
                except (EOFError, OSError):
                    continue
                if kind == "progress" and progress is not None and cancelled_at is None:
                    progress(Progress(payload[0], payload[1]))
                elif kind == "result":
                    coords, labels = payload
                    return coords, labels
                elif kind == "cancelled":
                    raise Cancelled("cancelled by the user")
                elif kind == "error":
                    name, msg, tb = payload
                    log.error("UMAP helper failed:\n%s", tb)
                    if name in ("DataError", "PerturbStudioError", "ResourceError"):
                        raise DataError(msg)
                    raise PerturbStudioError(f"the UMAP could not be computed: {msg}")
                # 'warmed' and stale messages are ignored

    def shutdown(self) -> None:
        with self._lock:
            if self._proc is not None and self._proc.is_alive():
                try:
                    self._conn.send(("quit", None))
                    self._proc.join(1.0)
                except Exception:  # noqa: BLE001
                    pass
            self._kill()


_server: EmbedServer | None = None


def server() -> EmbedServer:
    global _server
    if _server is None:
        _server = EmbedServer()
        atexit.register(_server.shutdown)
    return _server
