"""Offline word-level tokenizer whose vocabulary is built from local text, never downloaded."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch

PAD, UNK = "[PAD]", "[UNK]"
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?|[^\sa-z0-9]")


def split_words(text: str) -> list[str]:
    """Lower-case words, numbers and single punctuation marks."""
    return _WORD.findall(text.lower())


@dataclass(frozen=True)
class WordTokenizer:
    """Maps words to ids; id 0 is padding and id 1 stands for any unknown word.

    Every site of a federation must use the same vocabulary (the embedding rows are
    exchanged by position), so build it once from text every site may see (a public
    lexicon, the synthetic generator's word list) and ship it as JSON with the run.
    """

    vocab: tuple[str, ...]
    index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.vocab[:2] != (PAD, UNK):
            raise ValueError(f"vocabulary must start with {PAD!r}, {UNK!r}")
        object.__setattr__(self, "index", {w: i for i, w in enumerate(self.vocab)})

    @classmethod
    def fit(
        cls, texts: Iterable[str], max_vocab: int = 10_000, min_count: int = 1
    ) -> WordTokenizer:
        """Keep the ``max_vocab - 2`` most frequent words (ties broken alphabetically)."""
        counts = Counter(w for text in texts for w in split_words(text))
        ranked = sorted(
            (w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w)
        )
        return cls((PAD, UNK, *ranked[: max(max_vocab - 2, 0)]))

    @property
    def vocab_size(self) -> int:
        """Number of ids, padding and unknown included (the embedding table's row count)."""
        return len(self.vocab)

    @property
    def pad_id(self) -> int:
        """Id used for padding (0)."""
        return 0

    def encode(self, texts: list[str], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``input_ids`` and ``attention_mask`` (int64, ``[N, max_len]``), truncated."""
        ids = torch.zeros((len(texts), max_len), dtype=torch.int64)
        mask = torch.zeros((len(texts), max_len), dtype=torch.int64)
        for row, text in enumerate(texts):
            tokens = [self.index.get(w, 1) for w in split_words(text)][:max_len]
            ids[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.int64)
            mask[row, : len(tokens)] = 1
        return ids, mask

    def decode(self, ids: list[int]) -> str:
        """Words for ``ids``, padding dropped (for logs and SHAP text plots)."""
        return " ".join(self.vocab[i] for i in ids if i != 0)

    def to_json(self) -> str:
        """Serialise the vocabulary (ship it with the run config)."""
        return json.dumps({"type": "word", "vocab": list(self.vocab)})

    @classmethod
    def from_json(cls, text: str) -> WordTokenizer:
        """Inverse of :meth:`to_json`."""
        data = json.loads(text)
        if data.get("type") != "word":
            raise ValueError(f"not a word tokenizer: type={data.get('type')!r}")
        return cls(tuple(data["vocab"]))
