"""Cohort's model stack: registry, local training, exchanged parameters, LoRA and INT8.

One module per job: the architectures (``tabular``, ``image``, ``audio``, ``text``,
``multimodal`` with ``attention`` and ``fusion``), ``registry`` (a model by name),
``datasets``, ``training`` and ``distributed``, ``params`` (what a site exchanges),
``lora``, ``quantize``, ``export``, ``profiling``, ``predictor`` (a loaded model for
scoring), ``batching`` (the dynamic batcher) and ``serving_http`` (the HTTP service).

It imports nothing of Cohort's (tests/test_layering.py); the sites, the CLI and
``explain`` build on it, and the coordinator only names its models (coordinator/model_names.py).
"""

from models.clinic import make_clinic_multimodal
from models.datasets import (
    DictDataset,
    TabularDataset,
    TextDataset,
    load_digits_images,
    make_audio_tones,
    make_credit_default,
)
from models.device import autocast_context, select_device
from models.lora import LoraSpec, apply_lora, parse_lora_spec, trainable_fraction
from models.params import base_model_hash, get_weights, set_weights, weight_names
from models.quantize import export_int8, load_int8
from models.registry import available_models, build_model
from models.tokenizer import WordTokenizer
from models.training import evaluate, predict_proba, train

__all__ = [
    "DictDataset",
    "LoraSpec",
    "TabularDataset",
    "TextDataset",
    "WordTokenizer",
    "apply_lora",
    "autocast_context",
    "available_models",
    "base_model_hash",
    "build_model",
    "evaluate",
    "export_int8",
    "get_weights",
    "load_digits_images",
    "load_int8",
    "make_audio_tones",
    "make_clinic_multimodal",
    "make_credit_default",
    "parse_lora_spec",
    "predict_proba",
    "select_device",
    "set_weights",
    "train",
    "trainable_fraction",
    "weight_names",
]
