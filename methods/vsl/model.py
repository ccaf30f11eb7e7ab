"""The SGRAF network that VSL trains (Paranioar/SGRAF, AAAI 2021), with the official key names.

Three parts, saved by the official code as three state dicts:
- `img_enc`: Linear(img_dim -> embed) on each precomputed region, then l2norm;
- `txt_enc`: word embedding + BiGRU (directions averaged), then l2norm per word;
- `sim_enc`: scores an (image, caption) pair by cross attention: self-attended global vectors of both
  sides, SCAN text-to-image attention per word, squared-difference "similarity representations"
  projected to `sim_dim`, then either SGR (graph reasoning over the L+1 similarity nodes) or SAF
  (attention filtration of the nodes), and a sigmoid.

The official code loops over captions in Python and scores one caption against all images per
iteration. Here every pair of an (images x captions) block is scored at once, in chunks that bound
memory. Padded words are masked in every attention and pooling step, so a pair's score does not
depend on the block it is computed in. Exact rewrites save work without changing the function:
SGR's query-key product uses W_q^T W_k (the query bias adds a per-row constant that softmax removes);
the last SGR step is computed for the global node only, the only node the score reads; in inference
the norm of each attended context comes from the image's 36 x 36 region Gram matrix and scales the
attention weights (no extra pass over the pairs x words x embed tensor); SGR skips masking in
chunks without padding.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

NUM_REGIONS = 36  # VisualSA's BatchNorm1d has one channel per region index
SCAN_SMOOTH = 9.0  # lambda of the SCAN text-to-image attention, hard-coded in the official code
DROPOUT = 0.4
# Elements of the largest per-chunk intermediate (pairs x words x embed) when scoring a block.
CHUNK_ELEMENTS = 1 << 23


def l2norm(x: torch.Tensor, dim: int = -1, eps: float = 1e-8) -> torch.Tensor:
    """x / (||x||_2 + eps): eps is added to the norm, as in the official code."""
    return x / (torch.linalg.vector_norm(x, dim=dim, keepdim=True) + eps)


def l1norm(x: torch.Tensor, dim: int = -1, eps: float = 1e-8) -> torch.Tensor:
    return x / (x.abs().sum(dim=dim, keepdim=True) + eps)


def xavier_linear_(layer: nn.Linear) -> None:
    """The official init: U(-r, r) with r = sqrt(6 / (fan_in + fan_out)), zero bias."""
    r = math.sqrt(6.0) / math.sqrt(layer.in_features + layer.out_features)
    nn.init.uniform_(layer.weight, -r, r)
    nn.init.zeros_(layer.bias)


def length_mask(lengths: torch.Tensor, width: int) -> torch.Tensor:
    """(B, width) bool, True at positions < length."""
    return torch.arange(width, device=lengths.device)[None, :] < lengths.to(torch.long)[:, None]


# ---- encoders ------------------------------------------------------------------------------------

class RegionEncoder(nn.Module):
    """`img_enc`: fc on each region, then l2norm (unless no_imgnorm). Keys fc.weight, fc.bias."""

    def __init__(self, img_dim: int = 2048, embed_size: int = 1024, normalize: bool = True) -> None:
        super().__init__()
        self.fc = nn.Linear(img_dim, embed_size)
        self.normalize = normalize
        xavier_linear_(self.fc)

    def forward(self, regions: torch.Tensor) -> torch.Tensor:
        x = self.fc(regions)
        return l2norm(x) if self.normalize else x


class GRUTextEncoder(nn.Module):
    """`txt_enc`: ids (B, L) + lengths -> word features (B, max(lengths), embed), zero at padding.

    Keys embed.weight and cap_rnn.* (the SCAN vocabulary without an extra row). Dropout 0.4 on the
    word embeddings in training.
    """

    def __init__(self, vocab_size: int, word_dim: int = 300, embed_size: int = 1024, num_layers: int = 1,
                 bidirectional: bool = True, normalize: bool = True) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, word_dim)
        self.dropout = nn.Dropout(DROPOUT)
        self.cap_rnn = nn.GRU(word_dim, embed_size, num_layers, batch_first=True, bidirectional=bidirectional)
        self.bidirectional = bidirectional
        self.normalize = normalize
        nn.init.uniform_(self.embed.weight, -0.1, 0.1)

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        lengths = lengths.to(torch.long)
        if len(lengths) and int(lengths.min()) < 1:
            raise ValueError("every caption needs at least one token (<start> and <end> are always added)")
        width = int(lengths.max())
        x = self.dropout(self.embed(ids[:, :width]))
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.cap_rnn(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=width)
        if self.bidirectional:
            half = out.shape[-1] // 2
            out = (out[..., :half] + out[..., half:]) / 2
        return l2norm(out) if self.normalize else out


# ---- similarity head ----------------------------------------------------------------------------

class VisualSelfAttention(nn.Module):
    """`v_global_w`: the image's global vector, regions weighted by self-attention (BN over regions)."""

    def __init__(self, embed: int, num_regions: int = NUM_REGIONS) -> None:
        super().__init__()
        self.embedding_local = nn.Sequential(nn.Linear(embed, embed), nn.BatchNorm1d(num_regions), nn.Tanh(),
                                             nn.Dropout(DROPOUT))
        self.embedding_global = nn.Sequential(nn.Linear(embed, embed), nn.BatchNorm1d(embed), nn.Tanh(),
                                              nn.Dropout(DROPOUT))
        self.embedding_common = nn.Sequential(nn.Linear(embed, 1))
        for layer in (self.embedding_local[0], self.embedding_global[0], self.embedding_common[0]):
            xavier_linear_(layer)
        self.num_regions = num_regions

    def forward(self, regions: torch.Tensor) -> torch.Tensor:
        if regions.shape[1] != self.num_regions:
            raise ValueError(f"SGRAF's VisualSA is built for {self.num_regions} regions per image "
                             f"(BatchNorm over region slots); got {regions.shape[1]}")
        local = self.embedding_local(regions)
        glob = self.embedding_global(regions.mean(dim=1))
        weights = torch.softmax(self.embedding_common(local * glob[:, None, :]).squeeze(-1), dim=1)
        return l2norm((weights[..., None] * regions).sum(dim=1))


