"""Statistics: bootstrap intervals over seeds and test images, paired tests against a baseline with
Holm's correction, ranks across datasets, and the reporter's intervals and marks built from stored
per-sample outcomes (peft_bench.stats, peft_bench.report.significance)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import DictConfig
from scipy.stats import bootstrap as scipy_bootstrap
from test_report import by, write_run
from test_report_suites import write_run as write_suite_run

from peft_bench.errors import UserError
from peft_bench.metrics.accuracy import accuracy_scores
from peft_bench.metrics.voc_map import voc_scores
from peft_bench.report.__main__ import main
from peft_bench.report.profiles import profile
from peft_bench.results.outcomes import read_outcomes, write_outcomes
from peft_bench.results.protocol import run_id_for
from peft_bench.results.store import run_dir
from peft_bench.stats.bootstrap import Resampling, bootstrap_cell
from peft_bench.stats.comparison import adjust, compare
from peft_bench.stats.improvement import probability_of_improvement
from peft_bench.stats.ranks import Ranking, complete

RESAMPLING = Resampling(resamples=2000, level=0.95, seed=0)


def hits(correct: np.ndarray) -> dict[str, np.ndarray]:
    """Classification outcomes with `correct` as top-1 (and every image within the top 5)."""
    return {"top1": correct.astype(bool), "top5": np.ones(len(correct), dtype=bool)}


def coin(images: int, rate: float, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random(images) < rate


def interval(outcomes: list[dict[str, np.ndarray]], test_set: str = "t") -> tuple[float, float]:
    boot = bootstrap_cell(outcomes, len(outcomes[0]["top1"]), accuracy_scores, test_set, RESAMPLING)
    return RESAMPLING.interval(boot.distribution("top1"))


def test_one_run_interval_is_scipys_percentile_interval() -> None:
    """A run's interval over its test images, against scipy.stats.bootstrap's percentile interval of
    the accuracy (its own draws: equal within the resampling error)."""
    correct = coin(400, 0.3)
    ours = interval([hits(correct)])
    theirs = scipy_bootstrap(
        (100.0 * correct,), np.mean, n_resamples=20000, method="percentile", random_state=1
    ).confidence_interval
    assert ours == pytest.approx((theirs.low, theirs.high), abs=0.75)  # percentage points
    assert ours[0] < 100 * correct.mean() < ours[1]


def test_intervals_shrink_as_the_test_set_grows() -> None:
    """16 times the images, about a quarter of the width (1 / sqrt 16)."""
    small, large = (interval([hits(coin(n, 0.5, seed=n))]) for n in (100, 1600))
    width_small, width_large = small[1] - small[0], large[1] - large[0]
    assert width_large == pytest.approx(width_small / 4, rel=0.25)


def test_seeds_that_disagree_widen_the_interval() -> None:
    """Two seeds with the same outcomes give the one run's interval; two that differ by 10 points
    give a wider one, centred between them."""
    base = coin(500, 0.5)
    better = base | coin(500, 0.2, seed=7)
    same, apart = interval([hits(base)]), interval([hits(base), hits(better)])
    assert interval([hits(base), hits(base)]) == pytest.approx(same)
    assert apart[1] - apart[0] > 1.5 * (same[1] - same[0])
    assert apart[0] < 100 * (base.mean() + better.mean()) / 2 < apart[1]


def test_a_run_against_itself_shows_no_difference() -> None:
    boot = bootstrap_cell([hits(coin(300, 0.6))], 300, accuracy_scores, "t", RESAMPLING)
    values = boot.distribution("top1")
    test = compare(0.0, values - values, RESAMPLING)
    assert (test.difference, test.low, test.high, test.p) == (0.0, 0.0, 0.0, 1.0)


def test_a_planted_difference_is_detected_and_a_negligible_one_is_not() -> None:
    """B corrects 10% of A's images (paired: the same test images); C differs from A on one image."""
    a = coin(500, 0.55)
    b, c = a | coin(500, 0.1, seed=3), a.copy()
    c[np.flatnonzero(~a)[0]] = True
    boots = {
        name: bootstrap_cell([hits(x)], 500, accuracy_scores, "t", RESAMPLING)
        for name, x in {"a": a, "b": b, "c": c}.items()
    }
    planted = compare(
        boots["b"].point("top1") - boots["a"].point("top1"),
        boots["b"].distribution("top1") - boots["a"].distribution("top1"),
        RESAMPLING,
    )
    negligible = compare(0.2, boots["c"].distribution("top1") - boots["a"].distribution("top1"), RESAMPLING)
    assert planted.p < 0.001 and planted.low > 0
    assert planted.difference == pytest.approx(100 * (b.mean() - a.mean()))
    assert negligible.p > 0.3 and negligible.low <= 0 <= negligible.high


