"""Build a model by name: a built-in, a local Hugging Face directory or a user factory."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

from torch import nn

HF_PREFIX = "hf:"


def _tabular_mlp(**config: Any) -> nn.Module:
    from models.tabular import TabularMLP

    return TabularMLP(**config)


def _image_cnn(**config: Any) -> nn.Module:
    from models.image import ImageCNN

    return ImageCNN(**config)


def _text_transformer(**config: Any) -> nn.Module:
    from models.text import TextTransformer

    return TextTransformer(**config)


def _audio_encoder(**config: Any) -> nn.Module:
    from models.audio import AudioEncoder

    return AudioEncoder(**config)


def _multimodal(**config: Any) -> nn.Module:
    from models.multimodal import MultimodalClassifier

    return MultimodalClassifier(**config)


# Imports are deferred so that building the MLP does not pay for the other modules.
_BUILTINS: dict[str, Callable[..., nn.Module]] = {
    "tabular_mlp": _tabular_mlp,
    "image_cnn": _image_cnn,
    "text_transformer": _text_transformer,
    "audio_encoder": _audio_encoder,
    "multimodal": _multimodal,
}


def available_models() -> list[str]:
    """Names of the built-in models, sorted."""
    return sorted(_BUILTINS)


def build_model(name: str, /, *, trusted_specs: Collection[str] = (), **config: Any) -> nn.Module:
    """Build a model whose forward takes keyword tensors and returns logits.

    Specs that import code (``hf:``, ``module:factory``) are built only when listed in
    ``trusted_specs``: a run's model name comes from the coordinator, and a site's own
    configuration, not the run, decides what code it executes.

    Parameters
    ----------
    name
        One of :func:`available_models`; ``"hf:/path/to/dir"`` for a Hugging Face
        sequence classifier saved in a local directory (never downloaded: sites are
        often offline); or ``"package.module:factory"`` for a user's own
        ``factory(**config) -> nn.Module``, so existing PyTorch code plugs in unchanged.
    trusted_specs
        The code-importing specs the site itself listed (its policy's extra specs).
    **config
        Keyword arguments passed to the model's constructor or factory.

    Raises
    ------
    ValueError
        If the name is unknown or not trusted, the directory does not exist, the config
        asks Hugging Face to run the directory's code, or the factory does not return an
        ``nn.Module``.
    """
    imports_code = name not in _BUILTINS and (name.startswith(HF_PREFIX) or ":" in name)
    if imports_code and name not in trusted_specs:
        raise ValueError(
            f"model {name!r} imports code and this site did not list it as trusted "
            "(`cohort client run --allow-model SPEC`)"
        )
    if name.startswith(HF_PREFIX):
        return _load_hf(name[len(HF_PREFIX) :], **config)
    if name in _BUILTINS:
        return _BUILTINS[name](**config)
    if ":" in name:
        return _call_factory(name, **config)
    raise ValueError(
        f"unknown model {name!r}; available: {', '.join(available_models())}, "
        "or 'hf:/local/dir', or 'package.module:factory'"
    )


def _load_hf(directory: str, **config: Any) -> nn.Module:
    from transformers import AutoModelForSequenceClassification

    path = Path(directory).expanduser()
    if not (path / "config.json").is_file():
        raise ValueError(
            f"no Hugging Face model at {str(path)!r}: expected a directory with config.json "
            "(save one with model.save_pretrained(dir); models are never downloaded)"
        )
    # The config comes from the run: it must not turn on the directory's own Python code.
    if config.get("trust_remote_code"):
        raise ValueError("trust_remote_code is never honoured from a run's model_config")
    config = {k: v for k, v in config.items() if k != "trust_remote_code"}
    model: nn.Module = AutoModelForSequenceClassification.from_pretrained(
        str(path), local_files_only=True, trust_remote_code=False, **config
    )
    return model


def _call_factory(spec: str, **config: Any) -> nn.Module:
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import module {module_name!r} for model {spec!r}: {exc}") from exc
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ValueError(f"{module_name!r} has no callable {attr!r} (model {spec!r})")
    model = factory(**config)
    if not isinstance(model, nn.Module):
        raise ValueError(f"factory {spec!r} returned {type(model).__name__}, not a torch nn.Module")
    return model
