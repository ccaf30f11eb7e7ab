"""The static site, the tidy export and merged results folders, built from small real result folders."""

from __future__ import annotations

import json
import os
import re
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import pandas as pd
import pytest
from site_results import add_eval, build_results, registry, sims

from harness.cli.app import main
from harness.core.results import ResultStore
from harness.report import write_reports
from harness.report.export import ExportError, number_keys
from harness.report.merge import MergedStore, ResultsFolderError
from harness.report.provenance import hardware_text


class Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.targets: list[str] = []
        self.scripts: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        for key in ("href", "src"):
            if a.get(key):
                self.targets.append(a[key])
        if tag == "script":
            self.scripts.append(a.get("src") or "")


def links_of(page: Path) -> Links:
    parser = Links()
    parser.feed(page.read_text())
    return parser


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("site")
    build_results(tmp / "results")
    write_reports(tmp / "results", tmp / "reports", registry=registry())
    return tmp


def test_site_pages_are_written_linked_and_every_link_resolves(site):
    root = site / "reports" / "site"
    pages = sorted(p.name for p in root.glob("*.html"))
    assert pages == ["dataset-toy.html", "index.html", "paper-alpha.html", "paper-beta.html"]
    assert "](site/index.html)" in (site / "reports" / "index.md").read_text()
    for page in root.glob("*.html"):
        parsed = links_of(page)
        assert parsed.scripts == ["site.js"]  # one local script, no CDN
        for target in parsed.targets:
            assert not re.match(r"^[a-z]+://", target), f"{page.name}: external link {target}"
            if target.startswith("data:"):
                continue
            assert (root / unquote(target)).is_file(), f"{page.name}: {target} does not resolve"
    # every result's config and environment are linked, as copies beside the pages
    index = (root / "index.html").read_text()
    assert index.count('href="files/results/toy/alpha-b-seed1/eval/config.yaml"') == 1
    copied = root / "files" / "results" / "toy" / "alpha-a-official" / "eval" / "env.json"
    assert json.loads(copied.read_text())["hardware"]["cpu"] == "Test CPU <x>"
    # the efficiency plot the markdown made is shown on the dataset page
    assert (root / "plots" / "toy-rsum-vs-scoring-time.png").read_bytes()[:4] == b"\x89PNG"
    assert 'src="plots/toy-rsum-vs-scoring-time.png"' in (root / "dataset-toy.html").read_text()


def test_strings_from_the_registry_and_results_are_escaped(site):
    root = site / "reports" / "site"
    for page in root.glob("*.html"):
        text = page.read_text()
        assert "<script>alert" not in text and "<b>bold" not in text and "<i>method" not in text
    paper = (root / "paper-alpha.html").read_text()
    assert "Alpha-A &lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in paper
    assert "Test CPU &lt;x&gt;" in (root / "index.html").read_text()


def _rows(text: str, first_cell: str) -> list[str]:
    return [r for r in re.findall(r"<tr [^>]*>.*?</tr>", text, flags=re.S) if f"<td>{first_cell}" in r]


def test_verdicts_and_seed_spread_are_the_markdowns(site):
    root, md = site / "reports" / "site", (site / "reports" / "alpha.md").read_text()
    paper = (root / "paper-alpha.html").read_text()
    (a_row,) = _rows(paper, "Alpha-A")
    (b_row,) = _rows(paper, "Alpha-B")
    md_a = next(ln for ln in md.splitlines() if ln.startswith("| Alpha-A"))
    md_b = next(ln for ln in md.splitlines() if ln.startswith("| Alpha-B"))
    # the markdown flags a reported number outside the interval with ⚠; the site's badge says the same
    for md_line, row in ((md_a, a_row), (md_b, b_row)):
        compared = [c for c in md_line.strip("|").split(" | ") if re.search(r"\(\d+\.\d, [+-]", c)]
        assert compared  # cells with a reported number, in column order
        assert re.findall(r'data-verdict="(\w+)"', row) == ["outside" if "⚠" in c else "within" for c in compared]
    assert 'data-verdict="outside"' in a_row  # rsum 300 is far below the reproduced interval
    # a retrained row shows every seed's value and the mean ± 2 std interval
    toy = (root / "dataset-toy.html").read_text()
    (b_toy,) = _rows(toy, "alpha/b")
    assert re.search(r"0: \d+\.\d, 1: \d+\.\d, 2: \d+\.\d", b_toy) and "mean ± 2 std" in b_toy
    assert b_toy.count('class="ws"') == 3  # one tick per seed on the whisker
    assert 'data-source="retrained"' in b_toy and "data-source=\"official\"" in _rows(toy, "beta/x")[0]


