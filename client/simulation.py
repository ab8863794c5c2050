"""Virtual sites for `cohort simulate`: partitions of one data set, many sites to a Ray actor.

Each virtual site is a real :class:`client.agent.SiteAgent` (its own identity, state folder,
policy, pins and gRPC channel to the coordinator) around a real
:class:`client.trainer.TabularTrainer` on its partition. What differs from `cohort client
run` is only how sites wait for work: a thousand sites cannot each hold a long poll (a
coordinator thread each), so a host actor sweeps its sites with non-blocking polls
(``wait_seconds=0``) and runs each task it finds to the end, one site at a time, exactly as
the agent's own worker would (``SiteAgent.handle``: the site's policy and pins first).
Hosts run in parallel, one per Ray worker, as Flower's simulation runs its ClientApps.

Partitions come from ``flwr-datasets``' partitioners (Dirichlet label skew, a fixed number
of labels per site, or IID) applied to a Hugging Face ``datasets.Dataset`` of row indices
and labels, so Cohort and Flower can be given exactly the same split.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from client.data import TabularData

log = logging.getLogger(__name__)

PARTITIONS = ("dirichlet", "label", "iid")


def partition_rows(
    labels: np.ndarray,
    sites: int,
    how: str,
    *,
    alpha: float = 0.5,
    labels_per_site: int = 2,
    seed: int = 0,
) -> list[np.ndarray]:
    """Row indices of each site's partition, from the flwr-datasets partitioner ``how``.

    Raises
    ------
    ValueError
        On an unknown ``how``, or a split the partitioner cannot make (e.g. more sites
        than rows, or a Dirichlet draw that leaves a site under its minimum size).
    """
    from datasets import Dataset
    from flwr_datasets.partitioner import (
        IidPartitioner,
        InnerDirichletPartitioner,
        Partitioner,
        PathologicalPartitioner,
    )

    if how not in PARTITIONS:
        raise ValueError(f"unknown partitioning {how!r}: use {', '.join(PARTITIONS)}")
    if sites > len(labels):
        raise ValueError(f"{sites} sites but only {len(labels)} rows to share between them")
    partitioner: Partitioner
    if how == "dirichlet":
        # Equal sizes, each site's label mix drawn from Dirichlet(alpha) (Acar et al.,
        # FedDyn, arXiv:2111.04263, as flwr-datasets implements it). The size-skewed
        # DirichletPartitioner cannot keep a thousand sites above a minimum size.
        sizes = [len(part) for part in np.array_split(np.arange(len(labels)), sites)]
        partitioner = InnerDirichletPartitioner(
            partition_sizes=sizes, partition_by="label", alpha=alpha, seed=seed
        )
    elif how == "label":
        partitioner = PathologicalPartitioner(
            num_partitions=sites,
            partition_by="label",
            num_classes_per_partition=labels_per_site,
            seed=seed,
        )
    else:
        partitioner = IidPartitioner(num_partitions=sites)
    partitioner.dataset = Dataset.from_dict(
        {"row": np.arange(len(labels)), "label": np.asarray(labels).astype(int)}
    )
    parts = [np.asarray(partitioner.load_partition(i)["row"], np.int64) for i in range(sites)]
    small = [i for i, part in enumerate(parts) if len(part) < 2]
    if small:
        raise ValueError(
            f"{len(small)} of {sites} sites got fewer than 2 rows: use fewer sites, more data "
            "or a larger --alpha"
        )
    return parts


def site_name(index: int) -> str:
    """The name of virtual site ``index``: zero-padded, so names sort in index order."""
    return f"site-{index:05d}"


@dataclass(frozen=True)
class SiteSpec:
    """One virtual site: its name and its rows (features as loaded, integer labels)."""

    name: str
    x: np.ndarray
    y: np.ndarray


class SiteHost:
    """Many virtual sites in one process (a Ray actor), swept for tasks one after another.

    Parameters
    ----------
    address
        The coordinator, ``host:port``.
    sites
        The sites this host runs.
    feature_names, class_names
        What every partition's columns and labels are called (the run agrees on them).
    state_root
        Each site keeps its identity, pins and receipts under ``state_root/NAME``.
    min_key_bits
        The sites' policy: smallest Paillier key they accept or deal.
    """

    def __init__(
        self,
        address: str,
        sites: list[SiteSpec],
        feature_names: list[str],
        class_names: list[str] | None,
        state_root: str,
        *,
        seed: int = 0,
        min_key_bits: int = 2048,
        encrypt_workers: int | None = 1,
    ) -> None:
        logging.getLogger("client").setLevel(logging.ERROR)
        import torch

        from client import prewarm
        from client.agent import AgentConfig, SiteAgent
        from client.policy import SitePolicy
        from client.trainer import TabularTrainer

        # A host is one Ray worker on one CPU training tiny models one after another:
        # torch's intra-op threads would only fight each other (and the other hosts).
        torch.set_num_threads(1)
        prewarm.training_imports()  # the process's one-time torch import, before any round
        self._stop = threading.Event()
        self.agents: dict[str, SiteAgent] = {}
        self.events: dict[str, int] = {}
        for offset, spec in enumerate(sites):
            # Ray hands arrays over read-only; torch wants to own writable ones.
            data = TabularData(np.array(spec.x), np.array(spec.y), list(feature_names), class_names)
            trainer = TabularTrainer(data, seed=seed + offset)
            self.agents[spec.name] = SiteAgent(
                AgentConfig(
                    address,
                    spec.name,
                    Path(state_root) / spec.name,
                    poll_seconds=0.0,
                    encrypt_workers=encrypt_workers,
                    seed=seed,
                    policy=SitePolicy(min_key_bits=min_key_bits),
                ),
                trainer,
                listener=self._count,
            )

    def _count(self, event: str, info: dict[str, Any]) -> None:
        self.events[event] = self.events.get(event, 0) + 1

    def fingerprints(self) -> dict[str, str]:
        """Each site's identity fingerprint, for the sites that must pin it."""
        return {name: agent.identity.fingerprint for name, agent in self.agents.items()}

    def pin(self, pins: dict[str, dict[str, str]]) -> None:
        """``pins[site]`` maps the peers that site pins (agreed out of band) to fingerprints."""
        for name, peers in pins.items():
            agent = self.agents.get(name)
            if agent is None:
                continue
            for peer, fingerprint in peers.items():
                agent.peers.pin(peer, fingerprint)

    def join(self) -> int:
        """Every site joins the federation (enrols its identity); returns how many did."""
        for agent in self.agents.values():
            agent.join()
        return len(self.agents)

    def serve(self) -> dict[str, int]:
        """Sweep the sites for tasks until :meth:`stop`; returns the events counted."""
        import grpc

        from client.policy import TaskRefused
        from protos import federation_pb2

        given_up: set[str] = set()
        idle = 0.05
        while not self._stop.is_set():
            worked = False
            for agent in self.agents.values():
                if self._stop.is_set():
                    break
                try:
                    task = agent.stub.PullTask(
                        federation_pb2.PullTaskRequest(wait_seconds=0.0),
                        metadata=agent._metadata(),
                        timeout=60,
                    )
                except grpc.RpcError as exc:
                    log.warning("%s: poll failed: %s", agent.config.site_name, exc)
                    self._count("poll_failed", {})
                    continue
                if task.kind == federation_pb2.TASK_KIND_NONE or task.task_id in given_up:
                    continue
                worked = True
                try:
                    agent.handle(task)
                except TaskRefused as refusal:
                    given_up.add(task.task_id)
                    agent.refuse(task, refusal)
                except Exception as exc:  # one site's failure leaves the others working
                    given_up.add(task.task_id)
                    self._count("task_failed", {})
                    log.warning("%s: task failed: %s", agent.config.site_name, exc)
                finally:
                    # A site's obfuscator pool is a worker process kept between rounds; a
                    # host of hundreds of sites cannot keep one each, so it ends with the task.
                    agent.secure.close_randomness()
            if worked:
                idle = 0.05
            else:
                self._stop.wait(idle)
                idle = min(idle * 2, 0.5)
        return dict(self.events)

    def stop(self) -> None:
        """Ask the sweep loop to end."""
        self._stop.set()

    def export(self, name: str, run_id: str) -> list[np.ndarray]:
        """The run's final weights as site ``name`` gets them (decrypted there if secure)."""
        return self.agents[name].export_model(run_id)

    def close(self) -> None:
        """Close every virtual site's agent (its channel and workers)."""
        for agent in self.agents.values():
            agent.close(wait_seconds=1.0)


def wait_all(refs: list[Any], timeout: float) -> list[Any]:
    """``ray.get`` with a deadline, saying which host failed to answer."""
    import ray

    deadline = time.monotonic() + timeout
    out = []
    for index, ref in enumerate(refs):
        left = max(0.1, deadline - time.monotonic())
        try:
            out.append(ray.get(ref, timeout=left))
        except ray.exceptions.GetTimeoutError as exc:
            raise RuntimeError(f"site host {index} did not answer in {timeout:.0f} s") from exc
    return out
