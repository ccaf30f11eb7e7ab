"""Official-style references for ESL (and the encoders X-Dim shares), written from the official code's
algorithm, independent of methods/esl: they read raw state dicts of an official-layout checkpoint and
follow evalrank: every image encoded once per caption into float64 buffers, `shard_attn_scores` over
shards, and per caption a loop that recomputes the caption levels and the level products X_l D_l Y_l^T
for every image of the shard. Used by tests/test_esl.py, tests/test_xdim.py and bench/scoring_pairwise.py.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import numpy as np
import torch
import torch.nn.functional as F

TINY_BERT = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)


def l2n(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    return x / (torch.pow(x, 2).sum(dim=dim, keepdim=True).sqrt() + 1e-8)


def torch18_linspace_index(n: int) -> torch.Tensor:
    """`torch.linspace(0, n, steps=n, dtype=int)` as torch 1.8's vectorised CPU kernel computed it
    (integer base, step truncated to 1): 0..n-1."""
    return torch.arange(n)


def sub(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries under `prefix` (DataParallel `module.` removed first), prefix stripped."""
    out = {}
    for k, v in state.items():
        k = k[len("module."):] if k.startswith("module.") else k
        if k.startswith(prefix):
            out[k[len(prefix):]] = v
    return out


# ---- encoders (vse_infty EncoderImageAggr 'basic' and EncoderText) --------------------------------

def official_region_features(img_state: Mapping[str, torch.Tensor], regions: torch.Tensor) -> torch.Tensor:
    s = sub(img_state, "")
    feats = regions @ s["fc.weight"].t() + s["fc.bias"]
    flat = regions.reshape(-1, regions.shape[-1])
    h = flat @ s["mlp.layers.0.weight"].t() + s["mlp.layers.0.bias"]
    h = (h - s["mlp.bns.0.running_mean"]) / torch.sqrt(s["mlp.bns.0.running_var"] + 1e-5)
    h = torch.relu(h * s["mlp.bns.0.weight"] + s["mlp.bns.0.bias"])
    h = h @ s["mlp.layers.1.weight"].t() + s["mlp.layers.1.bias"]
    return l2n(feats + h.reshape(*regions.shape[:-1], -1))


def official_word_features(txt_state: Mapping[str, torch.Tensor], bert_config: dict, ids: torch.Tensor) -> torch.Tensor:
    from transformers import BertConfig, BertModel

    config = BertConfig(**{"vocab_size": 30522, "max_position_embeddings": 512, "type_vocab_size": 2,
                           "layer_norm_eps": 1e-12, **bert_config})
    config._attn_implementation = "eager"
    bert = BertModel(config).eval()
    bert.load_state_dict(sub(txt_state, "bert."), strict=True)
    s = sub(txt_state, "linear.")
    with torch.no_grad():
        hidden = bert(ids, (ids != 0).float())[0]
    return l2n(hidden @ s["weight"].t() + s["bias"])