def test_hardware_shows_what_env_json_holds():
    assert hardware_text({"hardware": {"cpu": "EPYC", "isa": "avx512", "threads": 8, "gpu": None}}) == \
        "cpu: EPYC; isa: avx512; threads: 8"
    assert hardware_text({"device": "cuda:0", "gpus": ["NVIDIA H100"]}) == "cuda:0 (NVIDIA H100)"
    assert hardware_text({}) == ""


def test_export_has_one_row_per_stored_number(tmp_path):
    build_results(tmp_path / "results")
    out = tmp_path / "all.csv"
    write_reports(tmp_path / "results", tmp_path / "rep", registry=registry(), export=out)
    frame = pd.read_csv(out)
    store = ResultStore(tmp_path / "results")
    expected = 0
    for res in store.finished():
        node = res.metrics["protocols"]["recall"]
        # i2t and t2i: r1, r5, r10, medr, meanr each, and rsum
        assert len(list(number_keys(node))) == 11
        expected += 11
        rows = frame[frame.job == res.path.relative_to(store.root).as_posix()].set_index("key")
        assert rows.loc["rsum", "value"] == pytest.approx(node["rsum"])
        assert (rows.loc["rsum", "ci_low"], rows.loc["rsum", "ci_high"]) == pytest.approx(tuple(node["ci"]["rsum"]))
        assert rows.loc["i2t.r5", "tie_optimistic"] == pytest.approx(node["i2t"]["tie_optimistic"]["r5"])
        assert rows.loc["rsum", "tie_optimistic"] == pytest.approx(node["ties"]["rsum_tie_optimistic"])
        assert rows.loc["t2i.r10", "direction"] == "t2i" and rows.loc["t2i.r10", "metric"] == "r10"
    assert len(frame) == expected == 5 * 11
    seeds = frame[(frame.variant == "b") & (frame.key == "rsum")]
    assert sorted(seeds.seed) == [0, 1, 2] and set(seeds.source) == {"retrained"}
    a = frame[(frame.variant == "a")].iloc[0]
    assert a.source == "official" and a.code_revision == "abc123def456" and a.hardware.startswith("cpu: Test CPU")
    assert a.identity == "toy/alpha-a-official/eval"
    parquet = tmp_path / "all.parquet"
    write_reports(tmp_path / "results", tmp_path / "rep", registry=registry(), export=parquet)
    cols = ["job", "protocol", "key", "value", "ci_low", "ci_high", "tie_optimistic", "seed", "hardware"]
    pd.testing.assert_frame_equal(pd.read_parquet(parquet)[cols], frame[cols], check_dtype=False)


def test_export_to_an_unknown_format_is_refused_in_one_line(tmp_path):
    build_results(tmp_path / "results")
    with pytest.raises(ExportError, match=r"--export .*all\.xlsx: unknown format '\.xlsx'; name a \.csv or "):
        write_reports(tmp_path / "results", tmp_path / "rep", registry=registry(), export=tmp_path / "all.xlsx")
    assert not (tmp_path / "rep").exists()  # refused before anything was written


def _age(store: ResultStore, name: str, seconds: float) -> None:
    path = store.job_dir(name) / "metrics.json"
    t = path.stat().st_mtime - seconds
    os.utime(path, (t, t))


