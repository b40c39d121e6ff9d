"""The reporter against a synthetic run store: records written in the run-record format, with the
protocol hashes of real presets' cells (table1, table4, table5, fig5)."""

from __future__ import annotations

import math
from pathlib import Path

import nbformat
import pandas as pd
import pytest
from conftest import REPO
from nbclient import NotebookClient
from omegaconf import DictConfig, OmegaConf

from peft_bench.params import count
from peft_bench.report.__main__ import main
from peft_bench.report.aggregate import cell_runs
from peft_bench.report.build import Options, write_target
from peft_bench.report.cost import pareto_front
from peft_bench.report.grid import Cell
from peft_bench.report.profiles import profile
from peft_bench.report.render import markdown, separation
from peft_bench.report.tables import build_cost_table, build_table
from peft_bench.report.tradeoff import points, write_tradeoff
from peft_bench.results.atomic import write_text_atomic
from peft_bench.results.protocol import protocol_hash, run_id_for
from peft_bench.results.store import load_runs, run_dir, write_history, write_record

PAPER = profile("paper")
# Table 1 and Figure 5 restricted to a few methods: an override of a swept key replaces its list.
# (Figure 5's Mona cell is Table 4's dim-64 cell, one protocol: Figure 5 draws other methods here.)
TABLE1_OVERRIDES = ("method=full,mona",)
FIG5_OVERRIDES = ("method=full,adapter,lora",)