def test_detection_cells_resample_whole_images() -> None:
    """VOC outcomes: the observed value is the run's AP50; every resample scores drawn images."""
    rng = np.random.default_rng(0)
    images, per_image = 40, 5
    tp = rng.random(images * per_image) < 0.4
    outcomes = {
        "image": np.repeat(np.arange(images), per_image).astype(np.int32),
        "class_index": np.zeros(images * per_image, np.int16),
        "score": rng.random(images * per_image).astype(np.float32),
        "tp": tp,
        "fp": ~tp,
        "positives": np.full((images, 1), 3),
    }
    boot = bootstrap_cell([outcomes], images, voc_scores, "det", Resampling(50))
    assert boot.point("ap50") == voc_scores(outcomes)["ap50"]
    drawn = Resampling(50).images("det", images)[7]
    assert boot.resampled[7, 0, 0] == voc_scores(outcomes, drawn)["ap50"]


def test_draws_are_shared_within_a_test_set_and_independent_across_test_sets() -> None:
    assert np.array_equal(RESAMPLING.images("voc", 50), RESAMPLING.images("voc", 50))
    assert not np.array_equal(RESAMPLING.images("voc", 50), RESAMPLING.images("coco", 50))


def test_holm_adjusts_as_the_step_down_procedure() -> None:
    """p = 0.01, 0.04, 0.03: sorted, times 3, 2, 1 (0.03, 0.06, 0.04), made monotone."""
    assert adjust(np.array([0.01, 0.04, 0.03]), "holm") == pytest.approx([0.03, 0.06, 0.06])
    assert adjust(np.array([0.01, 0.04]), "none") == pytest.approx([0.01, 0.04])
    with pytest.raises(ValueError, match="holm"):
        adjust(np.array([0.5]), "bonferroni")


def test_ranks_friedman_and_the_critical_difference() -> None:
    """Demšar (2006), section 3.2.2: k = 4 methods on N = 14 datasets give CD = 2.569 sqrt(20 / 84)
    = 1.25 at alpha 0.05. Ties share their mean rank; a method always best ranks 1."""
    rng = np.random.default_rng(0)
    scores = pd.DataFrame(rng.random((14, 4)), columns=list("abcd"))
    scores["a"] += 2  # always best
    ranking = Ranking(scores)
    assert ranking.critical_difference == pytest.approx(2.569 * math.sqrt(20 / 84), abs=1e-3)
    assert ranking.average_ranks["a"] == 1.0
    assert ranking.friedman_p < 0.05
    tied = Ranking(pd.DataFrame({"x": [1.0, 2.0], "y": [1.0, 1.0], "z": [0.0, 0.0]}))
    assert tied.ranks.to_numpy().tolist() == [[1.5, 1.5, 3.0], [1.0, 2.0, 3.0]]


def test_complete_keeps_the_methods_measured_on_every_kept_dataset() -> None:
    scores = pd.DataFrame({"a": [1.0, 2.0, 3.0], "b": [1.0, math.nan, 2.0], "c": [2.0, 1.0, 1.0]})
    scores.index = ["d1", "d2", "d3"]
    kept, methods_out, blocks_out = complete(scores)
    assert list(kept.columns) == ["a", "c"] and methods_out == ["b"] and blocks_out == []


def test_probability_of_improvement_counts_ties_half() -> None:
    """Task 1: X above Y in every pair (1); task 2: one pair of two above, one tied (0.75)."""
    x = [np.array([3.0, 4.0]), np.array([2.0, 1.0])]
    y = [np.array([1.0]), np.array([1.0])]
    assert probability_of_improvement(x, y) == pytest.approx((1 + 0.75) / 2)


# The reporter: Table 3 (classification) with Full, LoRA and Mona, from records with outcomes.
TABLE3 = ("method=full,lora,mona",)
IMAGES = 400


def write_with_outcomes(results: Path, cfg: DictConfig, seed: int, correct: np.ndarray) -> None:
    outcomes = hits(correct)
    write_run(results, cfg, seed, metrics=accuracy_scores(outcomes))
    run = cfg.copy()
    run.trainer.seed = seed
    write_outcomes(run_dir(results, run_id_for(run)), outcomes)