def encode_data(img_state, txt_state, bert_config: dict, regions: torch.Tensor, ids: torch.Tensor,
                lengths: torch.Tensor, per_image: int = 5, batch: int = 4) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """evalrank's encode_data: per caption j its image j // per_image (so every image 5 times) and the
    caption's word features padded with zeros to the longest caption, in float64 buffers."""
    n_cap, width = ids.shape
    img_embs = None
    cap_embs = np.zeros((n_cap, width, 0))
    for a in range(0, n_cap, batch):
        idx = list(range(a, min(n_cap, a + batch)))
        with torch.no_grad():
            im = official_region_features(img_state, regions[[j // per_image for j in idx]])
            w = int(lengths[idx].max())
            cap = official_word_features(txt_state, bert_config, ids[idx, :w])
        if img_embs is None:
            img_embs = np.zeros((n_cap, im.shape[1], im.shape[2]))
            cap_embs = np.zeros((n_cap, width, cap.shape[2]))
        img_embs[idx] = im.numpy()
        cap_embs[idx, :w] = cap.numpy()
    return img_embs, cap_embs, lengths.numpy()


def shard_attn_scores(forward_sim: Callable, img_embs: np.ndarray, cap_embs: np.ndarray, cap_lens: np.ndarray,
                      shard_size: int) -> np.ndarray:
    n_im = (len(img_embs) - 1) // shard_size + 1
    n_ca = (len(cap_embs) - 1) // shard_size + 1
    sims = np.zeros((len(img_embs), len(cap_embs)))
    for i in range(n_im):
        a, b = shard_size * i, min(shard_size * (i + 1), len(img_embs))
        for j in range(n_ca):
            c, d = shard_size * j, min(shard_size * (j + 1), len(cap_embs))
            with torch.no_grad():
                im = torch.from_numpy(img_embs[a:b]).float()
                ca = torch.from_numpy(cap_embs[c:d]).float()
                sims[a:b, c:d] = forward_sim(im, ca, cap_lens[c:d]).numpy()
    return sims


def official_style_matrix(forward_sim: Callable, img_state, txt_state, bert_config: dict, regions, ids, lengths,
                          shard_size: int = 3) -> np.ndarray:
    img_embs, cap_embs, cap_lens = encode_data(img_state, txt_state, bert_config, regions, ids, lengths)
    img_embs = np.array([img_embs[i] for i in range(0, len(img_embs), 5)])
    return shard_attn_scores(forward_sim, img_embs, cap_embs, cap_lens, shard_size)


# ---- ESL's Sim_vec ------------------------------------------------------------------------------------

class OfficialESLSimVec:
    """ESL `Sim_vec.forward` from a sim_vec state dict: levels of the whole shard, then per caption the
    level products against all images of the shard."""

    def __init__(self, sim_state: Mapping[str, torch.Tensor], heuristic: bool, embed_size: int, kernel_size: int = 2):
        self.s = sub(sim_state, "")
        self.heuristic = heuristic
        self.embed = embed_size
        self.k = kernel_size
        self.lengths = [int(embed_size / math.pow(kernel_size, i)) for i in range(9)]

    def _conv(self, x: torch.Tensor, name: str) -> torch.Tensor:
        return F.conv1d(x.reshape(-1, x.shape[-1]).unsqueeze(-2), self.s[name], stride=self.k).sum(1)

    def _masks(self, side: str) -> list[torch.Tensor]:
        index = torch18_linspace_index(1024)
        out = []
        for lvl in range(1, 9):
            table = self.s[f"plus_encoder.encoders_1.{side}.masks_{lvl}.weight"]
            m = l2n(table[index[: int(self.embed / math.pow(self.k, lvl))]], dim=-1)
            select = m.size(1) if m.size(1) < 2 else 2
            rng = m.sort(1, descending=True)[0][:, select - 1].unsqueeze(-1)
            out.append((m >= rng).float() * m)
        return out

    def image_levels(self, img: torch.Tensor) -> torch.Tensor:
        b, r = img.shape[:2]
        outs, cur = [img], img
        masks = None if self.heuristic else self._masks("image_levels")
        for lvl in range(1, 9):
            if self.heuristic:
                y = self._conv(cur, f"plus_encoder.encoders_1.image_levels.kernel_img_{lvl}.weight")
            else:
                y = cur.reshape(-1, cur.shape[-1]) @ masks[lvl - 1].t()
            cur = l2n(y.reshape(b, r, -1))  # images chain from the normalised level
            outs.append(cur)
        return torch.cat(outs, -1)

    def text_levels(self, cap: torch.Tensor) -> torch.Tensor:
        b, w = cap.shape[:2]
        outs, raw = [cap], cap
        masks = None if self.heuristic else self._masks("text_levels")
        for lvl in range(1, 9):
            if self.heuristic:
                raw = self._conv(raw, f"plus_encoder.encoders_1.text_levels.kernel_txt_{lvl}.weight")
            else:
                raw = raw.reshape(-1, raw.shape[-1]) @ masks[lvl - 1].t()
            outs.append(l2n(raw.reshape(b, w, -1)))  # captions chain from the raw level
        return torch.cat(outs, -1)

    def _weighted(self, attn: torch.Tensor, smooth: torch.Tensor) -> torch.Tensor:
        attn_t = torch.transpose(attn, 1, 2).contiguous()
        attn = F.leaky_relu(attn_t, 0.1)
        attn = l2n(attn, 2)
        attn = torch.transpose(attn, 1, 2).contiguous()
        return F.softmax(attn * smooth, dim=2)

    def __call__(self, img_emb: torch.Tensor, cap_emb: torch.Tensor, cap_lens) -> torch.Tensor:
        img = self.image_levels(img_emb)
        cap = self.text_levels(cap_emb)
        c = "sims.calculator_1."
        w = self.s[c + "sim_eval.weight"]
        smooth = torch.exp(self.s[c + "temp_scale.weight"])
        sigma = self.s[c + "temp_scale_1.weight"]
        lam = torch.exp(self.s[c + "temp_scale_2.weight"]) if self.heuristic else 0
        threshold = (torch.abs(w).max() - torch.abs(w).min()) * sigma + torch.abs(w).min()
        index = torch18_linspace_index(self.embed)
        mats = []
        for lvl, d in enumerate(self.lengths):
            alpha = torch.exp((torch.abs(w[0, lvl]) - threshold) * lam) * w[0, lvl]
            table = self.s[c + f"masks_{lvl}.weight"][index[:d]]
            normed = F.layer_norm(table, [d, d], self.s[c + f"lynorm_{lvl}.weight"], self.s[c + f"lynorm_{lvl}.bias"],
                                  eps=1e-8)
            mats.append(normed * alpha)
        bounds = np.cumsum([0] + self.lengths)
        n_img = img.shape[0]
        sims = []
        for i in range(cap.shape[0]):
            n_word = int(cap_lens[i])
            attn = 0
            for lvl in range(9):
                x = cap[i, :n_word, bounds[lvl]:bounds[lvl + 1]].unsqueeze(0).repeat(n_img, 1, 1)
                y = img[:, :, bounds[lvl]:bounds[lvl + 1]]
                attn = attn + (x @ mats[lvl] @ y.transpose(1, 2))
            attn_t = torch.transpose(attn, 1, 2).contiguous()
            t2i = attn.mul(self._weighted(torch.tanh(attn), smooth)).sum(-1).mean(dim=1, keepdim=True)
            i2t = attn_t.mul(self._weighted(torch.tanh(attn_t), smooth)).sum(-1).mean(dim=1, keepdim=True)
            sims.append(t2i + i2t)
        return torch.cat(sims, 1)


def esl_official_sims(container: Mapping, regions: torch.Tensor, ids: torch.Tensor, lengths: torch.Tensor,
                      bert_config: dict, heuristic: bool, shard_size: int = 3) -> np.ndarray:
    img_state, txt_state, sim_state = container["model"]
    opt = vars(container["opt"])
    sim = OfficialESLSimVec(sim_state, heuristic, int(opt["embed_size"]), int(opt["kernel_size"]))
    return official_style_matrix(sim, img_state, txt_state, bert_config, regions, ids, lengths, shard_size)


# ---- checks of the reference itself --------------------------------------------------------------

def test_heuristic_level_is_a_strided_two_tap_filter():
    """The conv level equals y[j] = a x[2j] + b x[2j+1] with (a, b) the kernel summed over channels."""
    torch.manual_seed(0)
    weight = torch.randn(4, 1, 2)
    ref = OfficialESLSimVec({"k.weight": weight}, True, 256)
    x = torch.randn(3, 16)
    a, b = weight.sum(0)[0]
    expected = a * x[:, 0::2] + b * x[:, 1::2]
    torch.testing.assert_close(ref._conv(x, "k.weight"), expected, rtol=1e-5, atol=1e-6)


def test_adaptive_masks_keep_the_two_largest_entries_per_row():
    torch.manual_seed(0)
    state = {f"plus_encoder.encoders_1.image_levels.masks_{lvl}.weight": torch.randn(256 >> lvl, 256 >> (lvl - 1))
             for lvl in range(1, 9)}
    masks = OfficialESLSimVec(state, False, 256)._masks("image_levels")
    assert [tuple(m.shape) for m in masks] == [(256 >> lvl, 256 >> (lvl - 1)) for lvl in range(1, 9)]
    for m in masks:
        assert bool(((m != 0).sum(1) == min(2, m.shape[1])).all())


# Captions the ESL and X-Dim tests score (15 = three images of 5; X-Dim takes the first 10).
PAIR_CAPTIONS = [
    "a man riding a wave on top of a surfboard",
    "two dogs",
    "a plate of food with broccoli and rice, next to a fork",
    "people walk down the street in the rain",
    "a red double-decker bus",
    "a kitchen",
    "an elephant standing in tall grass near trees",
    "a small child holding a teddy bear",
    "the skier goes down a snowy slope",
    "a bathroom with a white sink and mirror",
    "cars parked along a city street",
    "a giraffe",
    "a laptop computer sitting on a wooden desk",
    "a group of people flying kites in a park",
    "a cat sleeping on a couch",
]
