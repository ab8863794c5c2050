"""Adapt a Cohort torch model, called as ``model(**inputs)``, to shap's GradientExplainer.

GradientExplainer calls ``model(*tensors)`` with interpolations between an explained row
and background rows, and differentiates each output class with respect to those tensors.
Two things stand in the way: Cohort models take keyword inputs, and token ids are integers
that can be neither interpolated nor differentiated. :class:`ProbabilityModel` solves both:
it takes the explained tensors positionally, feeds each token input's *embedding output*
in place of the lookup (through a forward hook), holds every other input at the explained
row's value, and returns class probabilities so that attributions are in probability
units, like the tabular audit's.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class ExplainedInput:
    """One tensor GradientExplainer varies: a float input, or a token input's embedding."""

    key: str
    embedding: nn.Module | None = None


def probabilities(output: Any) -> Tensor:
    """Class probabilities from a model output: logits, a ``.logits`` object or a tuple.

    A single logit is read as a binary classifier and expanded to ``[1 - p, p]``.
    """
    if isinstance(output, Tensor):
        logits = output
    elif isinstance(getattr(output, "logits", None), Tensor):
        logits = output.logits
    elif isinstance(output, tuple | list) and output and isinstance(output[0], Tensor):
        logits = output[0]
    else:
        raise TypeError(f"model returned {type(output).__name__}; expected logits or .logits")
    if logits.ndim != 2:
        raise ValueError(f"model must return logits [B, classes], got shape {tuple(logits.shape)}")
    if logits.shape[1] == 1:
        positive = torch.sigmoid(logits)
        return torch.cat([1 - positive, positive], dim=1)
    return torch.softmax(logits, dim=1)


def find_token_embeddings(
    model: nn.Module, inputs: Mapping[str, Tensor], keys: Sequence[str], *, strict: bool = True
) -> dict[str, nn.Module]:
    """Find, for each integer input in ``keys``, the ``nn.Embedding`` that looks it up.

    The model is run once with hooks on every embedding; the one whose input equals the
    token tensor is the one. Matching by value rather than by attribute name works for any
    architecture and is not fooled by position embeddings, which see ``arange`` instead.

    Raises
    ------
    ValueError
        When ``strict`` and no embedding looks up one of the inputs (without ``strict``
        such inputs are left out of the result).
    """
    seen: list[tuple[nn.Module, Tensor]] = []
    handles = [
        module.register_forward_hook(lambda mod, args, out: seen.append((mod, args[0])))
        for module in model.modules()
        if isinstance(module, nn.Embedding)
    ]
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        for handle in handles:
            handle.remove()
    found: dict[str, nn.Module] = {}
    for key in keys:
        tokens = inputs[key]
        for module, looked_up in seen:
            if looked_up.shape == tokens.shape and torch.equal(looked_up.long(), tokens.long()):
                found[key] = module
                break
        else:
            if not strict:
                continue
            raise ValueError(
                f"no nn.Embedding of the model looks up input {key!r}; "
                "pass embeddings={key: module} to name the layer whose output to explain"
            )
    return found


def embedding_outputs(
    model: nn.Module, inputs: Mapping[str, Tensor], embeddings: Mapping[str, nn.Module]
) -> dict[str, Tensor]:
    """Run the model once and capture each named embedding's output (detached)."""
    captured: dict[str, Tensor] = {}
    handles = []
    for key, module in embeddings.items():

        def keep(mod: nn.Module, args: Any, out: Tensor, key: str = key) -> None:
            captured.setdefault(key, out.detach().clone())

        handles.append(module.register_forward_hook(keep))
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        for handle in handles:
            handle.remove()
    return captured


class ProbabilityModel(nn.Module):
    """``forward(*explained) -> probabilities``, with the other inputs held at one row.

    Parameters
    ----------
    model
        The Cohort model, called as ``model(**inputs)``.
    explained
        The tensors GradientExplainer varies, in positional order.
    """

    def __init__(self, model: nn.Module, explained: Sequence[ExplainedInput]) -> None:
        super().__init__()
        self.model = model
        self.explained = list(explained)
        self._row: dict[str, Tensor] = {}

    def hold(self, row: Mapping[str, Tensor]) -> None:
        """Set the one-row inputs to use for everything GradientExplainer does not vary.

        That is every non-explained input, plus the token ids behind an explained
        embedding (the model may derive a padding mask from them).
        """
        self._row = {key: value[:1] for key, value in row.items()}

    def forward(self, *tensors: Tensor) -> Tensor:
        batch = tensors[0].shape[0]
        kwargs = {k: v.expand(batch, *v.shape[1:]) for k, v in self._row.items()}
        handles = []
        try:
            for slot, tensor in zip(self.explained, tensors, strict=True):
                if slot.embedding is None:
                    kwargs[slot.key] = tensor
                else:
                    # Returning a value from a forward hook replaces the module's output.
                    handles.append(
                        slot.embedding.register_forward_hook(lambda m, a, o, t=tensor: t)
                    )
            return probabilities(self.model(**kwargs))
        finally:
            for handle in handles:
                handle.remove()


@contextmanager
def frozen_for_audit(model: nn.Module) -> Iterator[None]:
    """Eval mode and no parameter gradients during the audit; restore both afterwards.

    Expected gradients only need gradients with respect to the inputs; leaving parameter
    gradients on would waste time and leave ``.grad`` set on the caller's model.
    """
    was_training = model.training
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    for param, _ in flags:
        param.requires_grad_(False)
    try:
        yield
    finally:
        for param, flag in flags:
            param.requires_grad_(flag)
        model.train(was_training)
