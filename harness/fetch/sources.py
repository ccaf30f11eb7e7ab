"""Where evaluation data comes from: the links the official repositories publish, and the manual steps.

`fetch data --dataset NAME` downloads `file` (trying each `--mirror BASE` at `BASE/data/<file>` first, then
`urls`), unpacks the folder `pick` out of it into `<data-root>/<target>`, and runs check-data. Sizes and
hashes are null where the file could not be downloaded when this table was written; fetch prints what it
computed. ECCV Caption and CxC ground truth ship with itrbench's dependencies: fetching them verifies the
installed copies (and restores a missing CxC file from its pinned upstream commit).
"""

from __future__ import annotations

from dataclasses import dataclass

SCAN_DATA_ZIP = "https://scanproject.blob.core.windows.net/scan-data/data.zip"
VSE_INFTY_DROPBOX = "https://www.dropbox.com/sh/qp3fw9hqegpm914/AAC3D3kqkh5i4cgZOfVmlWCDa?dl=0"
SIMCSE_SENTEVAL_TAR = "https://huggingface.co/datasets/princeton-nlp/datasets-for-simcse/resolve/main/senteval.tar"
CXC_COMMIT = "7d6634be173a6f6a16ab1e61bebc217de8444513"
CXC_RAW = f"https://raw.githubusercontent.com/google-research-datasets/Crisscrossed-Captions/{CXC_COMMIT}/data"
# sha256 of the CxC test CSVs bundled in harness/assets/cxc (copied from the commit above)
CXC_FILES = {
    "sits_test.csv": "f92fd6d36329fb52fd5429eb5c2211f0ab3ad86bb737323f415375a144697ce6",
    "sis_test.csv": "01f2ceb349414aff84065c0548837d1630408283601a5c97d86c2f6681cc1571",
    "sts_test.csv": "33eea25bf41061c513ef4b39282aaf64bdf9b17ff233e343a6d6ae44d73e0272",
}
ECCV_FILES = ("coco_test_ids.npy", "eccv_image_to_caption.json", "eccv_caption_to_image.json",
              "cxc_image_to_caption.json", "cxc_caption_to_image.json", "original_image_to_caption.json",
              "original_caption_to_image.json")


@dataclass(frozen=True)
class DataSource:
    """One downloadable data set: an archive and the folder of it that the harness reads."""

    dataset: str  # the check-data name
    file: str  # the download's file name (also its mirror path BASE/data/<file>)
    urls: tuple[str, ...]
    archive: str  # zip / tar
    pick: str  # name of the folder to take out of the archive
    target: str  # where it goes under --data-root
    manual: tuple[str, ...]  # exact steps when nothing can be fetched
    keep: tuple[str, ...] = ()  # unpack only members with one of these folder names in their path (all if empty)
    parent: bool = False  # take the folder that holds `pick` (e.g. SentEval's downstream/ holding STS/)
    size: int | None = None
    sha256: str | None = None
    note: str = ""


def _scan(ds: str, test: str) -> DataSource:
    return DataSource(
        dataset=ds, file="data.zip", urls=(SCAN_DATA_ZIP,), archive="zip", pick=f"{ds}_precomp",
        target=f"{ds}/precomp", keep=(f"{ds}_precomp",),
        note="SCAN's data.zip (linked by the ESA, ESL, X-Dim and VSL READMEs) holds coco_precomp and f30k_precomp; "
             "size and sha256 not recorded (the link was not reachable when this table was written)",
        manual=(f"Download SCAN's data.zip ({SCAN_DATA_ZIP}, see https://github.com/kuanghuei/SCAN#download-data) or "
                f"the copy the ESA README links (vse_infty's Dropbox folder {VSE_INFTY_DROPBOX}).",
                f"Unpack it and move its {ds}_precomp folder to DATA/{ds}/precomp (train, dev, {test}: "
                "<split>_ims.npy and <split>_caps.txt).",
                f"Or put data.zip at DIR/data/data.zip and run: python run_all.py fetch data --dataset {ds} "
                "--data-root DATA --mirror file://DIR",
                f"Check it: python run_all.py check-data --dataset {ds} --data-root DATA --splits train,dev,{test}"))


DATA_SOURCES: dict[str, DataSource] = {
    "coco": _scan("coco", "testall"),
    "f30k": _scan("f30k", "test"),
    "senteval": DataSource(
        dataset="senteval", file="senteval.tar", urls=(SIMCSE_SENTEVAL_TAR,), archive="tar", pick="STS",
        target="senteval", keep=("STS", "SICK"), parent=True,
        note="SentEval's downstream data as packed by SimCSE (SentEval/data/downstream/download_dataset.sh); "
             "size and sha256 not recorded",
        manual=(f"Download {SIMCSE_SENTEVAL_TAR} (SimCSE's SentEval/data/downstream/download_dataset.sh), or run "
                "SentEval's data/downstream/get_transfer_data.bash.",
                "Unpack it so that DATA/senteval holds STS/ and SICK/ (SentEval's data/downstream layout).",
                "Check it: python run_all.py check-data --dataset senteval --data-root DATA/senteval; evaluate with "
                "--sts-root DATA/senteval")),
}
# data the harness gets from installed packages: verified, never downloaded into --data-root
BUNDLED = ("eccv", "cxc")
DATA_NAMES = (*DATA_SOURCES, *BUNDLED)
