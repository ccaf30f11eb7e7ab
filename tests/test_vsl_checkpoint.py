"""Official SGRAF/VSL checkpoints: strict, safe loading, clear one-line errors, and writing them back."""

from __future__ import annotations

import argparse

import pytest
import torch

from harness.api import CheckpointError
from methods.vsl.adapter import VSLAdapter

pytestmark = pytest.mark.usefixtures("one_thread")

DIMS = dict(embed_size=16, sim_dim=8, img_dim=12, word_dim=6)
OPT_FIELDS = ("data_path data_name vocab_path model_name logger_name batch_size num_epochs lr_update learning_rate "
              "workers log_step val_step grad_clip margin max_violation img_dim word_dim embed_size sim_dim "
              "num_layers bi_gru no_imgnorm no_txtnorm module_name sgr_step vocab_size").split()


def save(tmp_path, container, name="ckpt.pth.tar"):
    path = tmp_path / name
    torch.save(container, path)
    return path


def container_of(variant="sgr", dataset="coco", **extra):
    torch.manual_seed(0)
    return VSLAdapter.build(variant, dataset, DIMS).official_checkpoint(**extra)


def one_line(exc: pytest.ExceptionInfo, path) -> str:
    msg = str(exc.value)
    assert "\n" not in msg and str(path) in msg
    return msg


def refused(match: str, tmp_path, container, name="ckpt.pth.tar") -> str:
    """Save `container`, check load_official refuses it with a one-line error naming the file; the message."""
    path = save(tmp_path, container, name)
    with pytest.raises(CheckpointError, match=match) as exc:
        VSLAdapter.load_official(path)
    return one_line(exc, path)


@pytest.mark.parametrize("variant, sim_keys", [("sgr", 46), ("saf", 35)])
def test_official_layout_and_round_trip(tmp_path, variant, sim_keys):
    adapter = VSLAdapter.build(variant, "f30k", DIMS)
    c = adapter.official_checkpoint(epoch=12, best_rsum=480.5, Eiters=999)
    assert set(c) == {"epoch", "model", "best_rsum", "opt", "Eiters"}
    img, txt, sim = c["model"]
    assert (len(img), len(txt), len(sim)) == (2, 9, sim_keys)
    assert txt["embed.weight"].shape == (8481, 6)  # the F30K SCAN vocabulary, no extra <mask> row
    assert "cap_rnn.weight_hh_l0_reverse" in txt
    assert isinstance(c["opt"], argparse.Namespace)
    opt = vars(c["opt"])
    assert all(f in opt for f in OPT_FIELDS)
    assert opt["module_name"] == variant.upper() and opt["data_name"] == "f30k_precomp" and opt["vocab_size"] == 8481
    loaded = VSLAdapter.load_official(save(tmp_path, c), variant=variant, dataset="f30k")
    assert loaded.checkpoint_info == {"epoch": 12, "best_rsum": 480.5, "Eiters": 999}
    assert loaded.options["embed_size"] == 16 and loaded.options["sim_dim"] == 8
    for ours, theirs in zip(adapter.model.state_dict().values(), loaded.model.state_dict().values()):
        assert torch.equal(ours, theirs)
    assert not loaded.model.training


def test_rebuilds_from_opt_defaults_when_fields_are_missing(tmp_path):
    c = container_of("saf")
    opt = vars(c["opt"])
    for key in ("no_imgnorm", "no_txtnorm", "bi_gru", "num_layers"):
        del opt[key]
    loaded = VSLAdapter.load_official(save(tmp_path, c))
    assert loaded.variant == "saf" and loaded.dataset == "coco"
    assert loaded.options["bi_gru"] is True and loaded.options["no_imgnorm"] is False


def test_wrong_module_is_refused(tmp_path):
    path = save(tmp_path, container_of("sgr"))
    with pytest.raises(CheckpointError) as exc:
        VSLAdapter.load_official(path, variant="saf")
    assert "SGR" in one_line(exc, path) and "'saf'" in str(exc.value)


