"""Run pinning: what a site saw at its first task of a run, and the refusal of any change.

A breached coordinator could otherwise switch a secure run to plaintext after the key is
dealt, swap the model for one that imports code, add a participant it controls, or ask
for the site's trained weights again with an INIT task. The first task of a run fixes the
run's scheme, model spec, participants (site → pinned fingerprint), custodian and key
fingerprint here, in the site's state folder (0600); a later task that disagrees is
refused with code ``pin``. Facts not known yet (the key before KEYGEN) are pinned when
they first appear.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from client.policy import TaskRefused


@dataclass
class RunPin:
    """The facts of one run as this site first saw them."""

    run_id: str
    scheme: str
    model: str
    model_config: str  # canonical JSON: two configs that build the same model compare equal
    lora: str
    participants: dict[str, str] = field(default_factory=dict)  # site → fingerprint
    custodian: str = ""
    key_fingerprint: str = ""
    # sha256 of the run's pinned data schema (protos.data_schema): columns never change
    # under a run this site trains in.
    schema: str = ""
    # Secure runs: sha256 of the initial model every aggregate is applied to. Swapping it
    # mid-run would let a coordinator choose the weights (and so the clip bounds) a site
    # trains from.
    initial_model: str = ""
    # Set once this site has trained in the run: its local weights now hold its data, so
    # an INIT (which sends weights in plaintext) is refused from then on.
    trained: bool = False
    # Secure runs: round → sha256 of the one aggregate this site verified for it. Two
    # verified subsets of one round's updates ({A,B,C,D}, then {A,B,C}) differ by exactly
    # one site's update; decrypting both would hand that update to whoever combines.
    aggregates: dict[str, str] = field(default_factory=dict)
    # Canonical JSON of the run's differential-privacy plan ("" for none) as first seen: a
    # later task that changes it (its ε, mode, quorum) or drops it is refused, whatever
    # its kind (the ledger pins the noise of the rounds a site trained, client/dp_site.py).
    privacy: str = ""


@dataclass(frozen=True)
class Observed:
    """What one task says about its run (built by the agent from the task)."""

    run_id: str
    scheme: str
    model: str
    model_config: Any
    lora: str
    participants: dict[str, str]
    custodian: str
    key_fingerprint: str
    schema: str = ""
    initial_model: str = ""
    privacy: str = ""


def canonical_config(value: Any) -> str:
    """``value`` as canonical JSON (sorted keys, no spaces): equal configs compare equal."""
    return json.dumps(value if value is not None else {}, sort_keys=True, separators=(",", ":"))


class RunPins:
    """The site's run pins, persisted as ``<site>.runs.json`` in its state folder."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self.runs: dict[str, RunPin] = {}
        self._read()

    def _read(self) -> None:
        if self.path.exists():
            raw = json.loads(self.path.read_text())
            self.runs = {k: RunPin(**v) for k, v in raw.get("runs", {}).items()}

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the pins for one read-modify-write, across threads AND processes.

        `cohort client export-model` and `cohort model export` open the same state folder
        as the running agent: without an exclusive lock and a fresh read, each process
        would check its own stale copy and the last writer would erase the other's pins
        (two aggregates of one round could then both be decrypted).
        """
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(
                self.path.with_name(self.path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600
            )
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                self._read()
                yield
            finally:
                os.close(fd)  # closing releases the flock

    @classmethod
    def load(cls, state_dir: Path, site_name: str) -> RunPins:
        """The run pins of ``site_name`` from its state folder."""
        return cls(Path(state_dir) / f"{site_name}.runs.json")

    def get(self, run_id: str) -> RunPin | None:
        """The pin of ``run_id``, or None before this site has seen the run."""
        return self.runs.get(run_id)

    def check(self, seen: Observed, *, init: bool = False) -> RunPin:
        """Pin a run at its first task, or refuse a task that disagrees with the pin.

        Raises
        ------
        TaskRefused
            ``pin``: naming the first fact that changed.
        """
        with self._locked():
            pin = self.runs.get(seen.run_id)
            config = canonical_config(seen.model_config)
            if pin is None:
                pin = RunPin(
                    run_id=seen.run_id,
                    scheme=seen.scheme,
                    model=seen.model,
                    model_config=config,
                    lora=seen.lora,
                    participants=dict(seen.participants),
                    custodian=seen.custodian,
                    key_fingerprint=seen.key_fingerprint,
                    schema=seen.schema,
                    initial_model=seen.initial_model,
                    privacy=seen.privacy,
                )
                self.runs[seen.run_id] = pin
                self._save()
                return pin
            run = seen.run_id
            if seen.scheme != pin.scheme:
                raise TaskRefused(
                    "pin", f"run {run} was pinned {pin.scheme}; a task now says {seen.scheme}"
                )
            if (seen.model, config, seen.lora) != (pin.model, pin.model_config, pin.lora):
                raise TaskRefused(
                    "pin",
                    f"run {run} was pinned to model {pin.model!r} ({pin.model_config[:200]}, "
                    f"lora {pin.lora!r}); a task now asks for {seen.model[:200]!r} "
                    f"({config[:200]}, lora {seen.lora[:100]!r})",
                )
            if init and pin.trained:
                raise TaskRefused(
                    "pin",
                    f"run {run}: an INIT task after this site trained would send its trained "
                    "weights in plaintext",
                )
            changed = False
            if pin.privacy and seen.privacy != pin.privacy:
                raise TaskRefused(
                    "pin",
                    f"run {run}: its privacy plan was pinned {pin.privacy[:300]}; a task now "
                    f"says {seen.privacy[:300] or 'none'}",
                )
            if seen.privacy and not pin.privacy:
                # A plan that appears later only adds noise: pinned from now on.
                pin.privacy, changed = seen.privacy, True
            if seen.participants:
                if not pin.participants:
                    pin.participants, changed = dict(seen.participants), True
                elif seen.participants != pin.participants:
                    added = sorted(set(seen.participants) - set(pin.participants))
                    moved = sorted(
                        s
                        for s in set(seen.participants) & set(pin.participants)
                        if seen.participants[s] != pin.participants[s]
                    )
                    raise TaskRefused(
                        "pin",
                        f"run {run}: participants changed since this site pinned them "
                        f"(added {added[:10]}, identity changed {moved[:10]}, now "
                        f"{len(seen.participants)} vs {len(pin.participants)} pinned)",
                    )
            for name in ("custodian", "key_fingerprint", "schema", "initial_model"):
                new, old = getattr(seen, name), getattr(pin, name)
                if new and not old:
                    setattr(pin, name, new)
                    changed = True
                elif new and new != old:
                    raise TaskRefused(
                        "pin", f"run {run}: {name} was pinned {old!r}; a task now says {new!r}"
                    )
            if changed:
                self._save()
            return pin

    def pin_aggregate(self, run_id: str, round_number: int, sha256: str) -> None:
        """Pin the one aggregate this site decrypts for ``round_number``, or refuse another.

        Called once an aggregate's manifest and product check, before the site decrypts
        it or publishes a partial decryption of it.

        Raises
        ------
        TaskRefused
            ``verify``: a task shows a different aggregate for a round already pinned.
        """
        with self._locked():
            pin = self.runs.get(run_id)
            if pin is None:
                raise TaskRefused("verify", f"run {run_id} is not pinned at this site")
            old = pin.aggregates.get(str(round_number))
            if old is None:
                pin.aggregates[str(round_number)] = sha256
                self._save()
            elif old != sha256:
                raise TaskRefused(
                    "verify",
                    f"run {run_id} round {round_number}: this site already decrypted aggregate "
                    f"{old[:16]}…; a task now shows another ({sha256[:16]}…). Two aggregates "
                    "of one round would reveal the updates in which they differ",
                )

    def mark_trained(self, run_id: str) -> None:
        """Record that this site has trained in ``run_id``: from now on an INIT task is refused."""
        with self._locked():
            pin = self.runs.get(run_id)
            if pin is not None and not pin.trained:
                pin.trained = True
                self._save()

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        body = json.dumps({"runs": {k: asdict(v) for k, v in self.runs.items()}}, indent=1)
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(body)
        os.replace(tmp, self.path)
