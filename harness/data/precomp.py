"""Readers and checks for SCAN precomp folders (`<split>_ims.npy`, `<split>_caps.txt`, `<split>_ids.txt`).

Accepted layouts for `--data-root DIR` and dataset `coco` (likewise `f30k`):
`DIR/coco/precomp/`, `DIR/coco_precomp/`, `DIR/precomp/`, or DIR itself holding the split files.
Images are memory-mapped. COCO `testall` is also accepted with its images stored once per caption
(25000 rows, each image repeated 5 times, as some releases do): rows are then de-duplicated.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harness.core.errors import ItrbenchError


class DataError(ItrbenchError):
    """A data folder or file that does not have the expected layout or content."""


@dataclass
class PrecompSplit:
    path: Path
    split: str
    images: np.ndarray  # (N_img, R, D) float32, usually a memmap
    captions: list[str]
    ids: list[str] | None
    captions_per_image: int

    @property
    def n_images(self) -> int:
        return int(self.images.shape[0])

    @property
    def image_of_caption(self) -> np.ndarray:
        return np.arange(len(self.captions)) // self.captions_per_image


def candidate_dirs(root: str | Path, dataset: str | None) -> list[Path]:
    root = Path(root)
    out = []
    if dataset:
        out += [root / dataset / "precomp", root / f"{dataset}_precomp", root / dataset]
    out += [root / "precomp", root]
    return out


def resolve_precomp_dir(root: str | Path, split: str, dataset: str | None = None) -> Path:
    """The folder under `root` that holds `<split>_caps.txt`; errors list where it looked."""
    root = Path(root)
    if not root.exists():
        raise DataError(f"{root}: data root does not exist")
    tried = candidate_dirs(root, dataset)
    for d in tried:
        if (d / f"{split}_caps.txt").is_file() or (d / f"{split}_ims.npy").is_file():
            return d
    raise DataError(f"{root}: no {split}_caps.txt / {split}_ims.npy found; looked in "
                    + ", ".join(str(t) for t in tried)
                    + f". Expected the SCAN precomp layout, e.g. {root}/{dataset or 'coco'}/precomp/{split}_ims.npy")


def read_text_file(path: Path, what: str) -> str:
    """A UTF-8 text file (universal newlines); DataError naming the file when missing or not UTF-8."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: missing {what}") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read the {what} ({exc.strerror or exc})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DataError(f"{path}: not UTF-8 text (byte {exc.start}, line {line}: {exc.reason}); re-save the "
                        f"{what} as UTF-8") from None
    return text.replace("\r\n", "\n").replace("\r", "\n")


def read_captions(path: Path) -> list[str]:
    if not path.is_file():
        raise DataError(f"{path}: missing caption file (one caption per line)")
    lines = read_text_file(path, "caption file (one caption per line)").split("\n")
    if lines and lines[-1] == "":
        lines = lines[:-1]
    empty = [i + 1 for i, line in enumerate(lines) if not line.strip()]
    if empty:
        raise DataError(f"{path}: empty caption on line {empty[0]} ({len(empty)} empty lines); every line must hold "
                        "one caption")
    return lines


def read_id_lines(path: Path) -> list[str]:
    """Non-empty lines of an ids file (`<split>_ids.txt`, `<split>_capids.txt`), stripped."""
    text = read_text_file(path, "ids file (one id per line)")
    return [line.strip() for line in text.split("\n") if line.strip()]


def caption_text_problems(path: Path, captions: list[str]) -> list[str]:
    """Characters that break or skew tokenisation: a byte-order mark, NUL or other control characters."""
    problems = []
    if captions and captions[0].startswith("\ufeff"):
        problems.append(f"{path}: starts with a byte-order mark (U+FEFF), which becomes part of the first caption; "
                        "re-save the file as UTF-8 without BOM")
    for name, bad in (("NUL bytes", lambda c: "\x00" in c),
                      ("byte-order marks inside lines", lambda c: "\ufeff" in c[1:]),
                      ("control characters", lambda c: any(ord(ch) < 32 and ch not in "\t\x00" for ch in c))):
        lines = [i + 1 for i, c in enumerate(captions) if bad(c)]
        if lines:
            problems.append(f"{path}: {name} on line {lines[0]} ({len(lines)} line(s)); remove them")
    return problems


def open_images(path: Path) -> np.ndarray:
    if not path.is_file():
        raise DataError(f"{path}: missing image feature file (float32 array N x R x D)")
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as exc:  # numpy's header parser raises ValueError, SyntaxError, tokenize errors, EOFError ...
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"{path}: not a plain .npy array ({text}); the file may be truncated or corrupt: "
                        "download or extract it again") from None
    if not isinstance(arr, np.ndarray):  # np.load of an .npz archive
        raise DataError(f"{path}: an .npz archive, expected a plain .npy array (images, regions, dim)")
    if arr.ndim == 2:  # one vector per image: treat as a single region
        arr = arr[:, None, :]
    if arr.ndim != 3:
        raise DataError(f"{path}: expected shape (images, regions, dim), found {arr.shape}")
    if arr.dtype not in (np.float32, np.float16, np.float64):
        raise DataError(f"{path}: expected float features, found dtype {arr.dtype}")
    if arr.shape[1] == 0 or arr.shape[2] == 0:
        raise DataError(f"{path}: empty feature rows: shape {arr.shape}")
    return arr