def write_run(
    results_dir: Path,
    cfg: DictConfig,
    seed: int,
    status: str = "completed",
    metrics: dict[str, float] | None = None,
    error: str | None = None,
    started: str = "2025-01-01T00:00:00+00:00",
    losses: tuple[float, ...] = (2.0, 1.5, 1.2, 1.0),
    cost: dict[str, object] | None = None,
    flops: dict[str, object] | None = None,
) -> None:
    """One run's record as peft_bench.run writes it: config.yaml, history.csv, metrics.json."""
    cfg = cfg.copy()
    cfg.trainer.seed = seed
    directory = run_dir(results_dir, run_id_for(cfg))
    write_text_atomic(directory / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    write_history(
        directory, [{"step": i + 1, "epoch": 0, "loss": x, "lr": 1e-4} for i, x in enumerate(losses)]
    )
    record = {
        "run_id": run_id_for(cfg),
        "status": status,
        "method": cfg.method.name,
        "dataset": cfg.data.name,
        "task": cfg.data.task,
        "backbone": cfg.backbone.name,
        "seed": seed,
        "metrics": metrics or {},
        "best": {},
        "params": {
            "backbone_total": 1,
            "backbone_trainable": 1,
            "trainable_total": 1,
            "trainable_percent": 100,
        },
        "protocol_hash": protocol_hash(cfg),
        "git_sha": None,
        "versions": {},
        "device": "cpu",
        "wall_s": 1.0,
        "started": started,
        **({"error": error} if error else {}),
        **({"cost": cost} if cost else {}),
        **({"flops": flops} if flops else {}),
    }
    write_record(directory, record)


def by(cells: list[Cell], **wanted: object) -> DictConfig:
    """The config of the one cell with the wanted values (keys: backbone, method, dim)."""
    keys = {"backbone": "backbone.name", "method": "method.name", "dim": "method.dim"}
    (cell,) = [c for c in cells if all(OmegaConf.select(c.cfg, keys[k]) == v for k, v in wanted.items())]
    return cell.cfg


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    results = tmp_path_factory.mktemp("store") / "results"
    table4 = PAPER.cells("4")
    write_run(results, by(table4, dim=32), 0, metrics={"ap50": 86.0})
    write_run(results, by(table4, dim=32), 1, metrics={"ap50": 87.0})
    failed = {"status": "failed", "error": "RuntimeError: boom", "started": "2025-01-02"}
    write_run(results, by(table4, dim=64), 0, **failed)
    write_run(results, by(table4, dim=64), 1, "running")  # older than the failure
    other_lr = by(table4, dim=128).copy()
    other_lr.trainer.lr = 2e-4  # another protocol: it must not enter the dim-128 cell, which stays missing
    write_run(results, other_lr, 0, metrics={"ap50": 99.9})

    table5 = PAPER.cells("5")
    write_run(results, by(table5, backbone="swin_t", method="full"), 0, "running")
    write_run(results, by(table5, backbone="swin_t", method="mona"), 0, metrics={"ap50": 83.0})

    table1 = PAPER.cells("1", TABLE1_OVERRIDES)
    write_run(results, by(table1, method="full"), 0, metrics={"ap_box": 52.0, "ap_mask": 45.0})
    for seed, (box, mask) in enumerate([(53.0, 46.0), (54.0, 46.5)]):
        write_run(results, by(table1, method="mona"), seed, metrics={"ap_box": box, "ap_mask": mask})

    fig5 = PAPER.cells("fig5", FIG5_OVERRIDES)
    write_run(results, by(fig5, method="full"), 0, losses=(3.0, 2.5, 2.4, 2.2))
    for seed in (0, 1):
        write_run(results, by(fig5, method="adapter"), seed, losses=(2.0, 1.4, 1.1, 0.9))
    return results


def test_cells_expand_the_sweep_as_hydra_does() -> None:
    cells = PAPER.cells("5")
    assert [(c.cfg.backbone.name, c.cfg.method.name) for c in cells] == [
        (b, m) for b in ("swin_t", "swin_b", "swin_l") for m in ("full", "mona")
    ]
    assert len({c.protocol for c in cells}) == 6
    # The seed is not part of the protocol; a swept key given again replaces its list.
    seeded = PAPER.cells("5", ("trainer.seed=7", "method=mona"))
    assert [c.protocol for c in seeded] == [c.protocol for c in cells if c.cfg.method.name == "mona"]


def test_one_protocol_is_one_cell_across_presets() -> None:
    """Table 4's dim 64 is Table 5's Swin-L Mona and Figure 5's Mona: the same runs fill all three."""
    (dim64,) = [c.protocol for c in PAPER.cells("4", ("method.dim=64",))]
    assert dim64 == next(c.protocol for c in PAPER.cells("5", ("backbone=swin_l", "method=mona")))


def test_mini_detection_presets_share_table2_minis_cells() -> None:
    """The mini Tables 4 and 5 and Figure 5 run on shapes_det at its recipe: Table 2's runs fill them,
    but for Table 4's two other dims and Table 5's other size."""
    mini = profile("mini")
    table2 = {c.protocol for c in mini.cells("2")}
    assert {c.protocol for c in mini.cells("fig5")} <= table2
    sizes = {(c.cfg.backbone.name, c.cfg.method.name): c.protocol in table2 for c in mini.cells("5")}
    assert sizes == {("swin_nano", "full"): False, ("swin_nano", "mona"): False} | {
        ("swin_micro", "full"): True,
        ("swin_micro", "mona"): True,
    }
    dims = {c.cfg.method.dim: c.protocol in table2 for c in mini.cells("4")}
    assert dims == {32: False, 64: True, 128: False}
    datasets = [c.cfg.data.name for c in mini.cells("2")]
    assert datasets == ["shapes_det"] * 10 + ["shapes_seg"] * 10


def test_empty_store_cells_are_missing(tmp_path: Path) -> None:
    assert cell_runs(load_runs(tmp_path), "0123456789ab").status == "missing"


def test_table4_through_the_cli(store: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["table=4", f"results_dir={store}", f"out_dir={tmp_path}"]) == 0
    assert str(tmp_path / "table4.md") in capsys.readouterr().out

    md = (tmp_path / "table4.md").read_text()
    assert "| 32 | 1.35 [1.35] | 86.50 ± 0.71 (n=2, CI n/a) [86.80] |" in md  # records without outcomes
    assert "| 64 | 2.63 [2.56] | failed: RuntimeError: boom [87.30] |" in md  # the newest attempt
    assert "| 128 | 5.22 [5.22] | missing [87.10] |" in md
    assert "99.9" not in md

    tex = (tmp_path / "table4.tex").read_text()
    assert r"32 & 1.35 [1.35] & 86.50 $\pm$ 0.71 (n=2, CI n/a) [86.80] \\" in tex
    assert r"Dim & Params \% & AP50 \\" in tex

    csv = pd.read_csv(tmp_path / "table4.csv").set_index(["row", "column"])
    dim32 = csv.loc[(32, "AP50")]
    assert (dim32["ours"], dim32["n"], dim32["paper"]) == (86.5, 2, 86.8)
    assert math.isclose(dim32["std"], math.sqrt(0.5))
    assert csv.loc[(64, "AP50"), "status"] == "failed: RuntimeError: boom"
    assert csv.loc[(128, "AP50"), "status"] == "missing"
    assert csv.loc[(64, "Params %"), "paper"] == 2.56


def test_table5_running_cell_and_mona_params(store: Path) -> None:
    table = build_table("5", load_runs(store))
    entries = table.entries.set_index(["row", "column"])
    assert entries.loc[("Swin-T", "Full AP50"), "status"] == "running"
    assert entries.loc[("Swin-T", "Mona AP50"), ["ours", "paper"]].tolist() == [83.0, 83.5]
    assert entries.loc[("Swin-L", "Mona Params %"), "paper"] == 2.56
    assert "| Swin-T | running [80.10] | 83.00 (n=1) [83.50] |" in markdown(table)


def test_table1_delta_to_full(store: Path) -> None:
    table = build_table("1", load_runs(store), overrides=TABLE1_OVERRIDES)
    entries = table.entries.set_index(["row", "column"])
    box = entries.loc[("Mona", "Δ COCO AP_box")]
    assert (box["ours"], box["paper"]) == pytest.approx((1.5, 1.0))
    assert math.isnan(entries.loc[("Full", "Δ COCO AP_box"), "ours"])
    text = markdown(table)
    assert "53.50 ± 0.71 (n=2) [53.40] | +1.50 [+1.00] | 46.25 ± 0.35 (n=2) [46.00] | +1.25 [+0.90] |" in text
    assert text.index("Params (M)") < text.index("COCO AP_box") < text.index("Δ COCO AP_box")
    assert table.caption.startswith("Table 1 (preset table1, method=full,mona).")  # what every cell had


def test_separation_compares_the_span_of_means_with_the_seed_std() -> None:
    """A column's methods are separated when their means span 3 or more median seed stds; single-seed
    cells and Δ columns do not enter; the span by chance is that of as many means of the fewest seeds."""
    entries = pd.DataFrame(
        [
            ("A", "AP50", "metric", "swin", 50.0, 0.5, 3),
            ("B", "AP50", "metric", "swin", 52.0, 1.0, 3),
            ("C", "AP50", "metric", "swin", 54.0, 0.8, 4),  # span 4.0 over median std 0.8: 5.0x
            ("D", "AP50", "metric", "swin", 99.0, math.nan, 1),  # one seed: no std, not counted
            ("B", "Δ AP50", "delta", None, 2.0, 1.0, 3),
            ("A", "mIoU", "metric", "swin", 40.0, 1.0, 2),
            ("B", "mIoU", "metric", "swin", 41.0, 0.6, 2),  # span 1.0 over median std 0.8: 1.25x
        ],
        columns=["row", "column", "kind", "backbone", "ours", "std", "n"],
    )
    text = separation(entries)
    # By chance: three means of three seeds span d2(3) / sqrt(3) = 1.693 / 1.732 seed stds; two of two,
    # 1.128 / 1.414.
    assert (
        "AP50: the means of 3 methods (3 to 4 seeds each) span 4.00, 5.0x the median seed std 0.80 "
        "(1.0x by chance); it separates" in text
    )
    assert (
        "mIoU: the means of 2 methods (2 seeds each) span 1.00, 1.2x the median seed std 0.80 "
        "(0.8x by chance); it does not" in text
    )
    assert "Δ AP50" not in text
    assert separation(entries[entries["n"] == 1]) == ""


def test_separation_judges_each_backbone_on_its_own() -> None:
    """Two backbones far apart, each with methods level within their seed noise: no separation."""
    entries = pd.DataFrame(
        [
            (method, "Position", "metric", backbone, base + offset, 1.0, 3)
            for backbone, base in (("vit_micro", 6.0), ("swin_micro", 42.0))
            for method, offset in (("full", 0.0), ("lora", 1.0), ("mona", 2.0))
        ],
        columns=["row", "column", "kind", "backbone", "ours", "std", "n"],
    )
    text = separation(entries)
    assert "Position (ViT-micro): the means of 3 methods (3 seeds each) span 2.00, 2.0x" in text
    assert "Position (Swin-micro): the means of 3 methods (3 seeds each) span 2.00, 2.0x" in text
    assert text.count("does not separate the methods") == 2


def test_figure5_written_with_missing_methods_named(store: Path, tmp_path: Path) -> None:
    options = Options(
        results_dir=store, out_dir=tmp_path, overrides=FIG5_OVERRIDES, smooth="rolling", window=2
    )
    paths, warnings = write_target("fig5", load_runs(store), options)
    assert [p.name for p in paths] == ["fig5.png", "fig5.pdf"]
    assert all(p.stat().st_size > 1000 for p in paths)
    assert warnings == ["fig5: no completed run for LoRA (missing)"]


def test_committed_mini_results_regenerate_from_their_records(tmp_path: Path) -> None:
    """results/mini holds the offline mini benchmark's tables and the records they came from. A change
    of any protocol (a config default, a recipe) orphans those records: re-run the mini sweeps."""
    committed = REPO / "results" / "mini"
    assert main(["profile=mini", f"results_dir={committed / 'store'}", f"out_dir={tmp_path}"]) == 0
    for name in [*(f"table{n}" for n in range(1, 6)), "table_ext", "cost_ext", "table_vtab"]:
        assert (tmp_path / f"{name}.md").read_text() == (committed / f"{name}.md").read_text()
        statuses = set(pd.read_csv(committed / f"{name}.csv", keep_default_na=False)["status"])
        assert statuses <= {"ok", "n/a"}, (name, statuses)  # every cell measured (and its cost: ext)


def test_unknown_table_is_a_one_line_error(capsys: pytest.CaptureFixture) -> None:
    assert main(["table=9"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "Unknown table '9'" in err and "1, 2, 3, 4, 5, ext, fig5, cost, tradeoff" in err


def test_notebook_runs_on_the_synthetic_store(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    notebook = nbformat.read(REPO / "notebooks" / "comparisons.ipynb", as_version=4)
    assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code")
    monkeypatch.setenv("PEFT_BENCH_RESULTS", str(store))  # the kernel inherits the environment
    monkeypatch.setenv("PEFT_BENCH_TABLES", "4")
    resources = {"metadata": {"path": str(REPO / "notebooks")}}
    NotebookClient(notebook, timeout=300, kernel_name="python3", resources=resources).execute()
    outputs = "".join(str(output) for cell in notebook.cells for output in cell.get("outputs", []))
    assert "86.50 ± 0.71 (n=2) [86.80]" in outputs


def cost(step_s: float, peak_mb: float, device: str = "gpu A") -> dict[str, object]:
    """A record's `cost`, as peft_bench.run writes it."""
    return {
        "step_s": step_s,
        "train_img_s": 16 / step_s,
        "eval_img_s": 100.0,
        "peak_mem_bytes": peak_mb * 2**20,
        "peak_reserved_bytes": None,
        "mem_source": "cuda_max_allocated",
        "delta_bytes": 2**20,
        "device": device,
        "precision": "bf16",
    }


def test_pareto_front_is_the_points_nothing_beats() -> None:
    found = [(1.0, 5.0), (2.0, 4.0), (2.0, 6.0), (3.0, 6.0), (0.0, 1.0), (1.0, 5.0)]
    # (2, 4) costs more than (1, 5) for less; (3, 6) more than (2, 6) for as much; equal points both stay.
    assert pareto_front(found) == [4, 0, 5, 2]


def cost_store(results: Path, full_device: str) -> Path:
    table1 = PAPER.cells("1", TABLE1_OVERRIDES)
    write_run(
        results, by(table1, method="full"), 0, metrics={"ap_box": 52.0}, cost=cost(2.0, 1000, full_device)
    )
    # Mona: two runs on device A (medians 1.2 s, 600 MB), one on B, which stays out of the cell's cost.
    for seed, (step, peak, device) in enumerate(
        [(1.0, 500, "gpu A"), (1.4, 700, "gpu A"), (9.0, 9000, "gpu B")]
    ):
        write_run(
            results,
            by(table1, method="mona"),
            seed,
            metrics={"ap_box": 53.0 + seed},
            cost=cost(step, peak, device),
        )
    return results


def test_cost_table_compares_to_full_on_the_same_device_only(tmp_path: Path) -> None:
    same = build_cost_table("1", load_runs(cost_store(tmp_path / "a", "gpu A")), overrides=TABLE1_OVERRIDES)
    entries = same.entries.set_index(["row", "column"])
    assert (
        same.name == "cost1" and "Cost of table 1's cells (preset table1, method=full,mona)" in same.caption
    )
    assert entries.loc[("Mona", "COCO Step (s)"), ["ours", "n", "device"]].tolist() == [
        pytest.approx(1.2),
        2,
        "gpu A",
    ]
    assert entries.loc[("Mona", "COCO Step ×Full"), "ours"] == pytest.approx(0.6)
    assert entries.loc[("Mona", "COCO Peak mem (MB)"), "ours"] == pytest.approx(600)
    assert entries.loc[("Mona", "COCO Mem ×Full"), "ours"] == pytest.approx(0.6)
    assert entries.loc[("Full", "COCO Delta (MB)"), "ours"] == pytest.approx(1.0)
    mona_params = count(by(PAPER.cells("1", TABLE1_OVERRIDES), method="mona"))["backbone_trainable"]
    assert entries.loc[("Mona", "COCO Params (M)"), ["kind", "ours"]].tolist() == ["count", mona_params / 1e6]

    # Full on B: Mona's one run on B is the one compared.
    on_b = build_cost_table("1", load_runs(cost_store(tmp_path / "b", "gpu B")), overrides=TABLE1_OVERRIDES)
    entries = on_b.entries.set_index(["row", "column"])
    assert entries.loc[("Mona", "COCO Step ×Full"), ["ours", "n", "device"]].tolist() == [4.5, 1, "gpu B"]

    # Full on C, where Mona never ran: no ratio, and a column per device.
    on_c = build_cost_table("1", load_runs(cost_store(tmp_path / "c", "gpu C")), overrides=TABLE1_OVERRIDES)
    entries = on_c.entries.set_index(["row", "column"])
    ratio = entries.loc[("Mona", "COCO Step ×Full @ gpu A")]
    assert math.isnan(ratio["ours"]) and ratio["status"] == "Full measured on another device or protocol"
    assert entries.loc[("Full", "COCO Step (s) @ gpu C"), "ours"] == pytest.approx(2.0)
    assert ("Full", "COCO Step (s) @ gpu A") not in entries.index


def flops(train_gflops: float) -> dict[str, object]:
    """A record's `flops`, as peft_bench.run writes it (per image; a third of a step is its forward),
    with a step memory account of as many MB as the step's GFLOPs per image."""
    train = train_gflops * 1e9
    return {
        "step_memory_bytes": train_gflops * 2**20,
        "train_step": 16 * train,
        "train_per_image": train,
        "forward_per_image": train / 3,
        "backward_per_image": 2 * train / 3,
        "infer_per_image": train / 3,
        "batch": 16,
        "source": "run",
    }


def test_flops_columns_are_counts_that_compare_across_devices(tmp_path: Path) -> None:
    """FLOPs are counted, not measured: a cell's are the median over all its runs, whichever device
    ran them, and their ratio to Full's needs no common device; a cell whose runs counted none (recorded
    before runs counted them) says so."""
    table1 = PAPER.cells("1", TABLE1_OVERRIDES)
    results = tmp_path / "store"
    write_run(
        results,
        by(table1, method="full"),
        0,
        metrics={"ap_box": 52.0},
        cost=cost(2.0, 1000, "gpu C"),
        flops=flops(600.0),
    )
    for seed, (device, gflops) in enumerate([("gpu A", 200.0), ("gpu A", 200.0), ("gpu B", 260.0)]):
        write_run(
            results,
            by(table1, method="mona"),
            seed,
            metrics={"ap_box": 53.0},
            cost=cost(1.0, 500, device),
            flops=flops(gflops),
        )
    entries = build_cost_table("1", load_runs(results), overrides=TABLE1_OVERRIDES).entries
    entries = entries.set_index(["row", "column"])
    mona = entries.loc[("Mona", "COCO Train GFLOPs/img")]
    assert (mona["ours"], mona["n"], mona["kind"]) == (pytest.approx(200.0), 3, "flops")
    assert pd.isna(mona["device"])  # counted: no device
    assert entries.loc[("Mona", "COCO FLOPs ×Full"), "ours"] == pytest.approx(1 / 3)  # Full on gpu C
    assert entries.loc[("Mona", "COCO Infer GFLOPs/img"), "ours"] == pytest.approx(200.0 / 3)
    assert math.isnan(entries.loc[("Mona", "COCO Step ×Full @ gpu A"), "ours"])  # times do need one device
    assert ("Mona", "COCO Train GFLOPs/img @ gpu A") not in entries.index
    # The step memory account is counted too: any device's runs, Full's on another
    assert entries.loc[("Mona", "COCO Step mem (MB)"), "ours"] == pytest.approx(200.0)
    assert entries.loc[("Mona", "COCO Step mem ×Full"), "ours"] == pytest.approx(1 / 3)

    found = {p.method: p for p in points(table1, load_runs(results), "ap_box")}
    assert (found["Full"].train_gflops, found["Mona"].train_gflops) == (
        pytest.approx(600.0),
        pytest.approx(200.0),
    )
    assert (found["Full"].step_mem_mb, found["Mona"].step_mem_mb) == (
        pytest.approx(600.0),
        pytest.approx(200.0),
    )
    figure = write_tradeoff(table1, load_runs(results), tmp_path / "tradeoff1", "table1")
    assert all(p.stat().st_size > 1000 for p in figure.paths)

    uncounted = build_cost_table(
        "1", load_runs(cost_store(tmp_path / "old", "gpu A")), overrides=TABLE1_OVERRIDES
    )
    entry = uncounted.entries.set_index(["row", "column"]).loc[("Mona", "COCO Train GFLOPs/img")]
    assert math.isnan(entry["ours"]) and entry["status"].startswith("not counted")


def test_cost_columns_on_a_table_and_not_measured_cells(store: Path, tmp_path: Path) -> None:
    table = build_table(
        "1", load_runs(cost_store(tmp_path, "gpu A")), overrides=TABLE1_OVERRIDES, cost_columns=True
    )
    entries = table.entries.set_index(["row", "column"])
    assert entries.loc[("Mona", "COCO Mem ×Full"), "ours"] == pytest.approx(0.6)
    plain = build_table("1", load_runs(store), overrides=TABLE1_OVERRIDES, cost_columns=True)
    step = plain.entries.set_index(["row", "column"]).loc[("Mona", "COCO Step (s)")]
    assert math.isnan(step["ours"]) and step["status"] == "not measured"  # records before costs were kept
    assert not any(
        "Step" in column
        for column in build_table("1", load_runs(store), overrides=TABLE1_OVERRIDES).entries["column"]
    )


def test_tradeoff_figure_places_each_method(tmp_path: Path) -> None:
    runs = load_runs(cost_store(tmp_path / "store", "gpu A"))
    cells = PAPER.cells("1", ("method=full,mona,lora",))
    found = {p.method: p for p in points(cells, runs, "ap_box")}
    assert set(found) == {"Full", "Mona"}
    assert found["Mona"].score == pytest.approx(54.0)
    assert math.isnan(found["Mona"].step_mem_mb)  # recorded without the counts: no memory point
    assert found["Full"].params_m > 80 > found["Mona"].params_m  # counted on Swin-B
    figure = write_tradeoff(cells, runs, tmp_path / "tradeoff1", "table1")
    assert [p.name for p in figure.paths] == ["tradeoff1.png", "tradeoff1.pdf"]
    assert all(p.stat().st_size > 1000 for p in figure.paths)
    assert figure.missing == ["COCO: LoRA"]
