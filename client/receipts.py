"""Receipts of the coordinator's audit-log head, kept at the site (issue 11, item 6).

Every unary reply from the coordinator carries the log's head (seq, hash). A client
interceptor on the agent's channel appends each new head to ``<state>/<site>.receipts.jsonl``.
An auditor later runs `cohort audit verify --receipts DIR`: a receipt past the log's end
shows rows were cut off; a receipt whose hash the log no longer has shows a rewrite.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

import grpc

log = logging.getLogger(__name__)
RECEIPTS_SUFFIX = ".receipts.jsonl"


def receipts_path(state_dir: Path, site_name: str) -> Path:
    """Where ``site_name`` keeps its receipts of the coordinator's log heads."""
    return Path(state_dir) / f"{site_name}{RECEIPTS_SUFFIX}"


class ReceiptBook(
    grpc.UnaryUnaryClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
):
    """Append each new (seq, hash) a reply carries to the site's receipts file.

    Only a head that moved is written, so a site polling every few seconds adds a line
    per change of the log, not per call. Replies without a head (an old coordinator, or
    a message that has none) are passed through untouched.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._last: tuple[int, str] | None = None

    @classmethod
    def for_site(cls, state_dir: Path, site_name: str) -> ReceiptBook:
        """The receipt book of ``site_name`` in its state folder."""
        return cls(receipts_path(state_dir, site_name))

    def attach(self, channel: grpc.Channel) -> grpc.Channel:
        """``channel`` with this book recording every reply's log head."""
        return grpc.intercept_channel(channel, self)

    def record(self, reply: Any) -> None:
        """Append ``reply``'s log head to the receipts file when it moved since the last one."""
        head = getattr(reply, "log_head", None)
        if head is None or not head.seq or not head.hash:
            return
        key = (int(head.seq), str(head.hash))
        if len(key[1]) != 64 or any(ch not in "0123456789abcdef" for ch in key[1]):
            # Not a sha256: keeping it would only fill the disk and spoil the file.
            log.warning("the coordinator sent a malformed log head %r; not kept", key[1][:80])
            return
        if self._last is not None and key[0] < self._last[0]:
            log.warning(
                "the coordinator's log head went back from row %d to %d: keep these receipts",
                self._last[0],
                key[0],
            )
        with self._lock:
            if key == self._last:
                return
            line = json.dumps({"seq": key[0], "hash": key[1], "time": time.time()})
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with self.path.open("a", encoding="utf-8") as out:
                    out.write(line + "\n")
            except OSError as exc:
                # A full disk must not stop the site's work; the gap shows in the file.
                log.warning("cannot keep a log receipt in %s: %s", self.path, exc)
                return
            self._last = key

    def _after(self, outcome: Any) -> Any:
        # A callback, not outcome.result(): a call made with .future() (the agent's
        # cancellable long poll) must stay non-blocking.
        def done(call: Any) -> None:
            try:
                reply = call.result()
            except (grpc.RpcError, grpc.FutureCancelledError):
                return  # a failed call carries no head; the caller sees the error
            self.record(reply)

        outcome.add_done_callback(done)
        return outcome

    def intercept_unary_unary(self, continuation, client_call_details, request):
        """Record the log head of a unary call's reply."""
        return self._after(continuation(client_call_details, request))

    def intercept_stream_unary(self, continuation, client_call_details, request_iterator):
        """Record the log head of a client-streaming call's reply (the update upload)."""
        return self._after(continuation(client_call_details, request_iterator))


def load_receipts(path: Path) -> list[tuple[int, str, float]]:
    """(seq, hash, time) of each line of a receipts file; ValueError naming a bad line."""
    out = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            seq, digest = int(item["seq"]), str(item["hash"])
            at = float(item.get("time", 0.0))
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}:{number} is not a receipt line: {exc}") from exc
        if seq < 1 or len(digest) != 64:
            raise ValueError(f"{path}:{number} is not a receipt (seq {seq}, hash {digest!r})")
        out.append((seq, digest, at))
    return out
