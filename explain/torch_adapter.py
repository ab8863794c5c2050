"""Adapt a Cohort torch model, called as ``model(**inputs)``, to shap's GradientExplainer.

GradientExplainer calls ``model(*tensors)`` with interpolations between an explained row
and background rows, and differentiates each output class with respect to those tensors.
Two things stand in the way: Cohort models take keyword inputs, and token ids are integers
that can be neither interpolated nor differentiated. :class:`ProbabilityModel` solves both:
it takes the explained tensors positionally, feeds each token input's *embedding output*
in place of the lookup (through a forward hook), holds every other input at the explained
row's value, and returns class probabilities so that attributions are in probability
units, like the tabular audit's.

The tabular audit needs the opposite: no gradients, but tens of thousands of model rows
per explained row. :func:`tabular_predictor` gives it the cheapest exact forward pass
(eval-mode batch norm folded into the adjacent ``Linear``, dropout dropped, inference
mode, float32) and :func:`torch_threads` the thread count that measured fastest.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

# Folded and unfolded outputs differ by float32 rounding only (about 1e-7 on probabilities);
# anything larger means the model does not run its Sequentials front to back.
FOLD_TOLERANCE = 1e-5

_THREADS_LOCK = threading.Lock()


@dataclass(frozen=True)
class ExplainedInput:
    """One tensor GradientExplainer varies: a float input, or a token input's embedding."""

    key: str
    embedding: nn.Module | None = None


def probabilities(output: Any) -> Tensor:
    """Class probabilities from a model output: logits, a ``.logits`` object or a tuple.

    A single logit is read as a binary classifier and expanded to ``[1 - p, p]``.
    """
    logits = _logits(output)
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


def tabular_predictor(
    model: nn.Module, check_rows: np.ndarray
) -> Callable[[np.ndarray], np.ndarray]:
    """``[N, F] -> [N, C]`` class probabilities of ``model(x)``, as cheap as exactly possible.

    The permutation audit evaluates about ``max_evals x background`` rows per explained
    row, so its time is this call's. The model is copied (the caller's is untouched) into
    eval mode with :func:`folded_for_inference`, and run under ``torch.inference_mode`` on
    float32 rows without the chunking of ``models.predict_proba``. The folded copy is
    checked against the unfolded one on ``check_rows``; a model that calls its layers in
    another order than its ``nn.Sequential`` lists them fails the check and is run
    unfolded. The output is ``softmax(logits)``, as ``models.predict_proba`` gives.
    """
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    plain = copy.deepcopy(model).eval()
    folded = folded_for_inference(copy.deepcopy(plain))  # folds in place

    def forward(module: nn.Module) -> Callable[[np.ndarray], np.ndarray]:
        def predict(x: np.ndarray) -> np.ndarray:
            batch = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(device)
            with torch.inference_mode():
                return torch.softmax(_logits(module(batch)).float(), dim=1).cpu().numpy()

        return predict

    fast, slow = forward(folded), forward(plain)
    try:
        agrees = np.abs(fast(check_rows) - slow(check_rows)).max() <= FOLD_TOLERANCE
    # A layer reached by an index that moved, or by a name folding removed.
    except (RuntimeError, IndexError, TypeError, AttributeError, KeyError):
        agrees = False
    return fast if agrees else slow


def folded_for_inference(model: nn.Module) -> nn.Module:
    """``model`` (a copy, in eval mode), its ``nn.Sequential`` layers simplified in place.

    In every ``nn.Sequential``: a ``BatchNorm1d`` with running statistics next to a
    ``Linear`` (either order) becomes one ``Linear`` and ``Dropout`` (the identity in eval
    mode) is removed. Eval-mode batch norm is the affine map ``x * s + t``, so folding it
    into the ``Linear`` changes results by float rounding only; the tabular MLP's input
    normaliser costs a full pass over every row otherwise.
    """
    for module in list(model.modules()):
        if isinstance(module, nn.Sequential):
            layers = _folded_layers([m for m in module if not isinstance(m, nn.Dropout)])
            for name in list(module._modules):
                del module._modules[name]
            for i, layer in enumerate(layers):
                module.add_module(str(i), layer)
    return model


