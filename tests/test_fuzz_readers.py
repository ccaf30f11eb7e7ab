"""Fuzzing every reader of user files with hypothesis: truncated, garbled, wrong dtype or shape, random bytes.

Property: a reader either returns a correct result or raises the project's own error (an ItrbenchError)
whose one-line message names the file; never another exception, never a hang, and memory (traced Python
and numpy allocations; the declared tensor bytes for checkpoints) within a small multiple of the file size.
A few examples per reader by default (seconds); set ITRBENCH_FUZZ_EXAMPLES=500 for a long run.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import signal
import tempfile
import tracemalloc
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas  # noqa: F401 - imported here so its import does not count in a reader's traced memory
import pytest
import torch
import yaml
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from harness.core.checkpoints import load_container
from harness.core.errors import CorruptFileWarning, ItrbenchError
from harness.core.results import read_state
from harness.data.cusa_json import check_cusa_json, load_cusa_split, load_image
from harness.data.image_retrieval import load_inaturalist, load_inshop, load_sop
from harness.data.matrices import load_matrix, load_owner
from harness.data.precomp import check_precomp, load_precomp
from harness.data.senteval import read_sick, read_sts_subset, read_stsb
from harness.eval.metrics.cxc import read_cxc_csv
from harness.eval.metrics.ids import canonical_ids, load_coco_test_ids, read_id_lists
from harness.eval.scoring import TileCache
from harness.spec.registry import Registry, load_registry, load_registry_file

EXAMPLES = int(os.environ.get("ITRBENCH_FUZZ_EXAMPLES", "0"))
TIME_LIMIT = 30  # seconds per example: a reader that takes longer on a file of a few KB hangs
MEMORY_FACTOR, MEMORY_SLACK = 32, 8 << 20


def fuzz(default: int):
    """A bounded number of examples (derandomized: the same ones every run) unless ITRBENCH_FUZZ_EXAMPLES is
    set. No explain phase: it traces every line, which makes a pure-Python parser look hung."""
    return settings(max_examples=EXAMPLES or default, deadline=None, database=None, derandomize=not EXAMPLES,
                    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# ---- mutations --------------------------------------------------------------------------------------

@st.composite
def mutated(draw: st.DrawFn, data: bytes, text: bool = False) -> bytes:
    """`data` unchanged, truncated, overwritten, with bytes inserted or deleted, or replaced by garbage."""
    kinds = ["same", "truncate", "overwrite", "insert", "delete", "garbage"] + (["text"] if text else [])
    kind = draw(st.sampled_from(kinds))
    n = len(data)
    if kind == "truncate":
        return data[:draw(st.integers(0, max(0, n - 1)))]
    if kind == "overwrite":
        k = draw(st.integers(0, n))
        junk = draw(st.binary(min_size=1, max_size=32))
        return data[:k] + junk + data[k + len(junk):]
    if kind == "insert":
        k = draw(st.integers(0, n))
        return data[:k] + draw(st.binary(min_size=1, max_size=32)) + data[k:]
    if kind == "delete":
        a = draw(st.integers(0, n))
        return data[:a] + data[min(n, a + draw(st.integers(1, 64))):]
    if kind == "garbage":
        return draw(st.binary(max_size=512))
    if kind == "text":
        lines = draw(st.lists(st.text(max_size=40), max_size=12))
        return "\n".join(lines).encode("utf-8", "surrogatepass")
    return data


@contextlib.contextmanager
def time_limit(seconds: int) -> Iterator[None]:
    def expired(signum: int, frame: Any) -> None:
        raise TimeoutError(f"reader still running after {seconds} s")

    old = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def holds(read: Callable[[], Any], files: list[Path], valid: Callable[[Any], None] = lambda r: None,
          memory: bool = True) -> Any:
    """Run `read`; its result must pass `valid`, or it raises an ItrbenchError naming one of `files`.
    Returns the result (None after an error)."""
    size = sum(p.stat().st_size for p in files if p.is_file())
    if memory:
        tracemalloc.start()
    try:
        with time_limit(TIME_LIMIT), warnings.catch_warnings():
            warnings.simplefilter("ignore", CorruptFileWarning)
            result = read()
    except ItrbenchError as exc:
        message = str(exc)
        assert any(p.name in message for p in files), f"error does not name {[p.name for p in files]}: {message}"
        assert "\n" not in message.strip(), f"not one line: {message!r}"
        return None
    finally:
        if memory:
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            assert peak <= MEMORY_FACTOR * size + MEMORY_SLACK, f"{peak:,} bytes traced for {size:,} bytes of files"
    valid(result)
    return result


@pytest.fixture(autouse=True)
def _quiet_numpy():
    with np.errstate(all="ignore"):
        yield


# ---- SCAN precomp -----------------------------------------------------------------------------------

CAPTIONS = ["a man rides a red bike", "a dog on the grass", "two people near a bus", "a cat on a sofa",
            "a plate of food", "a boat on the water"]


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=True)
    return buf.getvalue()


def _precomp_files() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    return {"testall_ims.npy": _npy_bytes(rng.random((2, 3, 4), dtype=np.float32)),
            "testall_caps.txt": ("\n".join(CAPTIONS[j % 6] for j in range(10)) + "\n").encode(),
            "testall_ids.txt": b"391895\n522418\n"}


def _valid_split(split: Any) -> None:
    assert split.n_images >= 1 and len(split.captions) == 5 * split.n_images
    assert split.images.ndim == 3 and split.images.dtype.kind == "f"
    assert all(isinstance(c, str) and c.strip() for c in split.captions)


@fuzz(40)
@given(which=st.sampled_from(sorted(_precomp_files())), data=st.data())
def test_precomp_readers(which, data):
    files = _precomp_files()
    files[which] = data.draw(mutated(files[which], text=which.endswith(".txt")))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name, blob in files.items():
            (root / name).write_bytes(blob)
        paths = [root / name for name in files]
        holds(lambda: load_precomp(root, "testall"), paths, _valid_split)
        problems = holds(lambda: check_precomp(root, "coco", ["testall"], feature_dim=None), paths)
        assert isinstance(problems, list) and all(isinstance(p, str) for p in problems)


@fuzz(40)
@given(array=hnp.arrays(dtype=st.sampled_from([np.float32, np.float16, np.float64, np.int64, np.uint8, np.bool_,
                                               np.complex64, np.dtype(">f4"), np.dtype("U3")]),
                        shape=hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5)))
def test_precomp_features_of_any_dtype_and_shape(array):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "test_ims.npy").write_bytes(_npy_bytes(array))
        n = array.shape[0] if array.ndim else 1
        (root / "test_caps.txt").write_text("\n".join(CAPTIONS[j % 6] for j in range(5 * n)) + "\n")
        holds(lambda: load_precomp(root, "test"), [root / "test_ims.npy", root / "test_caps.txt"], _valid_split)


# ---- COCO id files ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def id_files() -> dict[str, bytes]:
    canon = canonical_ids()
    return {"testall_ids.txt": "".join(f"{i}\n" for i in np.repeat(canon.image_ids, 5)).encode(),
            "testall_capids.txt": "".join(f"{c}\n" for c in canon.caption_ids).encode()}


@fuzz(20)
@given(which=st.sampled_from(["testall_ids.txt", "testall_capids.txt"]), data=st.data())
def test_coco_id_files(id_files, which, data):
    files = dict(id_files)
    files[which] = data.draw(mutated(files[which], text=True))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name, blob in files.items():
            (root / name).write_bytes(blob)

        def valid(ids: Any) -> None:
            assert ids.image_ids.shape == (5000,) and ids.caption_ids.shape == (25000,)

        holds(lambda: load_coco_test_ids(root, warn=False), [root / which], valid)


@fuzz(30)
@given(data=st.data())
def test_id_list_json(data):
    blob = data.draw(mutated(json.dumps({"1": [2, 3], "4": [5]}).encode(), text=True))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "gt.json"
        path.write_bytes(blob)

        def valid(lists: Any) -> None:
            assert lists.keys.dtype == np.int64 and int(lists.sizes.sum()) == lists.values.size

        holds(lambda: read_id_lists(path), [path], valid)


# ---- CUSA json, images --------------------------------------------------------------------------------

def _cusa_json() -> bytes:
    rows = [{"image_path": f"images/{i}.png", "caption": CAPTIONS[(i + j) % 6], "image_id": f"img{i}"}
            for i in range(3) for j in range(2)]
    return json.dumps(rows).encode()


@fuzz(40)
@given(data=st.data())
def test_cusa_json(data):
    blob = data.draw(mutated(_cusa_json(), text=True))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "new_test.json").write_bytes(blob)

        def valid(split: Any) -> None:
            assert split.n_images >= 1 and split.n_captions == len(split.image_of_caption)
            assert split.image_of_caption.max() == split.n_images - 1

        holds(lambda: load_cusa_split(root, "test", check_images=False), [root / "new_test.json"], valid)
        problems = holds(lambda: check_cusa_json(root, "test"), [root / "new_test.json"])
        assert isinstance(problems, list) and problems  # the images do not exist


def _png() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (6, 5), (200, 30, 40)).save(buf, format="PNG")
    return buf.getvalue()


@fuzz(40)
@given(data=st.data())
def test_image_files(data):
    blob = data.draw(mutated(_png()))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "0.png"
        path.write_bytes(blob)
        holds(lambda: load_image(path), [path], lambda im: im.mode == "RGB" and im.size[0] >= 1, memory=False)


# ---- SentEval -----------------------------------------------------------------------------------------

@fuzz(30)
@given(which=st.sampled_from(["input", "gs", "stsb", "sick"]), data=st.data())
def test_senteval(which, data):
    files = {"STS/STS12-en-test/STS.input.MSRpar.txt": b"a man rides\ta man is riding\nthe sky\ta cat\n",
             "STS/STS12-en-test/STS.gs.MSRpar.txt": b"4.5\n0.2\n",
             "STS/STSBenchmark/sts-test.csv": b"main\tfile\t2012\t1\t5.0\ta plane\tan airplane\n"
                                             b"main\tfile\t2012\t2\t0.5\ta dog\ta car\n",
             "SICK/SICK_test_annotated.txt": b"pair_ID\tsentence_A\tsentence_B\trelatedness_score\tentailment\n"
                                             b"1\ta boy\ta child\t4.5\tE\n2\ta dog\ta car\t1.0\tN\n"}
    key = {"input": "STS/STS12-en-test/STS.input.MSRpar.txt", "gs": "STS/STS12-en-test/STS.gs.MSRpar.txt",
           "stsb": "STS/STSBenchmark/sts-test.csv", "sick": "SICK/SICK_test_annotated.txt"}[which]
    files[key] = data.draw(mutated(files[key], text=True))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name, blob in files.items():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_bytes(blob)

        def valid(pairs: Any) -> None:
            assert len(pairs.left) == len(pairs.right) == len(pairs.gold) and np.isfinite(pairs.gold).all()

        read = {"input": lambda: read_sts_subset(root / "STS" / "STS12-en-test", "MSRpar"),
                "gs": lambda: read_sts_subset(root / "STS" / "STS12-en-test", "MSRpar"),
                "stsb": lambda: read_stsb(root), "sick": lambda: read_sick(root)}[which]
        holds(read, [root / key], valid)


# ---- image retrieval lists ----------------------------------------------------------------------------

@fuzz(30)
@given(which=st.sampled_from(["sop", "inshop", "inaturalist"]), data=st.data())
def test_image_retrieval_lists(which, data):
    files = {"sop": ("sop/Stanford_Online_Products/Ebay_test.txt",
                     b"image_id class_id super_class_id path\n1 11318 1 bike/a.JPG\n2 11319 1 bike/b.JPG\n", load_sop),
             "inshop": ("inshop/Eval/list_eval_partition.txt",
                        b"3\nimage_name item_id evaluation_status\nimg/a/id_00000002/1.jpg id_00000002 query\n"
                        b"img/a/id_00000002/2.jpg id_00000002 gallery\nimg/b/id_00000004/1.jpg id_00000004 train\n",
                        load_inshop),
             "inaturalist": ("inaturalist/Inat_dataset_splits/Inaturalist_test_set1.txt",
                             b"train_val2018/Plantae/7477/a.jpg\ntrain_val2018/Aves/3100/b.jpg\n", load_inaturalist)}
    rel, blob, reader = files[which]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / rel).parent.mkdir(parents=True)
        (root / rel).write_bytes(data.draw(mutated(blob, text=True)))

        def valid(ds: Any) -> None:
            assert len(ds.paths) == len(ds.labels) and ds.labels.dtype == np.int64

        holds(lambda: reader(root), [root / rel], valid)


# ---- CxC csv -------------------------------------------------------------------------------------------

@fuzz(30)
@given(data=st.data())
def test_cxc_csv(data):
    blob = (b"caption,image,agg_score,sampling_method\n"
            b"COCO_val2014:sentid:770337,COCO_val2014_000000391895.jpg,4.0,c2i_intra\n"
            b"COCO_val2014:sentid:771687,COCO_val2014_000000391895.jpg,2.5,c2i_intra\n")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "sits_test.csv"
        path.write_bytes(data.draw(mutated(blob, text=True)))

        def valid(out: Any) -> None:
            a, b, score = out
            assert a.dtype == b.dtype == np.int64 and len(a) == len(b) == len(score)

        holds(lambda: read_cxc_csv(path, "sits"), [path], valid)


# ---- checkpoints -----------------------------------------------------------------------------------

def _checkpoint(legacy: bool) -> bytes:
    buf = io.BytesIO()
    container = {"model": {"w": torch.arange(12, dtype=torch.float32).reshape(3, 4), "b": torch.ones(5)},
                 "opt": argparse.Namespace(lr=0.1, data_name="f30k_precomp"), "epoch": 3}
    torch.save(container, buf, _use_new_zipfile_serialization=not legacy)
    return buf.getvalue()


@fuzz(60)
@given(legacy=st.booleans(), data=st.data())
def test_checkpoints(legacy, data):
    blob = data.draw(mutated(_checkpoint(legacy)))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model_best.pth"
        path.write_bytes(blob)

        def valid(container: Any) -> None:
            assert isinstance(container, dict)
            total = 0
            stack = [container]
            while stack:
                x = stack.pop()
                if isinstance(x, torch.Tensor):
                    total += x.untyped_storage().nbytes()
                elif isinstance(x, dict):
                    stack.extend(x.values())
                elif isinstance(x, (list, tuple)):
                    stack.extend(x)
            assert total <= 2 * len(blob) + (1 << 20), f"{total:,} tensor bytes from a {len(blob):,}-byte file"

        holds(lambda: load_container(path), [path], valid, memory=False)


# ---- registry YAML ----------------------------------------------------------------------------------

def _registry_yaml() -> bytes:
    doc = {"datasets": {"fuzzset": {"description": "a fuzzed set", "split": "test", "validation_split": "dev",
                                    "protocols": ["recall"], "images": 10, "captions_per_image": 5,
                                    "layout": "precomp"}},
           "methods": {"fuzzm": {"title": "Fuzz method", "adapter": "fuzz_module:FuzzAdapter",
                                 "recipes": {"default": {"epochs": 1, "batch_size": 4}},
                                 "variants": {"a": {"description": "the model", "options": {"dim": 4},
                                                    "checkpoints": {"fuzzset": {"url": "https://example.org/x",
                                                                                "files": ["a.pth"]}}}},
                                 "reported": [{"variant": "a", "dataset": "fuzzset", "protocol": "recall",
                                               "source": "Table 1", "metrics": {"rsum": 400.0}}]}}}
    return yaml.safe_dump(doc, sort_keys=False).encode()


@fuzz(60)
@given(data=st.data())
def test_registry_files(data):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "user_registry.yaml"
        path.write_bytes(data.draw(mutated(_registry_yaml(), text=True)))
        holds(lambda: load_registry_file(path), [path], lambda r: isinstance(r, Registry), memory=False)


@fuzz(8)
@given(data=st.data())
def test_registry_files_on_top_of_the_project_registry(data):  # parses the project's registry too: slower
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "user_registry.yaml"
        path.write_bytes(data.draw(mutated(_registry_yaml(), text=True)))
        holds(lambda: load_registry(path), [path], lambda r: isinstance(r, Registry), memory=False)


# ---- result files and tile caches ---------------------------------------------------------------------

@fuzz(40)
@given(name=st.sampled_from(["metrics.json", "config.yaml", "env.json"]), data=st.data())
def test_result_files(name, data):
    original = {"metrics.json": json.dumps({"protocol": "recall", "rsum": 412.5, "i2t": {"r1": 40.0}}) + "\n",
                "config.yaml": yaml.safe_dump({"method": "esa", "key": "abc", "recipe": {"lr": 0.1}}),
                "env.json": json.dumps({"seed": 0, "device": "cpu"}) + "\n"}[name].encode()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        blob = data.draw(mutated(original, text=True))
        path.write_bytes(blob)
        result = holds(lambda: read_state(path), [path])
        if result is None:  # unreadable: moved aside, not deleted
            [aside] = Path(tmp).glob(f"{name}.corrupt-*")
            assert aside.read_bytes() == blob and not path.exists()
        else:
            assert isinstance(result, dict) and path.read_bytes() == blob


def _tile_cache_bytes() -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tiles_0.h5"
        cache = TileCache(path, (4, 6), (2, 3), "fingerprint")
        cache.write(0, 2, 0, 3, np.full((2, 3), 0.5, np.float32))
        cache.close()
        return path.read_bytes()


@fuzz(40)
@given(data=st.data())
def test_tile_caches(data):
    blob = data.draw(mutated(_tile_cache_bytes()))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tiles_0.h5"
        path.write_bytes(blob)

        def read() -> list[np.ndarray]:
            cache = TileCache(path, (4, 6), (2, 3), "fingerprint")
            try:
                return [cache.read(a, a + 2, c, c + 3) for a in (0, 2) for c in (0, 3) if cache.done(a, c)]
            finally:
                cache.close()

        def valid(tiles: list[np.ndarray]) -> None:
            assert all(t.shape == (2, 3) and t.dtype == np.float32 for t in tiles)
            with h5py.File(path, "r") as f:  # what remains at `path` is a usable cache
                assert f["done"].shape == (2, 2)

        holds(read, [path], valid, memory=False)


# ---- similarity matrices (`metrics --sims`, `evaluate` outputs) ----------------------------------------

def _matrix_bytes(suffix: str) -> bytes:
    sims = np.arange(12, dtype=np.float32).reshape(3, 4) / 12
    buf = io.BytesIO()
    if suffix == ".npy":
        np.save(buf, sims)
    elif suffix == ".npz":
        np.savez(buf, sims=sims)
    elif suffix == ".pt":
        torch.save({"sims": torch.from_numpy(sims)}, buf)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            with h5py.File(Path(tmp) / "m.h5", "w") as f:
                f["sims"] = sims
            return (Path(tmp) / "m.h5").read_bytes()
    return buf.getvalue()


@fuzz(40)
@given(suffix=st.sampled_from([".npy", ".npz", ".pt", ".h5"]), data=st.data())
def test_matrix_files(suffix, data):
    blob = data.draw(mutated(_matrix_bytes(suffix)))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"sims{suffix}"
        path.write_bytes(blob)

        def valid(arr: np.ndarray) -> None:
            assert arr.ndim == 2 and arr.dtype in (np.float32, np.float64)
            assert arr.nbytes <= 2 * len(blob) + (1 << 20)

        holds(lambda: load_matrix(path), [path], valid, memory=suffix in (".npy", ".npz"))


# ---- crafted .npy headers, any dtype and shape; caption-to-image mappings (`--image-of-caption`) --------

DTYPES = ["<f2", "<f4", ">f4", "<f8", "<f16", "<i1", "<u2", "<i4", ">i8", "<u8", "|b1", "<c8", "<U3", "|O", "|V4",
          "<M8[s]", "[('a', '<f4')]"]


@st.composite
def npy_blobs(draw: st.DrawFn) -> bytes:
    """A .npy file with a random (possibly lying) header: dtype, shape (up to absurd sizes), order, and any
    number of data bytes after it."""
    shape = tuple(draw(st.lists(st.one_of(st.integers(0, 6), st.integers(0, 2**44)), max_size=3)))
    header = {"descr": draw(st.sampled_from(DTYPES)), "fortran_order": draw(st.booleans()), "shape": shape}
    buf = io.BytesIO()
    try:
        np.lib.format.write_array_header_1_0(buf, header)
    except ValueError:
        buf = io.BytesIO()
        np.lib.format.write_array_header_2_0(buf, header)
    return buf.getvalue() + draw(st.binary(max_size=256))


def _valid_scores(arr: np.ndarray) -> None:
    assert arr.ndim == 2 and arr.size > 0 and arr.dtype in (np.float32, np.float64)


@fuzz(60)
@given(blob=st.one_of(npy_blobs(), st.builds(_npy_bytes, hnp.arrays(
    dtype=st.sampled_from([np.float16, np.float32, np.float64, np.int8, np.int32, np.int64, np.uint64, np.bool_,
                           np.complex64, np.dtype(">f8"), np.dtype("U2")]),
    shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5)))))
def test_matrix_npy_of_any_header_dtype_and_shape(blob):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "sims.npy"
        path.write_bytes(blob)
        arr = holds(lambda: load_matrix(path), [path], _valid_scores)
        if arr is not None:  # what was read is the file's numbers, unchanged
            raw = np.load(path, allow_pickle=False)
            assert np.array_equal(arr, raw.astype(arr.dtype), equal_nan=True) and np.array_equal(
                arr.astype(raw.dtype), raw, equal_nan=raw.dtype.kind == "f")


@fuzz(60)
@given(entries=st.one_of(st.lists(st.integers(-3, 7), max_size=12),
                         st.lists(st.integers(0, 3), min_size=1, max_size=12).map(sorted)),
       dtype=st.sampled_from([np.int64, np.int32, np.uint8, np.uint64, np.float32, np.bool_]),
       n_images=st.integers(1, 5), data=st.data())
def test_mapping_reader(entries, dtype, n_images, data):
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        owner = np.array(entries).astype(dtype)
    blob = data.draw(mutated(_npy_bytes(owner)))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "image_of_caption.npy"
        path.write_bytes(blob)

        def valid(got: np.ndarray) -> None:  # accepted: image rows in order, every image captioned
            assert got.dtype == np.int64 and got.ndim == 1 and len(got) == len(entries)
            assert got[0] == 0 and got[-1] == n_images - 1 and set(np.diff(got).tolist()) <= {0, 1}

        holds(lambda: load_owner(path, len(entries), n_images), [path], valid)
