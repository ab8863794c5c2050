"""The model names a run may use, known without importing torch (the coordinator never does).

A run names either a built-in of ``models.registry`` (this list is kept equal to it by a
test) or ``site:SPEC``: a model the sites provide themselves (``module:factory`` or
``hf:/dir`` at the site), which a site builds only when its own policy lists it. A bare
``module:factory`` or ``hf:`` name is refused: the coordinator must never be the one to
decide that a site imports and calls code (issue 11, item 1; issue 10, item 5).
"""

from __future__ import annotations

REGISTRY_MODELS: tuple[str, ...] = (
    "audio_encoder",
    "image_cnn",
    "multimodal",
    "tabular_mlp",
    "text_transformer",
)
SITE_PREFIX = "site:"


def check_run_model(name: str) -> None:
    """Raise ValueError with a sentence unless ``name`` is a model sites know how to build."""
    if name in REGISTRY_MODELS:
        return
    if name.startswith(SITE_PREFIX):
        if not name[len(SITE_PREFIX) :].strip():
            raise ValueError("a site-provided model names its spec: site:NAME")
        return
    known = ", ".join(REGISTRY_MODELS)
    if ":" in name:
        raise ValueError(
            f"model {name!r} is code the sites would import; name it site:{name} so that only "
            "sites whose own policy lists it build it"
        )
    raise ValueError(
        f"unknown model {name!r}: use a built-in ({known}) or site:NAME for a model the sites "
        "provide"
    )