@pytest.fixture(scope="module")
def stats_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Full at 55%; LoRA as Full but for one image; Mona correcting 15% of Full's images, on every
    dataset and seed; VOC2007's LoRA cell has a run recorded before outcomes were kept."""
    results = tmp_path_factory.mktemp("stats") / "results"
    cells = profile("paper").cells("3", TABLE3)
    for dataset in ("flowers102", "pets", "voc2007"):
        for seed in (0, 1):
            full = coin(IMAGES, 0.55, seed=10 * seed + len(dataset))
            lora, mona = full.copy(), full | coin(IMAGES, 0.15, seed=seed + 100)
            lora[np.flatnonzero(~full)[0]] = True
            mine = [c for c in cells if c.cfg.data.name == dataset]
            write_with_outcomes(results, by(mine, method="full"), seed, full)
            write_with_outcomes(results, by(mine, method="mona"), seed, mona)
            if dataset == "voc2007" and seed == 1:
                write_run(results, by(mine, method="lora"), seed, metrics=accuracy_scores(hits(lora)))
            else:
                write_with_outcomes(results, by(mine, method="lora"), seed, lora)
    out = results.parent / "report"
    overrides = [f"override={o}" for o in TABLE3]
    for table in ("3", "ranks"):
        arguments = [f"table={table}", f"results_dir={results}", f"out_dir={out}", "resamples=500"]
        assert main([*arguments, *overrides]) == 0
    return out


def test_the_table_marks_what_is_beyond_noise(stats_report: Path) -> None:
    entries = pd.read_csv(stats_report / "table3.csv")
    top1 = entries[(entries["kind"] == "metric") & (entries["metric"] == "top1")].set_index(["row", "column"])
    mona, lora = top1.xs("Mona"), top1.xs("LoRA")
    assert mona["beyond"].all() and (mona["versus"] == "Full").all()
    assert not lora["beyond"].fillna(False).any()
    assert (mona["p_adjusted"] >= mona["p"]).all()  # Holm never lowers a p-value
    with_interval = top1[top1["stats"] == "ok"]
    assert len(with_interval) == 8  # all but LoRA's VOC2007 cell, which has a run without outcomes
    assert (with_interval["ci_low"] < with_interval["ours"]).all()
    assert (with_interval["ours"] < with_interval["ci_high"]).all()
    assert top1.xs("Full")["versus"].isna().all()  # the baseline is not tested against itself
    md = (stats_report / "table3.md").read_text()
    assert "*: beyond noise, p < 0.05 in a paired bootstrap test against Full's cell" in md
    assert "after Holm's correction over the column's comparisons" in md
    mona_row = next(line for line in md.splitlines() if line.startswith("| Mona |"))
    assert mona_row.count(")*") >= 3  # each dataset's top-1 (and the average) marked


def test_a_cell_without_outcomes_has_no_interval_invented(stats_report: Path) -> None:
    entries = pd.read_csv(stats_report / "table3.csv").set_index(["row", "column"])
    missing = entries.loc[("LoRA", "VOC2007 top-1")]
    assert missing["stats"].startswith("no outcomes") and math.isnan(missing["ci_low"])
    assert "(n=2, CI n/a)" in (stats_report / "table3.md").read_text()
    average = entries.loc[("LoRA", "Average top-1")]
    assert not math.isnan(average["ours"]) and math.isnan(average["ci_low"])  # a mean needs every interval


def test_the_average_interval_is_the_stratified_mean(stats_report: Path) -> None:
    entries = pd.read_csv(stats_report / "table3.csv").set_index(["row", "column"])
    average = entries.loc[("Mona", "Average top-1")]
    assert average["ci_low"] < average["ours"] < average["ci_high"]
    per_dataset = entries.loc["Mona"]
    widths = (per_dataset["ci_high"] - per_dataset["ci_low"])[["Flowers102 top-1", "OxfordPets top-1"]]
    assert average["ci_high"] - average["ci_low"] < widths.min()  # three independent test sets average out
    assert bool(average["beyond"])


def test_ranks_and_the_critical_difference_diagram_are_written(stats_report: Path) -> None:
    ranks = pd.read_csv(stats_report / "ranks_paper.csv")
    average = ranks[ranks["column"] == "Average rank"].set_index("row")["ours"]
    assert average.to_dict() == {"Mona": 1.0, "LoRA": 2.0, "Full": 3.0}
    assert (stats_report / "cd_paper.png").stat().st_size > 0
    assert "Friedman test over the ranks: p = " in (stats_report / "ranks_paper.md").read_text()


