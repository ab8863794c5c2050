"""LoRA adapters through peft: parse a compact spec, apply it, measure what is trainable."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from models.fusion import TanhGate

# Short names people write in a spec, and what they are called in common model families.
ALIASES: dict[str, tuple[str, ...]] = {
    "q": ("q_proj", "query", "q_lin", "q"),
    "k": ("k_proj", "key", "k_lin", "k"),
    "v": ("v_proj", "value", "v_lin", "v"),
    "o": ("out_proj", "o_proj", "out_lin", "o"),
    "ff": ("fc1", "fc2", "intermediate.dense", "output.dense"),
}
_ADAPTABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Embedding)
HEAD_NAMES = ("classifier", "score")
# The down-projection A of Linear/Conv adapters and of Embedding adapters.
_A_FACTORS = ("lora_A", "lora_embedding_A")


@dataclass(frozen=True)
class LoraSpec:
    """LoRA hyper-parameters.

    Attributes
    ----------
    r
        Rank of the update ``B @ A``.
    alpha
        Scale numerator; the update is multiplied by ``alpha / r``.
    dropout
        Dropout on the adapter input.
    targets
        Module names (or aliases ``q``, ``k``, ``v``, ``o``, ``ff``) to adapt; ``None``
        picks a default for the model (attention q/v projections when there are any).
    train_head
        Keep the classifier head trainable and exchanged (peft ``modules_to_save``): a
        new task needs a new head, and it is tiny.
    freeze_a
        FFA-LoRA (Sun et al., ICLR 2024): keep every ``A`` at its seeded random
        initialisation and train only ``B``. Federated averaging of separately trained
        ``A`` and ``B`` is not the average of the products ``B @ A`` (a cross term that
        grows with the sites' disagreement); with ``A`` fixed and shared, the update
        ``B @ A`` is linear in ``B`` and FedAvg is exact.
    """

    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    targets: tuple[str, ...] | None = None
    train_head: bool = True
    freeze_a: bool = False


def parse_lora_spec(spec: str) -> LoraSpec:
    """Parse ``"r=8,alpha=16,targets=q,v,dropout=0.05,freeze_a=true"`` (items after
    ``targets=`` that have no ``=`` are further targets; ``q+v`` also works).

    Raises
    ------
    ValueError
        On an unknown key, a value of the wrong type or a bare item not after ``targets``.
    """
    values: dict[str, str] = {}
    targets: list[str] = []
    last_key = ""
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        if "=" not in item:
            if last_key != "targets":
                raise ValueError(f"lora spec item {item!r} has no '=' (spec {spec!r})")
            targets.extend(t for t in item.split("+") if t)
            continue
        key, _, value = (s.strip() for s in item.partition("="))
        last_key = key
        if key == "targets":
            targets.extend(t for t in value.split("+") if t)
        elif key in ("r", "alpha", "dropout", "train_head", "freeze_a"):
            values[key] = value
        else:
            raise ValueError(
                f"unknown lora spec key {key!r}; use r, alpha, dropout, targets, "
                "train_head, freeze_a"
            )
    try:
        r = int(values.get("r", 8))
        alpha = int(values.get("alpha", 2 * r))
        dropout = float(values.get("dropout", 0.0))
    except ValueError as exc:
        raise ValueError(f"bad number in lora spec {spec!r}: {exc}") from exc
    if r < 1 or not 0.0 <= dropout < 1.0:
        raise ValueError(f"lora spec needs r >= 1 and 0 <= dropout < 1, got {spec!r}")
    train_head = _flag(values.get("train_head", "true"), "train_head", spec)
    freeze_a = _flag(values.get("freeze_a", "false"), "freeze_a", spec)
    return LoraSpec(r, alpha, dropout, tuple(targets) or None, train_head, freeze_a)


def _flag(value: str, key: str, spec: str) -> bool:
    lowered = value.lower()
    if lowered in ("1", "true", "yes"):
        return True
    if lowered in ("0", "false", "no"):
        return False
    raise ValueError(f"lora spec {key} must be true or false, got {value!r} (spec {spec!r})")


def _leaf_names(model: nn.Module) -> dict[str, nn.Module]:
    return {name: m for name, m in model.named_modules() if isinstance(m, _ADAPTABLE)}


def resolve_targets(model: nn.Module, targets: tuple[str, ...] | None) -> list[str] | None:
    """Module names peft should adapt in ``model`` (``None``: peft's own default)."""
    leaves = _leaf_names(model)

    def present(name: str) -> bool:
        return any(full == name or full.endswith("." + name) for full in leaves)

    if targets is None:
        if present("q_proj") and present("v_proj"):
            return ["q_proj", "v_proj"]
        if _is_transformers_model(model):
            return None
        return [n for n in leaves if n.split(".")[-1] not in HEAD_NAMES]
    resolved: list[str] = []
    for target in targets:
        found = [c for c in ALIASES.get(target, ()) + (target,) if present(c)]
        if not found:
            raise ValueError(
                f"LoRA target {target!r} matches no Linear/Conv/Embedding module; "
                f"some candidates: {sorted({n.split('.')[-1] for n in leaves})[:12]}"
            )
        resolved.append(found[0])
    return resolved


def _is_transformers_model(model: nn.Module) -> bool:
    from transformers import PreTrainedModel

    return isinstance(model, PreTrainedModel)


def _trainable_extras(model: nn.Module, train_head: bool) -> list[str]:
    names = {name.split(".")[-1] for name, m in model.named_modules() if isinstance(m, TanhGate)}
    if train_head:
        names |= {
            n.split(".")[-1] for n, _ in model.named_modules() if n.split(".")[-1] in HEAD_NAMES
        }
    return sorted(names)


def apply_lora(model: nn.Module, spec: LoraSpec) -> nn.Module:
    """Freeze ``model`` and add LoRA adapters; returns the peft model.

    The classifier head (``train_head``) and any Flamingo gates are peft
    ``modules_to_save``: they stay trainable and are exchanged with the adapters.
    ``get_weights`` on the result returns only those tensors. With ``freeze_a`` every
    ``lora_A`` is declared frozen to peft, which keeps it frozen through
    ``set_adapter`` as it does for its own variants that train one factor only.
    """
    from peft import LoraConfig, TaskType, get_peft_model
    from peft.tuners.lora import LoraLayer

    is_hf = _is_transformers_model(model)
    config = LoraConfig(
        r=spec.r,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=resolve_targets(model, spec.targets),
        modules_to_save=None if is_hf else (_trainable_extras(model, spec.train_head) or None),
        task_type=TaskType.SEQ_CLS if is_hf else None,
    )
    peft_model = get_peft_model(model, config)
    if spec.freeze_a:
        for layer in peft_model.modules():
            if isinstance(layer, LoraLayer):
                frozen = tuple(n for n in _A_FACTORS if n in layer.adapter_layer_names)
                layer.frozen_peft_weight_names = {name: frozen for name in layer.active_adapters}
        # peft freezes declared weights whenever it (re)activates an adapter.
        peft_model.set_adapter(peft_model.active_adapter)
    return peft_model


def trainable_fraction(model: nn.Module) -> float:
    """Trainable parameters over all parameters (what LoRA saves in compute and traffic)."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable / total if total else 0.0