def test_two_results_folders_merge_into_one_report(tmp_path, monkeypatch):
    a, b = ResultStore(tmp_path / "clusterA"), ResultStore(tmp_path / "clusterB")
    build_results(a.root)
    # B: the same beta/x job with the same numbers (newer), alpha/a with other numbers, and a new seed of alpha/b
    same = add_eval(b, "beta-x-official", {"method": "beta", "variant": "x", "source": "official"},
                    sims(5, signal=1.2))
    _age(a, same, 100.0)
    add_eval(b, "alpha-a-official", {"method": "alpha", "variant": "a", "source": "official"}, sims(1, signal=2.0))
    add_eval(b, "alpha-b-seed3", {"method": "alpha", "variant": "b", "source": "seed3", "seed": 3},
             sims(13, signal=0.6))
    monkeypatch.setattr("harness.cli.app._registry", lambda args: registry())
    out = tmp_path / "merged.csv"
    assert main(["report", "--results", str(a.root), "--results", str(b.root), "--reports", str(tmp_path / "rep"),
                 "--export", str(out)]) == 0
    toy = (tmp_path / "rep" / "toy.md").read_text()
    rec = toy[toy.index("## recall"):toy.index("## Efficiency")]
    beta_rows = [ln for ln in rec.splitlines() if ln.startswith("| beta/x")]
    assert len(beta_rows) == 1  # one identity twice with the same numbers: one row
    alpha_a = [ln for ln in rec.splitlines() if ln.startswith("| alpha/a")]
    assert len(alpha_a) == 2 and all("conflict" in ln for ln in alpha_a)
    assert {"from clusterA", "from clusterB"} <= {m for ln in alpha_a for m in re.findall(r"from cluster\w", ln)}
    assert "retrained, 4 seeds (0, 1, 2, 3)" in rec  # seeds from both clusters form one row
    index = (tmp_path / "rep" / "index.md").read_text()
    assert f"toy/{'beta-x-official'}/eval: kept clusterB/toy/beta-x-official/eval (the newest); same numbers also " \
           "in clusterA/toy/beta-x-official/eval" in index
    assert "toy/alpha-a-official/eval: 2 results with different numbers" in index
    frame = pd.read_csv(out)
    assert len(frame) == (5 + 2) * 11  # A's five, B's conflicting alpha/a and its new seed; the copy is dropped
    assert set(frame[frame.variant == "a"].results_folder) == {"clusterA", "clusterB"}
    assert frame[frame.variant == "a"].conflict.all() and not frame[frame.variant == "b"].conflict.any()
    site = tmp_path / "rep" / "site"
    assert "different numbers" in (site / "index.html").read_text()
    assert (site / "files" / "clusterB" / "toy" / "alpha-b-seed3" / "eval" / "config.yaml").is_file()


def test_a_folder_given_twice_or_missing_is_refused(tmp_path, capsys):
    build_results(tmp_path / "r")
    (tmp_path / "x").mkdir()
    with pytest.raises(ResultsFolderError, match=r"--results .*r: given twice \(also as .*\); name each folder once"):
        MergedStore([tmp_path / "r", tmp_path / "x" / ".." / "r"])
    assert main(["report", "--results", str(tmp_path / "r"), "--results", str(tmp_path / "nowhere"),
                 "--reports", str(tmp_path / "rep")]) != 0
    err = capsys.readouterr().err.strip()
    assert err.endswith("nowhere: no such results folder (run `run_all.py run` or `import` first)")
    assert len(err.splitlines()) == 1 and not (tmp_path / "rep").exists()


def test_one_job_name_with_two_identities_is_never_two_seeds_of_one_row(tmp_path):
    from harness.report.runs import collect_groups

    a, b = ResultStore(tmp_path / "A"), ResultStore(tmp_path / "B")
    cfg = {"method": "alpha", "variant": "b", "source": "seed0", "seed": 0}
    add_eval(a, "alpha-b-seed0", cfg, sims(10, signal=0.6))
    add_eval(b, "alpha-b-seed0", {**cfg, "key": "toy/alpha-b-seed0/eval@other-code"}, sims(10, signal=0.6))
    store = MergedStore([a.root, b.root])
    groups = collect_groups(registry(), store)
    assert [len(g.runs) for g in groups] == [1, 1] and [g.conflict for g in groups] == ["A", "B"]
    assert "from A (⚠ conflict" in groups[0].source
    (note,) = store.notes
    assert note.text.startswith("toy/alpha-b-seed0/eval: different identities in A/toy/alpha-b-seed0/eval, "
                                "B/toy/alpha-b-seed0/eval")