def test_stats_off_gives_the_papers_layout(stats_report: Path, tmp_path: Path) -> None:
    results = stats_report.parent / "results"
    arguments = ["table=3", f"results_dir={results}", f"out_dir={tmp_path}", "stats=false"]
    assert main([*arguments, *(f"override={o}" for o in TABLE3)]) == 0
    md = (tmp_path / "table3.md").read_text()
    assert "CI" not in md and "*" not in md.replace("**", "")


@pytest.mark.parametrize(
    ("argument", "message"),
    [
        ("resamples=0", "resamples must be a positive whole number"),
        ("level=95", "level must be a confidence level between 0 and 1"),
        ("baseline=nope", "Unknown baseline method 'nope': use one of"),
        ("correction=bonferroni", "Unknown correction 'bonferroni'"),
        ("stats=maybe", "stats must be true or false"),
    ],
)
def test_bad_statistics_arguments_are_one_line_errors(
    argument: str, message: str, capsys: pytest.CaptureFixture
) -> None:
    assert main(["table=3", argument]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


# The suite table: Full and Mona on the embedded VTAB, one seed, Mona correcting 20% of Full's images.
SUITE_OVERRIDES = ("method=full,mona", "backbone=vit_micro", "trainer.seed=0")


def test_suite_means_have_stratified_intervals_and_the_probability_of_improvement(tmp_path: Path) -> None:
    results = tmp_path / "results"
    cells = profile("mini").cells("vtab", (f"paths.results_dir={results}", *SUITE_OVERRIDES))
    for index, cell in enumerate(cells):
        full = coin(IMAGES, 0.3, seed=index // 2)  # the pair of cells of one task share Full's outcomes
        outcomes = hits(full | coin(IMAGES, 0.2, seed=50) if cell.cfg.method.name == "mona" else full)
        write_suite_run(results, cell, 0, accuracy_scores(outcomes)["top1"], None)
        run = cell.cfg.copy()
        run.trainer.seed = 0
        write_outcomes(run_dir(results, run_id_for(run)), outcomes)
    out = tmp_path / "report"
    arguments = ["table=vtab", "profile=mini", f"results_dir={results}", f"out_dir={out}", "resamples=300"]
    assert main([*arguments, *(f"override={o}" for o in SUITE_OVERRIDES)]) == 0
    entries = pd.read_csv(out / "table_vtab.csv").set_index(["row", "column"])
    mona = entries.loc["Mona"]  # one backbone: rows are named by the method alone
    assert mona.loc["P(> Full)", "ours"] == 100.0  # Mona ahead on every task
    assert mona.loc["P(> Full)", "ci_low"] >= 50.0
    for column in ("Natural", "Structured", "Mean (groups)", "Mean (tasks)"):
        assert mona.loc[column, "ci_low"] < mona.loc[column, "ours"] < mona.loc[column, "ci_high"]
    assert bool(mona.loc["Mean (tasks)", "beyond"])
    assert "probability of improvement" in (out / "table_vtab.md").read_text()


def test_a_broken_outcomes_file_leaves_the_cell_without_an_interval(tmp_path: Path) -> None:
    """A truncated outcomes.npz is named in one clear error when read; the reporter still builds the
    table, and the cell says why it has no interval."""
    results = tmp_path / "results"
    cells = profile("paper").cells("3", TABLE3)
    flowers = [c for c in cells if c.cfg.data.name == "flowers102"]
    for method in ("full", "mona"):
        write_with_outcomes(results, by(flowers, method=method), 0, coin(IMAGES, 0.5))
    run = by(flowers, method="mona").copy()
    run.trainer.seed = 0
    broken = run_dir(results, run_id_for(run))
    (broken / "outcomes.npz").write_bytes(b"PK\x03\x04 not a whole file")
    with pytest.raises(UserError, match=r"cannot be read .* Delete it"):
        read_outcomes(broken)
    arguments = ["table=3", f"results_dir={results}", f"out_dir={tmp_path / 'out'}", "resamples=50"]
    assert main([*arguments, *(f"override={o}" for o in TABLE3)]) == 0
    entries = pd.read_csv(tmp_path / "out" / "table3.csv").set_index(["row", "column"])
    assert "cannot be read" in entries.loc[("Mona", "Flowers102 top-1"), "stats"]
    assert entries.loc[("Full", "Flowers102 top-1"), "stats"] == "ok"
