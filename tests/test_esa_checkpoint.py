"""Strict, safe loading of official ESA containers, the errors for wrong files, and the written layout."""

from __future__ import annotations

import argparse
from collections import OrderedDict

import pytest
import torch

from harness.api import CheckpointError, strip_prefix
from methods.common.vocab import load_scan_vocab
from methods.esa import ESAAdapter

TINY_BERT = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                 max_position_embeddings=64)
OPTIONS = dict(embed_size=32, img_dim=48, word_dim=8, bert=TINY_BERT)

BIGRU_OPT_FIELDS = {
    "data_path", "data_name", "vocab_path", "margin", "num_epochs", "batch_size", "word_dim", "embed_size",
    "num_layers", "grad_clip", "learning_rate", "lr_update", "optim", "workers", "log_step", "val_step",
    "logger_name", "model_name", "resume", "max_violation", "img_dim", "no_imgnorm", "no_txtnorm",
    "vse_mean_warmup_epochs", "reset_start_epoch", "hardnum", "vocab_size",
}
BERT_OPT_FIELDS = (BIGRU_OPT_FIELDS - {"num_layers"}) | {
    "precomp_enc_type", "backbone_path", "backbone_source", "backbone_warmup_epochs",
    "embedding_warmup_epochs", "backbone_lr_factor", "input_scale_factor",
}


def write(tmp_path, variant="bigru", dataset="coco", name="model_best.pth", edit=None):
    container = ESAAdapter.build(variant, dataset, OPTIONS).official_checkpoint(epoch=2)
    if edit is not None:
        edit(container)
    path = tmp_path / name
    torch.save(container, path)
    return path


def error_of(path, **kwargs) -> str:
    with pytest.raises(CheckpointError) as info:
        ESAAdapter.load_official(path, **kwargs)
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    return message


def test_written_layout_bigru():
    adapter = ESAAdapter.build("bigru", "f30k", OPTIONS)
    c = adapter.official_checkpoint(epoch=4, best_rsum=500.0)
    assert set(c) == {"epoch", "model", "best_rsum", "opt", "Eiters"}
    assert c["epoch"] == 4 and c["best_rsum"] == 500.0
    img, txt = c["model"]
    assert isinstance(img, OrderedDict) and len(img) == 18 and len(txt) == 11
    assert "mlp.bns.1.running_var" in img and "linear1.weight" in img
    assert set(txt) == {"embed.weight", "linear1.weight", "linear1.bias"} | {
        f"rnn.{w}_{k}_l0{s}" for w in ("weight", "bias") for k in ("ih", "hh") for s in ("", "_reverse")}
    assert txt["embed.weight"].shape == (8482, 8)
    opt = c["opt"]
    assert isinstance(opt, argparse.Namespace)
    assert BIGRU_OPT_FIELDS <= set(vars(opt))
    assert opt.data_name == "f30k" and opt.vocab_size == 8482 and opt.embed_size == 32 and opt.hardnum == 2
    assert opt.max_violation is True  # epoch 4 > 1 warm-up epoch


def test_written_layout_bert_has_module_prefix():
    c = ESAAdapter.build("bert", "coco", OPTIONS).official_checkpoint()
    img, txt = c["model"]
    assert all(k.startswith("module.") for k in [*img, *txt])
    assert {"module.linear.weight", "module.linear1.weight", "module.bert.pooler.dense.weight"} <= set(txt)
    assert BERT_OPT_FIELDS <= set(vars(c["opt"])) and "num_layers" not in vars(c["opt"])
    assert c["opt"].precomp_enc_type == "basic" and c["opt"].vocab_size == 30522


