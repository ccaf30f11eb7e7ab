"""An independent official-style ESA evaluation, used to check our adapter numerically.

It follows the official evaluation algorithm step by step and shares no model code with
methods.esa: it rebuilds both encoders from the raw state dicts of an official container (official
key names, `module.` stripped as DataParallel would), walks the test set *per caption* so every
image is encoded once per caption (5 times), sorts/packs the GRU input the way the official code
does, writes embeddings into float64 numpy arrays by caption index, keeps every 5th image row and
takes np.matmul(images, captions.T).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

ASSETS = Path(__file__).resolve().parents[1] / "harness" / "assets" / "vocab"


def _plain(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if all(k.startswith("module.") for k in state):
        return {k[len("module."):]: v for k, v in state.items()}
    return dict(state)


def _linear(state: Mapping[str, torch.Tensor], name: str) -> nn.Linear:
    w = state[f"{name}.weight"]
    layer = nn.Linear(w.shape[1], w.shape[0])
    layer.load_state_dict({"weight": w, "bias": state[f"{name}.bias"]})
    return layer


def _l2(x: torch.Tensor) -> torch.Tensor:
    return x / (torch.pow(x, 2).sum(dim=-1, keepdim=True).sqrt() + 1e-8)


def _valid(lengths: torch.Tensor, width: int) -> torch.Tensor:
    return (torch.arange(width).expand(lengths.size(0), width) < lengths.long().unsqueeze(1)).unsqueeze(-1)


def _channel_attention_pool(feats: torch.Tensor, logits: torch.Tensor, valid: torch.Tensor | None):
    if valid is not None:
        logits = logits.masked_fill(valid == 0, -10000)
    attn = nn.Softmax(dim=1)(logits - torch.max(logits, dim=1)[0].unsqueeze(1))
    if valid is not None:
        attn = attn.masked_fill(valid == 0, 0)
    return torch.sum(attn * feats, dim=1)


class RefImageEncoder(nn.Module):
    def __init__(self, state: Mapping[str, torch.Tensor]) -> None:
        super().__init__()
        s = _plain(state)
        self.fc = _linear(s, "fc")
        self.l0, self.l1 = _linear(s, "mlp.layers.0"), _linear(s, "mlp.layers.1")
        self.bn0 = nn.BatchNorm1d(s["mlp.bns.0.weight"].shape[0])
        bn0 = "mlp.bns.0."
        self.bn0.load_state_dict({k[len(bn0):]: v for k, v in s.items() if k.startswith(bn0)})
        self.linear1 = _linear(s, "linear1")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        b, n, d = images.shape
        h = F.relu(self.bn0(self.l0(images.reshape(b * n, d))))
        feats = self.fc(images) + self.l1(h).view(b, n, -1)
        return _l2(_channel_attention_pool(feats, self.linear1(feats), None))


class RefBiGRUText(nn.Module):
    def __init__(self, state: Mapping[str, torch.Tensor]) -> None:
        super().__init__()
        s = _plain(state)
        vocab_size, word_dim = s["embed.weight"].shape
        hidden = s["rnn.weight_hh_l0"].shape[1]
        self.embed = nn.Embedding(vocab_size, word_dim)
        self.rnn = nn.GRU(word_dim, hidden, 1, batch_first=True, bidirectional=True)
        self.linear1 = _linear(s, "linear1")
        self.embed.load_state_dict({"weight": s["embed.weight"]})
        self.rnn.load_state_dict({k[len("rnn."):]: v for k, v in s.items() if k.startswith("rnn.")})

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        emb = self.embed(x)
        lengths = lengths.clamp(min=1)
        sorted_lengths, order = torch.sort(lengths, descending=True)
        _, unorder = torch.sort(order, descending=False)
        packed = pack_padded_sequence(emb[order], sorted_lengths.cpu(), batch_first=True, enforce_sorted=True)
        out, _ = self.rnn(packed)
        out, _ = pad_packed_sequence(out, batch_first=True)
        out = out[unorder]
        out = (out[:, :, : out.size(2) // 2] + out[:, :, out.size(2) // 2:]) / 2
        width = int(lengths.max())
        valid = _valid(lengths, width)
        out = out[:, :width, :]
        return _l2(_channel_attention_pool(out, self.linear1(out), valid))


class RefBertText(nn.Module):
    def __init__(self, state: Mapping[str, torch.Tensor], config: dict) -> None:
        super().__init__()
        from transformers import BertConfig, BertModel

        s = _plain(state)
        cfg = BertConfig(**config)
        cfg._attn_implementation = "eager"
        self.bert = BertModel(cfg)
        bert_state = {k[len("bert."):]: v for k, v in s.items() if k.startswith("bert.")}
        bert_state.pop("embeddings.position_ids", None)
        self.bert.load_state_dict(bert_state, strict=True)
        self.linear = _linear(s, "linear")
        self.linear1 = _linear(s, "linear1")

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        hidden = self.bert(x, (x != 0).float())[0]
        emb = self.linear(hidden)
        width = int(lengths.max())
        valid = _valid(lengths, width)
        emb = emb[:, :width, :]
        return _l2(_channel_attention_pool(emb, self.linear1(emb), valid))


def bigru_caption_ids(caption: str, data_name: str) -> list[int]:
    """<start> + word ids (<unk> = 3) + <end>, with the SCAN vocabulary json read directly."""
    from methods.common.vocab import scan_tokenize

    name = "coco" if "coco" in data_name else "f30k"
    word2idx = json.loads((ASSETS / f"{name}_precomp_vocab.json").read_text())["word2idx"]
    return [word2idx["<start>"]] + [word2idx.get(t, word2idx["<unk>"]) for t in scan_tokenize(caption)] + [
        word2idx["<end>"]]


def bert_caption_ids(caption: str) -> list[int]:
    """basic_tokenizer -> wordpiece_tokenizer per word -> [CLS] ... [SEP] (the official test path)."""
    from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy

    tok = BertTokenizerLegacy(str(ASSETS / "bert-base-uncased-vocab.txt"), do_lower_case=True)
    pieces = [p for w in tok.basic_tokenizer.tokenize(caption) for p in tok.wordpiece_tokenizer.tokenize(w)]
    return tok.convert_tokens_to_ids(["[CLS]", *pieces, "[SEP]"])


def official_similarity(container: Mapping, images: np.ndarray, captions: Sequence[str], *,
                        bert_config: dict | None = None, batch_size: int = 7) -> np.ndarray:
    """sims (N_img, N_cap) float64, computed as the official evalrank (non-fold5) would."""
    img_state, txt_state = container["model"]
    opt = container["opt"]
    img_enc = RefImageEncoder(img_state).eval()
    if bert_config is None:
        txt_enc = RefBiGRUText(txt_state).eval()
        tokenize = lambda c: bigru_caption_ids(c, opt.data_name)  # noqa: E731
    else:
        txt_enc = RefBertText(txt_state, bert_config).eval()
        tokenize = bert_caption_ids
    n_cap = len(captions)
    img_embs = cap_embs = None
    with torch.no_grad():
        for start in range(0, n_cap, batch_size):
            ids = list(range(start, min(start + batch_size, n_cap)))
            batch_images = torch.stack([torch.from_numpy(np.asarray(images[i // 5], np.float32)) for i in ids])
            seqs = [tokenize(captions[i]) for i in ids]
            lengths = [len(s) for s in seqs]
            targets = torch.zeros(len(seqs), max(lengths)).long()
            for r, s in enumerate(seqs):
                targets[r, : len(s)] = torch.tensor(s)
            img_emb = img_enc(batch_images)
            cap_emb = txt_enc(targets, torch.tensor(lengths, dtype=torch.float32))
            if img_embs is None:
                img_embs = np.zeros((n_cap, img_emb.size(1)))
                cap_embs = np.zeros((n_cap, cap_emb.size(1)))
            img_embs[ids] = img_emb.numpy().copy()
            cap_embs[ids, :] = cap_emb.numpy().copy()
    img_embs = np.array([img_embs[i] for i in range(0, len(img_embs), 5)])
    return np.matmul(img_embs, np.transpose(cap_embs))