def _folded_layers(layers: list[nn.Module]) -> list[nn.Module]:
    out: list[nn.Module] = []
    for layer in layers:
        last = out[-1] if out else None
        if (
            isinstance(layer, nn.Linear)
            and isinstance(last, nn.BatchNorm1d)
            and _foldable(last)
            and last.num_features == layer.in_features
        ):
            out[-1] = _fused(layer, *_affine(last), norm_first=True)
        elif (
            isinstance(layer, nn.BatchNorm1d)
            and _foldable(layer)
            and isinstance(last, nn.Linear)
            and last.out_features == layer.num_features
        ):
            out[-1] = _fused(last, *_affine(layer), norm_first=False)
        else:
            out.append(layer)
    return out


def _foldable(norm: nn.BatchNorm1d) -> bool:
    # Without running statistics eval-mode batch norm uses the batch's own: not affine.
    return not norm.training and norm.running_mean is not None and norm.running_var is not None


def _affine(norm: nn.BatchNorm1d) -> tuple[Tensor, Tensor]:
    """Eval-mode batch norm as ``x * scale + shift`` (float64, per feature)."""
    assert norm.running_mean is not None and norm.running_var is not None  # _foldable
    scale = (norm.running_var.double() + norm.eps).rsqrt()
    shift = -norm.running_mean.double() * scale
    if norm.affine:
        shift = shift * norm.weight.double() + norm.bias.double()
        scale = scale * norm.weight.double()
    return scale, shift


def _fused(linear: nn.Linear, scale: Tensor, shift: Tensor, *, norm_first: bool) -> nn.Linear:
    """One ``Linear`` for ``linear(x * scale + shift)`` or ``linear(x) * scale + shift``.

    ``W (x s + t) + b = (W s) x + (W t + b)``; ``(W x + b) s + t = (s W) x + (b s + t)``.
    """
    weight = linear.weight.double()
    bias = linear.bias.double() if linear.bias is not None else weight.new_zeros(weight.shape[0])
    if norm_first:
        weight, bias = weight * scale, weight @ shift + bias
    else:
        weight, bias = scale[:, None] * weight, bias * scale + shift
    fused = nn.Linear(
        linear.in_features,
        linear.out_features,
        device=linear.weight.device,
        dtype=linear.weight.dtype,
    )
    with torch.no_grad():
        fused.weight.copy_(weight)
        fused.bias.copy_(bias)
    return fused.eval()


def _logits(output: Any) -> Tensor:
    if isinstance(output, Tensor):
        return output
    if isinstance(getattr(output, "logits", None), Tensor):
        return output.logits
    if isinstance(output, tuple | list) and output and isinstance(output[0], Tensor):
        return output[0]
    raise TypeError(f"model returned {type(output).__name__}; expected logits or .logits")


@contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """Run torch with ``count`` intra-op threads inside the block (``None``: leave as is).

    On a shared two-core machine a small model's batches spend most of their wall time
    in torch's worker threads waiting for each other at every operation once a core is
    taken by someone else: 20 rows of the tabular audit took 81 s with two threads and
    4.2 s with one at load 13-18 (9x for the whole audit at load 7, ``bench/audit.py``).
    The setting is process-wide, so audits take turns under a lock and the caller's
    count is restored afterwards.
    """
    if count is None:
        yield
        return
    if count < 1:
        raise ValueError(f"torch threads must be >= 1, got {count}")
    with _THREADS_LOCK:
        previous = torch.get_num_threads()
        torch.set_num_threads(count)
        try:
            yield
        finally:
            torch.set_num_threads(previous)