def test_roundtrip_keeps_weights_and_dataset(tmp_path):
    adapter = ESAAdapter.build("bigru", "demo", OPTIONS)
    path = tmp_path / "demo.pth"
    torch.save(adapter.official_checkpoint(), path)
    # data_name names the vocabulary the official code must use for the demo set
    assert torch.load(path, weights_only=False)["opt"].data_name == "coco"
    loaded = ESAAdapter.load_official(path, variant="bigru", dataset="demo")
    assert loaded.dataset == "demo" and len(loaded.vocab) == len(load_scan_vocab("coco")) + 1
    for (k, a), (k2, b) in zip(adapter.model.state_dict().items(), loaded.model.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    assert not loaded.model.training


def test_bert_position_ids_are_tolerated(tmp_path):
    def add_position_ids(c):
        c["model"][1]["module.bert.embeddings.position_ids"] = torch.arange(64)[None]

    path = write(tmp_path, "bert", edit=add_position_ids)
    assert ESAAdapter.load_official(path, variant="bert", dataset="coco").variant == "bert"


def test_checkpoint_of_another_method(tmp_path):
    def three_parts(c):  # ESL saves [img_enc, txt_enc, sim_enc]
        c["model"] = [*c["model"], OrderedDict(w=torch.zeros(2))]

    assert "3 entries" in error_of(write(tmp_path, edit=three_parts))
    path = tmp_path / "other.pth"
    torch.save({"state_dict": {"a": torch.zeros(1)}}, path)
    assert "not a ESA checkpoint" in error_of(path)


def test_wrong_variant(tmp_path):
    message = error_of(write(tmp_path, "bigru"), variant="bert")
    assert "bigru checkpoint" in message and "variant 'bert'" in message
    assert "variant 'bigru'" in error_of(write(tmp_path, "bert", name="b.pth"), variant="bigru")
    assert "esa_star" in error_of(write(tmp_path, "bigru", name="c.pth"), variant="esa_star")


def test_wrong_dataset(tmp_path):
    message = error_of(write(tmp_path, "bigru", "f30k"), dataset="coco")
    assert "f30k checkpoint" in message and "dataset 'coco'" in message and "8482 embedding rows" in message
    assert "dataset 'coco'" in error_of(write(tmp_path, "bert", "f30k", name="b.pth"), dataset="coco")


def test_vocabulary_rows_mismatch(tmp_path):
    def claim_coco(c):
        c["opt"].data_name = "coco"

    message = error_of(write(tmp_path, "bigru", "f30k", edit=claim_coco))
    assert "8482 rows" in message and "11354" in message and "f30k vocabulary" in message

    def odd_rows(c):
        c["model"][1]["embed.weight"] = torch.zeros(9000, 8)

    assert "no SCAN vocabulary" in error_of(write(tmp_path, "bigru", "f30k", name="b.pth", edit=odd_rows))


def test_truncated_file(tmp_path):
    path = write(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert "truncated" in error_of(path)


def test_missing_and_unexpected_keys(tmp_path):
    def drop_key(c):
        del c["model"][0]["linear1.weight"]

    message = error_of(write(tmp_path, edit=drop_key))
    assert "missing keys [linear1.weight]" in message and "image encoder" in message

    def extra_key(c):
        c["model"][1]["module.cls.weight"] = torch.zeros(3)

    message = error_of(write(tmp_path, "bert", name="b.pth", edit=extra_key))
    assert "unexpected keys" in message and "text encoder" in message

    def mixed_prefix(c):  # one prefixed key among plain ones: nothing is stripped
        c["model"][0] = OrderedDict(strip_prefix(c["model"][0]), **{"module.extra": torch.zeros(1)})

    assert "unexpected keys" in error_of(write(tmp_path, "bert", name="c.pth", edit=mixed_prefix))


def test_unsupported_options(tmp_path):
    def backbone(c):
        c["opt"].precomp_enc_type = "backbone"

    assert "precomp_enc_type='backbone'" in error_of(write(tmp_path, "bert", edit=backbone))

    def two_layers(c):
        c["opt"].num_layers = 2

    assert "num_layers=2" in error_of(write(tmp_path, "bigru", name="b.pth", edit=two_layers))


def test_embed_size_from_opt_must_match_weights(tmp_path):
    def wrong_size(c):
        c["opt"].embed_size = 64

    assert "shape mismatches" in error_of(write(tmp_path, edit=wrong_size))
