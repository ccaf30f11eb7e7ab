"""An independent official-style SGRAF/VSL evaluation, used to check our adapter numerically.

It follows the official eval_single.py algorithm step by step and shares no model code with
methods.vsl: it reads the three raw state dicts of an official container by their official key names,
encodes the test set in batches of 100 *captions* (each image encoded once per caption), sorts each
batch by caption length and packs the GRU input as the official collate does, stores the embeddings
in float64 numpy buffers by caption index, keeps every 5th image row, and fills the matrix shard by
shard (100 x 100), converting each shard to float32 and scoring it one caption at a time against all
images of the shard (the official forward_sim loop). Batch-norm layers are applied in eval mode from
their running statistics, written out by hand.

The bench (bench/scoring_vsl.py) imports `forward_sim` and `shard_scores` from here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

pytestmark = pytest.mark.usefixtures("one_thread")


def _l2(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    return torch.div(x, torch.pow(x, 2).sum(dim=dim, keepdim=True).sqrt() + 1e-8)


def _l1(x: torch.Tensor, dim: int) -> torch.Tensor:
    return torch.div(x, torch.abs(x).sum(dim=dim, keepdim=True) + 1e-8)


def _lin(sd: Mapping[str, torch.Tensor], name: str, x: torch.Tensor) -> torch.Tensor:
    return F.linear(x, sd[f"{name}.weight"], sd[f"{name}.bias"])


def _bn_eval(sd: Mapping[str, torch.Tensor], name: str, x: torch.Tensor, channel_dim: int) -> torch.Tensor:
    shape = [1] * x.dim()
    shape[channel_dim] = -1
    mean, var = sd[f"{name}.running_mean"].view(shape), sd[f"{name}.running_var"].view(shape)
    w, b = sd[f"{name}.weight"].view(shape), sd[f"{name}.bias"].view(shape)
    return (x - mean) / torch.sqrt(var + 1e-5) * w + b


def _opt(container: Mapping[str, Any]) -> dict[str, Any]:
    opt = container["opt"]
    return dict(vars(opt)) if not isinstance(opt, Mapping) else dict(opt)


def forward_sim(sim: Mapping[str, torch.Tensor], module: str, img_emb: torch.Tensor, cap_emb: torch.Tensor,
                cap_lens: Sequence[int]) -> torch.Tensor:
    """The official EncoderSimilarity.forward in eval mode: a Python loop over captions."""
    n_image = img_emb.size(0)
    img_ave = torch.mean(img_emb, 1)
    l_emb = torch.tanh(_bn_eval(sim, "v_global_w.embedding_local.1",
                                _lin(sim, "v_global_w.embedding_local.0", img_emb), 1))
    g_emb = torch.tanh(_bn_eval(sim, "v_global_w.embedding_global.1",
                                _lin(sim, "v_global_w.embedding_global.0", img_ave), 1))
    g_emb = g_emb.unsqueeze(1).repeat(1, l_emb.size(1), 1)
    weights = torch.softmax(_lin(sim, "v_global_w.embedding_common.0", l_emb.mul(g_emb)).squeeze(2), dim=1)
    img_glo = _l2((weights.unsqueeze(2) * img_emb).sum(dim=1))
    out = []
    for i in range(cap_emb.size(0)):
        n_word = int(cap_lens[i])
        cap_i = cap_emb[i, :n_word, :].unsqueeze(0)
        cap_i_expand = cap_i.repeat(n_image, 1, 1)
        cap_ave_i = torch.mean(cap_i, 1)
        tl = torch.tanh(_lin(sim, "t_global_w.embedding_local.0", cap_i))
        tg = torch.tanh(_lin(sim, "t_global_w.embedding_global.0", cap_ave_i)).unsqueeze(1).repeat(1, n_word, 1)
        tw = torch.softmax(_lin(sim, "t_global_w.embedding_common.0", tl.mul(tg)).squeeze(2), dim=1)
        cap_glo_i = _l2((tw.unsqueeze(2) * cap_i).sum(dim=1))
        # SCAN attention, query = words, context = regions
        attn = torch.bmm(img_emb, torch.transpose(cap_i_expand, 1, 2))
        attn = _l2(nn.LeakyReLU(0.1)(attn), 2)
        attn = F.softmax(torch.transpose(attn, 1, 2).contiguous() * 9.0, dim=2)
        context = torch.bmm(torch.transpose(img_emb, 1, 2), torch.transpose(attn, 1, 2).contiguous())
        context = _l2(torch.transpose(context, 1, 2), -1)
        sim_loc = _l2(_lin(sim, "sim_tranloc_w", torch.pow(torch.sub(context, cap_i_expand), 2)), -1)
        sim_glo = _l2(_lin(sim, "sim_tranglo_w", torch.pow(torch.sub(img_glo, cap_glo_i), 2)), -1)
        sim_emb = torch.cat([sim_glo.unsqueeze(1), sim_loc], 1)
        if module == "SGR":
            step = 0
            while f"SGR_module.{step}.graph_query_w.weight" in sim:
                p = f"SGR_module.{step}"
                q = _lin(sim, f"{p}.graph_query_w", sim_emb)
                k = _lin(sim, f"{p}.graph_key_w", sim_emb)
                edge = torch.softmax(torch.bmm(q, k.permute(0, 2, 1)), dim=-1)
                sim_emb = torch.relu(_lin(sim, f"{p}.sim_graph_w", torch.bmm(edge, sim_emb)))
                step += 1
            sim_vec = sim_emb[:, 0, :]
        else:
            a = _lin(sim, "SAF_module.attn_sim_w", sim_emb).permute(0, 2, 1)
            a = _l1(torch.sigmoid(_bn_eval(sim, "SAF_module.bn", a, 1)), -1)
            sim_vec = _l2(torch.matmul(a, sim_emb).squeeze(1), -1)
        out.append(torch.sigmoid(_lin(sim, "sim_eval_w", sim_vec)))
    return torch.cat(out, 1)


def shard_scores(sim: Mapping[str, torch.Tensor], module: str, img_embs: np.ndarray, cap_embs: np.ndarray,
                 cap_lens: Sequence[int], shard_size: int = 100) -> np.ndarray:
    """The official shard_attn_scores: float64 buffers, float32 shards, one forward_sim per shard."""
    n_im_shard = (len(img_embs) - 1) // shard_size + 1
    n_cap_shard = (len(cap_embs) - 1) // shard_size + 1
    sims = np.zeros((len(img_embs), len(cap_embs)))
    for i in range(n_im_shard):
        a, b = shard_size * i, min(shard_size * (i + 1), len(img_embs))
        for j in range(n_cap_shard):
            c, d = shard_size * j, min(shard_size * (j + 1), len(cap_embs))
            with torch.no_grad():
                im = torch.from_numpy(img_embs[a:b]).float()
                ca = torch.from_numpy(cap_embs[c:d]).float()
                sims[a:b, c:d] = forward_sim(sim, module, im, ca, cap_lens[c:d]).numpy()
    return sims


def encode_data(container: Mapping[str, Any], images: np.ndarray, captions: Sequence[Sequence[int]],
                batch_size: int = 100) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """The official encode_data over a loader of (image j // 5, caption j) items, unshuffled."""
    opt = _opt(container)
    img_sd, txt_sd, _ = container["model"]
    embed = nn.Embedding.from_pretrained(txt_sd["embed.weight"])
    bi = "cap_rnn.weight_ih_l0_reverse" in txt_sd
    hidden = txt_sd["cap_rnn.weight_hh_l0"].shape[1]
    layers = sum(1 for k in txt_sd if k.startswith("cap_rnn.weight_ih_l") and not k.endswith("_reverse"))
    gru = nn.GRU(embed.embedding_dim, hidden, layers, batch_first=True, bidirectional=bi)
    gru.load_state_dict({k[len("cap_rnn."):]: v for k, v in txt_sd.items() if k.startswith("cap_rnn.")})
    gru.eval()
    n = len(captions)
    lens_all = [len(c) for c in captions]
    max_n_word = max(lens_all)
    img_embs = cap_embs = None
    cap_lens = [0] * n
    for start in range(0, n, batch_size):
        items = [(images[j // 5], captions[j], j) for j in range(start, min(n, start + batch_size))]
        items.sort(key=lambda x: len(x[1]), reverse=True)
        ims = torch.stack([torch.Tensor(np.asarray(x[0])) for x in items])
        lengths = [len(x[1]) for x in items]
        targets = torch.zeros(len(items), max(lengths)).long()
        for r, x in enumerate(items):
            targets[r, :lengths[r]] = torch.tensor(x[1])
        with torch.no_grad():
            img_emb = F.linear(ims, img_sd["fc.weight"], img_sd["fc.bias"])
            if not opt.get("no_imgnorm", False):
                img_emb = _l2(img_emb)
            packed = pack_padded_sequence(embed(targets), lengths, batch_first=True)
            out, _ = gru(packed)
            cap_emb, _ = pad_packed_sequence(out, batch_first=True)
            if bi:
                half = cap_emb.size(2) // 2
                cap_emb = (cap_emb[:, :, :half] + cap_emb[:, :, half:]) / 2
            if not opt.get("no_txtnorm", False):
                cap_emb = _l2(cap_emb)
        if img_embs is None:
            img_embs = np.zeros((n, img_emb.size(1), img_emb.size(2)))
            cap_embs = np.zeros((n, max_n_word, cap_emb.size(2)))
        ids = [x[2] for x in items]
        img_embs[ids] = img_emb.numpy().copy()
        cap_embs[ids, :max(lengths), :] = cap_emb.numpy().copy()
        for r, nid in enumerate(ids):
            cap_lens[nid] = lengths[r]
    return img_embs, cap_embs, cap_lens


def official_similarity(container: Mapping[str, Any], images: np.ndarray, captions: Sequence[Sequence[int]],
                        shard_size: int = 100) -> np.ndarray:
    """(N, 5N) float64 matrix of evalrank(fold5=False) for N images and their 5N caption id lists."""
    module = _opt(container)["module_name"]
    img_embs, cap_embs, cap_lens = encode_data(container, images, captions)
    img_embs = np.array([img_embs[i] for i in range(0, len(img_embs), 5)])
    return shard_scores(container["model"][2], module, img_embs, cap_embs, cap_lens, shard_size)


# ---- a check of the reference itself ---------------------------------------------------------------

def test_forward_sim_scores_each_pair_independently_of_its_shard():
    """The per-caption loop gives a pair the same score whatever else is in the shard (eval mode)."""
    from methods.vsl.adapter import VSLAdapter

    torch.manual_seed(0)
    for variant in ("sgr", "saf"):
        adapter = VSLAdapter.build(variant, "f30k", dict(embed_size=32, sim_dim=16, img_dim=24, word_dim=8))
        sim = adapter.model.sim_enc.state_dict()
        module = variant.upper()
        img = _l2(torch.randn(5, 36, 32))
        cap = _l2(torch.randn(4, 7, 32))
        lens = [7, 3, 5, 1]
        cap[1, 3:] = 0
        cap[2, 5:] = 0
        cap[3, 1:] = 0
        full = forward_sim(sim, module, img, cap, lens)
        for i in range(5):
            for j in range(4):
                one = forward_sim(sim, module, img[i:i + 1], cap[j:j + 1, :lens[j]], [lens[j]])
                assert abs(float(one) - float(full[i, j])) < 1e-6
