"""The packed caption store (PackedFeatures): slices equal what concat_blocks gave, and score_blocks
output over it equals scoring the padded concatenation, for ESL-, X-Dim- and VSL-style encodings."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness.api import PackedFeatures, PaddedFeatures, concat_blocks  # noqa: E402
from harness.eval.scoring import block_fingerprint, encode_images, encode_texts, score_blocks  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def padded_blocks(seed: int = 0, sizes=(3, 5, 1, 4), dim: int = 4) -> list[PaddedFeatures]:
    """Blocks of different widths, zero past each item's length (as every encoder writes them)."""
    g = torch.Generator().manual_seed(seed)
    blocks = []
    for n in sizes:
        lengths = torch.randint(1, 9, (n,), generator=g)
        width = int(lengths.max()) + int(torch.randint(0, 3, (1,), generator=g))  # some blocks over-wide
        feats = torch.randn(n, width, dim, generator=g)
        feats *= (torch.arange(width)[None, :] < lengths[:, None])[..., None]
        blocks.append(PaddedFeatures(feats, lengths))
    return blocks


def assert_same(got: PaddedFeatures, want: PaddedFeatures) -> None:
    assert torch.equal(got.lengths, want.lengths)
    assert got.feats.shape == want.feats.shape
    assert torch.equal(got.feats, want.feats)


@pytest.mark.parametrize("index", [slice(None), slice(0, 4), slice(2, 9), slice(7, 8), slice(4, 13),
                                   slice(10, 10), slice(-5, None), [0, 12, 5, 5], torch.tensor([8, 3])])
def test_packed_slices_equal_concat_blocks(index):
    blocks = padded_blocks()
    reference = concat_blocks(blocks)
    packed = PackedFeatures.from_blocks(blocks)
    first = int(blocks[0].lengths.sum()) * 4 * 4
    spilled = PackedFeatures.from_blocks(blocks, memory_limit=first)  # the first block in memory, the rest on disk
    assert 0 < spilled.memory_bytes < spilled.nbytes
    assert_same(spilled[index], reference[index])
    assert len(packed) == len(reference) == 13
    assert torch.equal(packed.lengths, reference.lengths)
    assert_same(packed[index], reference[index])


def test_packed_store_holds_only_true_rows():
    blocks = padded_blocks(sizes=(50, 50), dim=8)
    blocks[0].lengths[0] = 40  # one long caption
    blocks[0].feats = torch.cat([blocks[0].feats, torch.ones(50, 40 - blocks[0].feats.shape[1], 8)], 1)
    blocks[0].feats[1:, 8:] = 0
    packed = PackedFeatures.from_blocks(blocks)
    assert packed.nbytes == int(packed.lengths.sum()) * 8 * 4
    assert packed.nbytes < concat_blocks(blocks).feats.numel() * 4 / 2
    assert packed[1:50].feats.shape[1] <= 8  # a tile without the long caption is not padded to it


def test_packed_append_rejects_inconsistent_blocks():
    store = PackedFeatures.from_blocks(padded_blocks(dim=4))
    with pytest.raises(ValueError, match="rows after"):
        store.append(PaddedFeatures(torch.zeros(2, 3, 5), torch.tensor([1, 2])))
    with pytest.raises(ValueError, match="lengths outside"):
        store.append(PaddedFeatures(torch.zeros(2, 3, 4), torch.tensor([1, 4])))


def test_fingerprint_sees_packed_values():
    blocks = padded_blocks()
    a = PackedFeatures.from_blocks(blocks)
    blocks[2].feats[0, 0, 0] += 1.0
    b = PackedFeatures.from_blocks(blocks)
    assert block_fingerprint(a) != block_fingerprint(b)


def test_encode_images_preallocates_and_releases_memmap(tmp_path):
    """A memmapped region file encodes to the same block as an in-memory array."""
    from test_scoring import BagOfWords

    adapter = BagOfWords(pairwise=True)
    arr = np.random.default_rng(0).standard_normal((11, 3, 6)).astype(np.float32)
    np.save(tmp_path / "ims.npy", arr)
    mapped = np.load(tmp_path / "ims.npy", mmap_mode="r")
    assert isinstance(mapped, np.memmap)
    torch.testing.assert_close(encode_images(adapter, mapped, batch_size=4), encode_images(adapter, arr, batch_size=11),
                               rtol=0, atol=0)


# ---- score_blocks over the packed store vs over the padded concatenation (the old engine) ---------------

def old_text_block(adapter, captions, batch_size):
    """What encode_texts returned before the packed store: per-batch blocks padded to the global longest."""
    from harness.eval.scoring import eval_mode

    blocks = []
    with eval_mode(adapter):
        for a in range(0, len(captions), batch_size):
            blocks.append(adapter.encode_texts(adapter.tokenize(captions[a:a + batch_size])))
    return concat_blocks(blocks)


def check_engine(adapter, images, captions, batch_size, tiles):
    img = encode_images(adapter, images, batch_size=3)
    packed = encode_texts(adapter, captions, batch_size=batch_size)
    assert isinstance(packed, PackedFeatures)
    old = old_text_block(adapter, captions, batch_size)
    assert torch.equal(packed.lengths, old.lengths)
    new = score_blocks(adapter, img, packed, image_tile=tiles[0], caption_tile=tiles[1])
    before = score_blocks(adapter, img, old, image_tile=tiles[0], caption_tile=tiles[1])
    np.testing.assert_allclose(new, before, rtol=0, atol=1e-6)
    assert np.ptp(new) > 1e-3


def test_engine_unchanged_esl():
    from test_esl import CAPTIONS, IMG_DIM, REGIONS
    from test_esl import build as build_esl

    adapter = build_esl("a")
    images = torch.randn(len(CAPTIONS) // 5, REGIONS, IMG_DIM, generator=torch.Generator().manual_seed(3))
    check_engine(adapter, images, CAPTIONS, batch_size=3, tiles=(2, 4))


def test_engine_unchanged_xdim():
    from test_xdim import CAPTIONS, IMG_DIM, REGIONS
    from test_xdim import build as build_xdim

    adapter = build_xdim()
    images = torch.randn(len(CAPTIONS) // 5, REGIONS, IMG_DIM, generator=torch.Generator().manual_seed(4))
    check_engine(adapter, images, CAPTIONS, batch_size=4, tiles=(1, 3))


def test_engine_unchanged_vsl(tmp_path):
    from test_vsl_equivalence import N_IMAGES, demo_captions, official_file, regions

    from methods.vsl.adapter import VSLAdapter

    adapter = VSLAdapter.load_official(official_file(tmp_path, "saf", seed=5))
    captions = demo_captions(N_IMAGES)
    captions[3] = captions[3] + " and " + captions[4] + " near " + captions[7]  # one long caption
    check_engine(adapter, regions(N_IMAGES, 6), captions, batch_size=7, tiles=(4, 6))
