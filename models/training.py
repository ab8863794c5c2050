"""Local training, evaluation and prediction for any model called as ``model(**inputs)``."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from torch import nn
from torch.utils.data import DataLoader, Dataset

import models.distributed as distributed
from models.device import autocast_context, move_inputs, select_device

Example = tuple[dict[str, torch.Tensor], torch.Tensor]


def logits_of(output: Any) -> torch.Tensor:
    """Return the logits of a model output: a tensor, or a Hugging Face ``ModelOutput``."""
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(output, tuple | list) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(f"model returned {type(output).__name__}; expected logits or .logits")


def _cuda_devices(device: torch.device) -> list[int]:
    if device.type != "cuda":
        return []
    return [device.index if device.index is not None else torch.cuda.current_device()]


def train(
    model: nn.Module,
    dataset: Dataset[Example],
    *,
    epochs: int,
    lr: float,
    batch_size: int = 32,
    device: torch.device | None = None,
    seed: int = 0,
    proximal_mu: float = 0.0,
    weight_decay: float = 0.0,
) -> dict[str, float]:
    """Train the trainable parameters of ``model`` with AdamW and cross-entropy.

    Parameters
    ----------
    model
        Any module called as ``model(**inputs)``; frozen parameters (a LoRA base) are
        left out of the optimiser.
    dataset
        Yields ``(inputs, label)``.
    epochs, lr, batch_size, weight_decay
        Usual optimiser settings.
    device
        Defaults to CUDA when present (bf16 autocast, pinned memory), else CPU.
    seed
        Fixes data order, dropout and any random init on the way, so two sites (or two
        runs) with the same seed and data produce the same update. The caller's global
        RNG state is restored afterwards.
    proximal_mu
        FedProx: adds ``mu/2 * ||w - w_start||^2`` so that heterogeneous sites do not
        drift far from the global model they started from.

    Returns
    -------
    dict
        ``train_loss`` (mean over the last epoch), ``train_accuracy`` (last epoch) and
        ``num_examples``.

    Notes
    -----
    Under ``torchrun`` with ``WORLD_SIZE > 1`` (see :mod:`models.distributed`) the model
    is wrapped in DistributedDataParallel and each rank sees its shard of the data.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    device = device or select_device()
    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model has no trainable parameters")
    anchors = [p.detach().clone() for p in params] if proximal_mu > 0 else []
    was_training = model.training
    with torch.random.fork_rng(devices=_cuda_devices(device)):
        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed)
        step_model, sampler = distributed.prepare(model, dataset, seed=seed)
        size = len(dataset)  # type: ignore[arg-type]
        loader = DataLoader(
            dataset,
            batch_size=batch_size,
            # A last batch of one row breaks BatchNorm on [B, F] inputs in train mode;
            # dropping that single (reshuffled) row per epoch costs nothing.
            drop_last=size > batch_size and size % batch_size == 1,
            shuffle=sampler is None,
            sampler=sampler,
            generator=generator if sampler is None else None,
            pin_memory=device.type == "cuda",
        )
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
        step_model.train()
        loss_sum, correct, seen = 0.0, 0, 0
        for epoch in range(epochs):
            if sampler is not None:
                sampler.set_epoch(epoch)
            loss_sum, correct, seen = 0.0, 0, 0
            for inputs, labels in loader:
                inputs = move_inputs(inputs, device)
                labels = labels.to(device, non_blocking=device.type == "cuda")
                with autocast_context(device):
                    logits = logits_of(step_model(**inputs))
                loss = F.cross_entropy(logits.float(), labels)
                if anchors:
                    drift = sum(((p - a) ** 2).sum() for p, a in zip(params, anchors, strict=True))
                    loss = loss + 0.5 * proximal_mu * drift
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                loss_sum += float(loss.detach()) * labels.shape[0]
                correct += int((logits.argmax(dim=-1) == labels).sum())
                seen += int(labels.shape[0])
    model.train(was_training)
    with torch.no_grad():
        distributed.average_buffers(model)
    totals = distributed.all_reduce_sum([loss_sum, float(correct), float(seen)], device)
    return {
        "train_loss": totals[0] / max(totals[2], 1.0),
        "train_accuracy": totals[1] / max(totals[2], 1.0),
        "num_examples": float(len(dataset)),  # type: ignore[arg-type]
    }


@torch.no_grad()
def _collect(
    model: nn.Module, dataset: Dataset[Example], device: torch.device, batch_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    loader = DataLoader(dataset, batch_size=batch_size, pin_memory=device.type == "cuda")
    was_training = model.training
    model.eval()
    all_logits, all_labels = [], []
    for inputs, labels in loader:
        with autocast_context(device):
            logits = logits_of(model(**move_inputs(inputs, device)))
        all_logits.append(logits.float().cpu())
        all_labels.append(labels)
    model.train(was_training)
    return torch.cat(all_logits), torch.cat(all_labels)


def roc_auc(labels: np.ndarray, probs: np.ndarray) -> float:
    """ROC AUC: binary on P(class 1), else one-vs-rest macro; nan when undefined.

    A site with a single class in its held-out data is common in federations (a small
    clinic with no positives); AUC is undefined there, so it is nan rather than an error.
    Classes absent from ``labels`` are left out of the macro average.
    """
    if probs.shape[1] == 2:
        if len(np.unique(labels)) < 2:
            return math.nan
        return float(roc_auc_score(labels, probs[:, 1]))
    scores = [
        float(roc_auc_score(labels == c, probs[:, c]))
        for c in range(probs.shape[1])
        if 0 < int((labels == c).sum()) < len(labels)
    ]
    return float(np.mean(scores)) if scores else math.nan


def evaluate(
    model: nn.Module,
    dataset: Dataset[Example],
    *,
    device: torch.device | None = None,
    batch_size: int = 256,
) -> dict[str, float]:
    """Return ``loss``, ``accuracy``, ``roc_auc`` and ``num_examples`` on ``dataset``."""
    device = device or select_device()
    model.to(device)
    logits, labels = _collect(model, dataset, device, batch_size)
    if labels.numel() == 0:
        return {"loss": math.nan, "accuracy": math.nan, "roc_auc": math.nan, "num_examples": 0.0}
    probs = torch.softmax(logits, dim=-1).numpy()
    return {
        "loss": float(F.cross_entropy(logits, labels)),
        "accuracy": float((logits.argmax(dim=-1) == labels).float().mean()),
        "roc_auc": roc_auc(labels.numpy(), probs),
        "num_examples": float(labels.numel()),
    }


@torch.no_grad()
def predict_proba(
    model: nn.Module,
    inputs: dict[str, torch.Tensor],
    device: torch.device | None = None,
    batch_size: int = 1024,
) -> np.ndarray:
    """Class probabilities ``[N, num_classes]`` (float32) for a dict of full input tensors."""
    device = device or select_device()
    model.to(device)
    was_training = model.training
    model.eval()
    n = next(iter(inputs.values())).shape[0]
    chunks = []
    for start in range(0, n, batch_size):
        batch = {k: v[start : start + batch_size] for k, v in inputs.items()}
        # No autograd graph: a SHAP audit calls this with ~60,000 rows per explained row.
        with autocast_context(device), torch.no_grad():
            logits = logits_of(model(**move_inputs(batch, device)))
        chunks.append(torch.softmax(logits.float(), dim=-1).cpu())
    model.train(was_training)
    return torch.cat(chunks).numpy() if chunks else np.zeros((0, 0), dtype=np.float32)