def load_precomp(root: str | Path, split: str, dataset: str | None = None, captions_per_image: int = 5,
                 feature_dim: int | None = None) -> PrecompSplit:
    """Open one split; raises DataError naming the file and the fix when counts or shapes are wrong."""
    folder = resolve_precomp_dir(root, split, dataset)
    caps_path, ims_path = folder / f"{split}_caps.txt", folder / f"{split}_ims.npy"
    captions = read_captions(caps_path)
    images = open_images(ims_path)
    n_img, n_cap = images.shape[0], len(captions)
    if n_img == 0 or n_cap == 0:
        raise DataError(f"{ims_path}: {n_img} images and {n_cap} captions in {caps_path.name}; the split is empty")
    if n_img == n_cap and n_cap % captions_per_image == 0 and n_img > 1:
        images = _dedupe_repeated(images, ims_path, captions_per_image)
        n_img = images.shape[0]
    if n_cap != captions_per_image * n_img:
        raise DataError(f"{ims_path}: {n_img} images but {caps_path.name} has {n_cap} captions "
                        f"(expected {captions_per_image} per image: {captions_per_image * n_img})")
    if feature_dim is not None and images.shape[2] != feature_dim:
        raise DataError(f"{ims_path}: region feature dim {images.shape[2]}, but the model expects {feature_dim} "
                        f"(its img_dim); use the features it was trained on, or a checkpoint for {images.shape[2]}-d "
                        "features")
    ids = None
    ids_path = folder / f"{split}_ids.txt"
    if ids_path.is_file():
        ids = read_id_lines(ids_path)
    return PrecompSplit(folder, split, images, captions, ids, captions_per_image)


def _dedupe_repeated(images: np.ndarray, path: Path, k: int) -> np.ndarray:
    """Images stored once per caption: keep every k-th row after checking the repeats are equal."""
    n = images.shape[0] // k
    probe = np.unique(np.linspace(0, n - 1, num=min(n, 16)).astype(int))
    for i in probe:
        block = np.asarray(images[i * k:(i + 1) * k])
        if not np.all(block == block[0]):
            raise DataError(f"{path}: {images.shape[0]} image rows for as many captions, but rows "
                            f"{i * k}..{i * k + k - 1} differ; expected each image repeated {k} times")
    return images[::k]


def scan_features(images: np.ndarray, path: Path, chunk: int = 256) -> list[str]:
    """Problems in feature values: NaN or infinite entries (checked in chunks of a memmap)."""
    problems = []
    for a in range(0, images.shape[0], chunk):
        block = np.asarray(images[a:a + chunk], dtype=np.float32)
        bad = ~np.isfinite(block)
        if bad.any():
            rows = np.unique(np.nonzero(bad)[0]) + a
            kinds = []
            if np.isnan(block).any():
                kinds.append("NaN")
            if np.isneginf(block).any():
                kinds.append("-inf")
            if np.isposinf(block).any():
                kinds.append("+inf")
            problems.append(f"{path}: {'/'.join(kinds)} values in image rows {rows[:5].tolist()}"
                            f"{' ...' if len(rows) > 5 else ''}; re-extract or re-download the features")
            break
    return problems


def check_precomp(root: str | Path, dataset: str, splits: list[str], feature_dim: int | None = 2048,
                  expected_images: dict[str, int] | None = None, captions_per_image: int = 5) -> list[str]:
    """Every problem of a precomp layout, each naming the file and the fix (empty list = fine)."""
    problems: list[str] = []
    for split in splits:
        try:
            data = load_precomp(root, split, dataset, captions_per_image)
        except DataError as exc:
            problems.append(str(exc))
            continue
        ims_path = data.path / f"{split}_ims.npy"
        if feature_dim is not None and data.images.shape[2] != feature_dim:
            problems.append(f"{ims_path}: region feature dim {data.images.shape[2]}, expected {feature_dim} "
                            "(BUTD features are 36 x 2048)")
        want = (expected_images or {}).get(split)
        if want is not None and data.n_images != want:
            problems.append(f"{ims_path}: {data.n_images} images, the {dataset} {split} split has {want}")
        problems += scan_features(data.images, ims_path)
        problems += caption_text_problems(data.path / f"{split}_caps.txt", data.captions)
        if data.ids is not None and len(data.ids) not in (data.n_images, len(data.captions)):
            problems.append(f"{data.path / f'{split}_ids.txt'}: {len(data.ids)} ids for {data.n_images} images / "
                            f"{len(data.captions)} captions")
        capids = data.path / f"{split}_capids.txt"
        if capids.is_file():
            try:
                n = len(read_id_lines(capids))
            except DataError as exc:
                problems.append(str(exc))
            else:
                if n != len(data.captions):
                    problems.append(f"{capids}: {n} caption ids for {len(data.captions)} captions in "
                                    f"{split}_caps.txt; expected one per caption")
    return problems