class TextSelfAttention(nn.Module):
    """`t_global_w`: the caption's global vector over its valid words (no BN)."""

    def __init__(self, embed: int) -> None:
        super().__init__()
        self.embedding_local = nn.Sequential(nn.Linear(embed, embed), nn.Tanh(), nn.Dropout(DROPOUT))
        self.embedding_global = nn.Sequential(nn.Linear(embed, embed), nn.Tanh(), nn.Dropout(DROPOUT))
        self.embedding_common = nn.Sequential(nn.Linear(embed, 1))
        for layer in (self.embedding_local[0], self.embedding_global[0], self.embedding_common[0]):
            xavier_linear_(layer)

    def forward(self, words: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        maskf = mask.to(words.dtype)[..., None]
        mean = (words * maskf).sum(dim=1) / maskf.sum(dim=1)
        local = self.embedding_local(words)
        glob = self.embedding_global(mean)
        logits = self.embedding_common(local * glob[:, None, :]).squeeze(-1)
        weights = torch.softmax(logits.masked_fill(~mask, float("-inf")), dim=1)
        return l2norm((weights[..., None] * words).sum(dim=1))


class GraphReasoning(nn.Module):
    """One SGR step over the similarity nodes: attention edges softmax(q k^T), then ReLU(W_g (E S))."""

    def __init__(self, sim_dim: int) -> None:
        super().__init__()
        self.graph_query_w = nn.Linear(sim_dim, sim_dim)
        self.graph_key_w = nn.Linear(sim_dim, sim_dim)
        self.sim_graph_w = nn.Linear(sim_dim, sim_dim)
        for layer in (self.graph_query_w, self.graph_key_w, self.sim_graph_w):
            xavier_linear_(layer)

    def query_key(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(Wq^T Wk, Wk^T bq): q_a . k_b = s_a^T Wq^T Wk s_b + (Wk^T bq) . s_b + terms constant in b,
        which the softmax over b removes."""
        wq, bq, wk = self.graph_query_w.weight, self.graph_query_w.bias, self.graph_key_w.weight
        return wq.t() @ wk, wk.t() @ bq

    def forward(self, nodes: torch.Tensor, node_mask: torch.Tensor | None, first_only: bool = False,
                query_key: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """nodes (..., N, s); node_mask broadcastable to (..., N), or None when every node is valid. With
        `first_only`, the new value of node 0 only, (..., 1, s). `query_key` passes a precomputed
        self.query_key()."""
        qk, bias = query_key if query_key is not None else self.query_key()
        s = nodes.shape[-1]
        flat = nodes.reshape(-1, s)
        if first_only:  # W_g (E S) for node 0 only
            proj = torch.addmm(bias, nodes[..., 0, :].reshape(-1, s), qk).view(*nodes.shape[:-2], 1, s)
            values = nodes
        else:  # W_g (E S) = E (S W_g^T): rows of E sum to 1 (contiguous outputs: no copies in the matmuls)
            proj = torch.addmm(bias, flat, qk).view(nodes.shape)
            values = torch.mm(flat, self.sim_graph_w.weight.t()).view(nodes.shape)
        logits = torch.matmul(proj, nodes.transpose(-1, -2))
        if node_mask is not None:
            logits = logits.masked_fill_(~node_mask[..., None, :], float("-inf"))
        edges = torch.softmax(logits, dim=-1)
        if first_only:
            return torch.relu(self.sim_graph_w(torch.matmul(edges, values)))
        return torch.matmul(edges, values).add_(self.sim_graph_w.bias).relu_()


class AttentionFiltration(nn.Module):
    """SAF: sigmoid(BN(W_a S)) weights over the nodes, l1-normalised, then the l2-normalised sum.

    In training the official code normalises each caption's logits with its own batch statistics
    (BatchNorm1d(1) is called once per caption) and updates the running statistics once per caption,
    in caption order; this is reproduced here for the whole block at once.
    """

    def __init__(self, sim_dim: int) -> None:
        super().__init__()
        self.attn_sim_w = nn.Linear(sim_dim, 1)
        self.bn = nn.BatchNorm1d(1)
        xavier_linear_(self.attn_sim_w)

    def _batch_norm(self, logits: torch.Tensor, node_mask: torch.Tensor) -> torch.Tensor:
        """logits (n_img, n_cap, N), node_mask (n_cap, N)."""
        bn = self.bn
        if not self.training:
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            return (logits - bn.running_mean) * scale + bn.bias
        valid = node_mask[None].to(logits.dtype)
        count = node_mask.sum(dim=1).to(logits.dtype) * logits.shape[0]  # images x valid nodes, per caption
        mean = (logits * valid).sum(dim=(0, 2)) / count
        var = (((logits - mean[None, :, None]) ** 2) * valid).sum(dim=(0, 2)) / count
        with torch.no_grad():
            momentum = bn.momentum if bn.momentum is not None else 0.1
            unbiased = var * count / (count - 1).clamp(min=1)
            for c in range(logits.shape[1]):  # one running-stat update per caption, as the loop did
                bn.running_mean.mul_(1 - momentum).add_(momentum * mean[c].detach())
                bn.running_var.mul_(1 - momentum).add_(momentum * unbiased[c].detach())
            bn.num_batches_tracked.add_(logits.shape[1])
        normed = (logits - mean[None, :, None]) / torch.sqrt(var[None, :, None] + bn.eps)
        return normed * bn.weight + bn.bias

    def forward(self, nodes: torch.Tensor, node_mask: torch.Tensor) -> torch.Tensor:
        """nodes (n_img, n_cap, N, s) -> (n_img, n_cap, s)."""
        logits = self.attn_sim_w(nodes).squeeze(-1)
        weights = torch.sigmoid(self._batch_norm(logits, node_mask)) * node_mask[None].to(nodes.dtype)
        weights = l1norm(weights, dim=-1)
        return l2norm(torch.matmul(weights[..., None, :], nodes).squeeze(-2))


class SimilarityHead(nn.Module):
    """`sim_enc` (EncoderSimilarity) with module 'SGR' or 'SAF'."""

    def __init__(self, embed_size: int = 1024, sim_dim: int = 256, module: str = "SGR", sgr_step: int = 3,
                 num_regions: int = NUM_REGIONS) -> None:
        super().__init__()
        if module not in ("SGR", "SAF"):
            raise ValueError(f"module must be 'SGR' or 'SAF', got {module!r}")
        self.module_name = module
        self.v_global_w = VisualSelfAttention(embed_size, num_regions)
        self.t_global_w = TextSelfAttention(embed_size)
        self.sim_tranloc_w = nn.Linear(embed_size, sim_dim)
        self.sim_tranglo_w = nn.Linear(embed_size, sim_dim)
        self.sim_eval_w = nn.Linear(sim_dim, 1)
        if module == "SGR":
            self.SGR_module = nn.ModuleList(GraphReasoning(sim_dim) for _ in range(sgr_step))
        else:
            self.SAF_module = AttentionFiltration(sim_dim)
        for layer in (self.sim_tranloc_w, self.sim_tranglo_w, self.sim_eval_w):
            xavier_linear_(layer)

    def image_global(self, regions: torch.Tensor) -> torch.Tensor:
        return self.v_global_w(regions)

    def caption_global(self, words: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.t_global_w(words, mask)

    def forward(self, regions: torch.Tensor, words: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(n_img, n_cap) scores of every image against every caption (the official forward_sim)."""
        mask = length_mask(lengths, words.shape[1])
        return self.pair_scores(regions, self.image_global(regions), words,
                                self.caption_global(words, mask), mask)

    def pair_scores(self, regions: torch.Tensor, img_glo: torch.Tensor, words: torch.Tensor,
                    cap_glo: torch.Tensor, mask: torch.Tensor,
                    chunk_elements: int = CHUNK_ELEMENTS) -> torch.Tensor:
        """Scores of all pairs given precomputed global vectors.

        Captions are processed longest first, in chunks of similar length (little padding), and images
        and captions are chunked so that no (pairs x words x embed) intermediate exceeds
        `chunk_elements`. In training only captions are chunked: SAF's batch norm needs all images of
        a caption at once.
        """
        n_img, n_cap, d = regions.shape[0], words.shape[0], words.shape[2]
        lengths = mask.sum(dim=1)
        order = torch.sort(lengths, descending=True, stable=True).indices
        words = (words * mask[..., None].to(words.dtype))[order]  # padded word slots must be exactly zero
        mask, lengths, cap_glo = mask[order], lengths[order], cap_glo[order]
        longest = max(1, int(lengths[0])) if n_cap else 1
        if self.training:
            img_step = n_img
        else:
            img_step = max(1, min(n_img, int(math.sqrt(chunk_elements / (longest * d)))))
        query_keys = [step.query_key() for step in self.SGR_module] if self.module_name == "SGR" else None
        chunks, c = [], 0
        while c < n_cap:
            width = max(1, int(lengths[c]))
            step = max(1, chunk_elements // (width * d * img_step))
            chunks.append((c, min(n_cap, c + step), width))
            c += step
        out = regions.new_empty(n_img, n_cap)
        for a in range(0, n_img, img_step):
            b = min(n_img, a + img_step)
            for c0, c1, width in chunks:
                out[a:b, c0:c1] = self._score_chunk(regions[a:b], img_glo[a:b], words[c0:c1, :width],
                                                    cap_glo[c0:c1], mask[c0:c1, :width], query_keys)
        return out[:, torch.argsort(order)]

    def _score_chunk(self, regions: torch.Tensor, img_glo: torch.Tensor, words: torch.Tensor,
                     cap_glo: torch.Tensor, mask: torch.Tensor,
                     query_keys: list[tuple[torch.Tensor, torch.Tensor]] | None) -> torch.Tensor:
        n_img, n_reg, d = regions.shape
        n_cap, n_word, _ = words.shape
        # SCAN text-to-image attention: LeakyReLU(v . w), l2norm over words, softmax over regions
        attn = F.leaky_relu(regions.reshape(n_img * n_reg, d) @ words.reshape(n_cap * n_word, d).t(), 0.1)
        attn = l2norm(attn.view(n_img, n_reg, n_cap, n_word), dim=-1)
        attn = torch.softmax(attn * SCAN_SMOOTH, dim=1)
        attn = attn.permute(0, 2, 3, 1).reshape(n_img, n_cap * n_word, n_reg)
        if torch.is_grad_enabled():  # training: autograd needs the intermediate values
            context = torch.bmm(attn, regions).view(n_img, n_cap, n_word, d)
            inv_norm = 1.0 / (torch.linalg.vector_norm(context, dim=-1, keepdim=True) + 1e-8)
            diff = (context * inv_norm - words[None]).square()
            sim_loc = l2norm(self.sim_tranloc_w(diff))  # (n_img, n_cap, L, s)
        else:
            # ||attn @ V||^2 = attn G attn^T with the regions' Gram matrix G = V V^T (36 x 36 per image):
            # the context's norm without a pass over the (pairs x words x embed) tensor, and the
            # normalisation folded into the attention weights; then (context - word)^2 in place
            gram = torch.bmm(regions, regions.transpose(1, 2))
            sq = torch.bmm(attn, gram).mul_(attn).sum(dim=-1, keepdim=True)
            attn = attn.mul_(sq.clamp_(min=0).sqrt_().add_(1e-8).reciprocal_())
            diff = torch.bmm(attn, regions).view(n_img, n_cap, n_word, d).sub_(words[None]).square_()
            sim_loc = self.sim_tranloc_w(diff)
            sim_loc = sim_loc.div_(torch.linalg.vector_norm(sim_loc, dim=-1, keepdim=True).add_(1e-8))
        sim_glo = l2norm(self.sim_tranglo_w((img_glo[:, None, :] - cap_glo[None, :, :]).square()))
        nodes = torch.cat([sim_glo[:, :, None, :], sim_loc], dim=2)  # global node first
        node_mask = torch.cat([mask.new_ones(n_cap, 1), mask], dim=1)  # (n_cap, L + 1)
        if self.module_name == "SGR":
            steps = list(self.SGR_module)
            graph_mask = None if bool(node_mask.all()) else node_mask[None]  # no padding in this chunk
            for i, step in enumerate(steps):
                nodes = step(nodes, graph_mask, first_only=i == len(steps) - 1,
                             query_key=query_keys[i] if query_keys else None)
            sim_vec = nodes[..., 0, :]
        else:
            sim_vec = self.SAF_module(nodes, node_mask)
        return torch.sigmoid(self.sim_eval_w(sim_vec)).squeeze(-1)


class SGRAF(nn.Module):
    """The whole network: `img_enc`, `txt_enc`, `sim_enc` (the official save order)."""

    def __init__(self, vocab_size: int, *, module: str = "SGR", img_dim: int = 2048, word_dim: int = 300,
                 embed_size: int = 1024, sim_dim: int = 256, num_layers: int = 1, bi_gru: bool = True,
                 sgr_step: int = 3, no_imgnorm: bool = False, no_txtnorm: bool = False,
                 num_regions: int = NUM_REGIONS) -> None:
        super().__init__()
        self.img_enc = RegionEncoder(img_dim, embed_size, normalize=not no_imgnorm)
        self.txt_enc = GRUTextEncoder(vocab_size, word_dim, embed_size, num_layers, bidirectional=bi_gru,
                                      normalize=not no_txtnorm)
        self.sim_enc = SimilarityHead(embed_size, sim_dim, module, sgr_step, num_regions)

    def forward(self, regions: torch.Tensor, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The (B, B) score matrix of a training batch (images x captions)."""
        return self.sim_enc(self.img_enc(regions), self.txt_enc(ids, lengths), lengths)