def test_sgraf_is_not_one_file(tmp_path):
    path = save(tmp_path, container_of("sgr"))
    with pytest.raises(CheckpointError, match="sgraf averages") as exc:
        VSLAdapter.load_official(path, variant="sgraf")
    one_line(exc, path)


def test_module_name_contradicting_keys(tmp_path):
    c = container_of("saf")
    c["opt"].module_name = "SGR"
    refused("module_name='SGR'", tmp_path, c)


def test_wrong_dataset_is_refused(tmp_path):
    path = save(tmp_path, container_of("sgr", "f30k"))
    with pytest.raises(CheckpointError, match="trained on f30k") as exc:
        VSLAdapter.load_official(path, dataset="coco")
    one_line(exc, path)


def test_vocabulary_rows_must_match_data_name(tmp_path):
    c = container_of("sgr", "f30k")
    c["opt"].data_name = "coco_precomp"  # rows say f30k
    refused("8481 rows.*coco SCAN vocabulary.*f30k", tmp_path, c)
    c = container_of("sgr", "coco")
    c["model"][1]["embed.weight"] = torch.zeros(11354, 6)  # an ESA-style extra <mask> row
    refused("11354 rows", tmp_path, c, "mask.pth.tar")


def test_checkpoint_of_another_method(tmp_path):
    c = container_of("sgr")
    c["model"] = c["model"][:2]  # ESA / VSE-style: [img_enc, txt_enc]
    refused("another method", tmp_path, c)
    refused("lacks", tmp_path, {"state_dict": {}}, "other.pth")


def test_missing_and_unexpected_keys_are_named(tmp_path):
    c = container_of("sgr")
    del c["model"][2]["sim_eval_w.bias"]
    c["model"][0]["extra.weight"] = torch.zeros(1)
    refused("unexpected keys \\[extra.weight\\]", tmp_path, c)
    c = container_of("sgr")
    del c["model"][2]["sim_eval_w.bias"]
    refused("missing keys \\[sim_eval_w.bias\\]", tmp_path, c, "missing.pth.tar")


def test_shape_mismatch_is_named(tmp_path):
    c = container_of("saf")
    c["model"][2]["sim_tranloc_w.weight"] = torch.zeros(9, 16)
    refused("sim_tranloc_w.weight", tmp_path, c)


def test_truncated_file(tmp_path):
    path = save(tmp_path, container_of("sgr"))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated") as exc:
        VSLAdapter.load_official(path)
    one_line(exc, path)


def test_pickled_code_is_not_executed(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("pwned",))

    refused("refused to unpickle", tmp_path, {"model": Payload(), "opt": None})


def test_demo_checkpoint_keeps_its_dataset_and_region_count(tmp_path):
    adapter = VSLAdapter.build("saf", "demo", dict(DIMS, num_regions=12))
    path = save(tmp_path, adapter.official_checkpoint(epoch=1))
    loaded = VSLAdapter.load_official(path, dataset="demo")
    assert loaded.dataset == "demo" and loaded.options["vocab"] == "coco" and loaded.options["num_regions"] == 12
    with pytest.raises(ValueError, match="12 regions"):
        loaded.encode_images(torch.zeros(1, 36, 12))


def test_sgraf_pair_loads_one_file_of_each_module(tmp_path):
    from methods.vsl.adapter import load_sgraf_pair

    sgr = save(tmp_path, container_of("sgr", "f30k"), "SGR+VSL_F30K.pth.tar")
    saf = save(tmp_path, container_of("saf", "f30k"), "SAF+VSL_F30K.pth.tar")
    a, b = load_sgraf_pair(sgr, saf)
    assert (a.variant, b.variant, a.dataset, b.dataset) == ("sgr", "saf", "f30k", "f30k")
    with pytest.raises(CheckpointError, match="variant 'sgr' was asked") as exc:
        load_sgraf_pair(saf, sgr)
    one_line(exc, saf)
    coco_saf = save(tmp_path, container_of("saf", "coco"), "SAF+VSL_COCO.pth.tar")
    with pytest.raises(CheckpointError, match="trained on coco") as exc:
        load_sgraf_pair(sgr, coco_saf)
    one_line(exc, coco_saf)
