"""From outside the package: the example plugin (`examples/peft_bench_prompts`, a method peft_bench
does not ship) installed, run, counted, benchmarked and reported; and the package as a built wheel,
configs included, run from another directory."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest
from conftest import REPO, cli_env, records

from peft_bench.backbones.swin import build_swin

pytestmark = pytest.mark.slow

TOKENS = 4  # the example's default prompt tokens per block
CELL = [  # one cell of Table 3's mini preset, made tiny
    "method=prompts",
    "dataset=shapes",
    "data.train_size=32",
    "data.val_size=8",
    "data.test_size=8",
    "trainer.max_steps=1",
    "trainer.threads=1",
    "trainer.progress=false",
]


def pip_install(target: Path, *what: str) -> None:
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation"]
    subprocess.run([*command, "--target", str(target), *what], check=True, capture_output=True, timeout=600)


def python(site: Path, cwd: Path, *arguments: str) -> subprocess.CompletedProcess:
    """`python <arguments>` in `cwd` (not the repository) with `site` first on the path."""
    env = dict(cli_env(), PYTHONPATH=os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])))
    return subprocess.run(
        [sys.executable, *arguments], cwd=cwd, env=env, capture_output=True, text=True, timeout=900
    )


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    site, source = tmp_path_factory.mktemp("site"), tmp_path_factory.mktemp("source") / "plugin"
    shutil.copytree(REPO / "examples" / "peft_bench_prompts", source)  # setuptools builds in place
    pip_install(site, str(source))
    return site


def expected_prompts() -> int:
    """`TOKENS` tokens of each block's width, in every block of swin_micro."""
    return TOKENS * sum(block.dim for block in build_swin("swin_micro").transformer_blocks())


def test_an_installed_plugin_method_runs_counts_benchmarks_and_reports(
    plugin_site: Path, tmp_path: Path
) -> None:
    results = tmp_path / "results"

    counted = python(plugin_site, tmp_path, "-m", "peft_bench.params", "method=prompts", "dataset=shapes_det")
    assert counted.returncode == 0, counted.stderr
    assert json.loads(counted.stdout)["backbone_trainable"] == expected_prompts()

    ran = python(
        plugin_site,
        tmp_path,
        "-m",
        "peft_bench",
        "experiment=table3_mini",
        *CELL,
        f"paths.results_dir={results}",
    )
    assert ran.returncode == 0, ran.stderr
    [record] = records(results)
    assert record["status"] == "completed" and record["method"] == "prompts"
    assert record["params"]["backbone_trainable"] == expected_prompts()

    overrides = [f"override={o}" for o in CELL]
    report = python(
        plugin_site,
        tmp_path,
        "-m",
        "peft_bench.report",
        f"results_dir={results}",
        "profile=mini",
        "table=3",
        *overrides,
    )
    assert report.returncode == 0, report.stderr
    rows = list(csv.DictReader((results / "report" / "table3.csv").open()))
    top1 = next(r for r in rows if r["row"] == "Prompts" and r["metric"] == "top1" and r["kind"] == "metric")
    assert float(top1["ours"]) == pytest.approx(record["metrics"]["top1"])

    bench_csv = tmp_path / "bench.csv"
    bench = ["--methods", "full,prompts", "--backbone", "swin_micro", "--img-size", "64", "--batch", "2"]
    benched = python(
        plugin_site,
        tmp_path,
        "-m",
        "peft_bench.bench",
        *bench,
        "--repeats",
        "1",
        "--warmup",
        "0",
        "--out",
        str(bench_csv),
    )
    assert benched.returncode == 0, benched.stderr
    by_method = {r["method"]: r for r in csv.DictReader(bench_csv.open())}
    assert int(by_method["prompts"]["trainable_params"]) == expected_prompts()


@pytest.mark.skipif(
    any(entry.name == "prompts" for entry in entry_points(group="peft_bench.plugins")),
    reason="the example plugin is installed in this environment",
)
def test_without_the_plugin_the_method_is_unknown(tmp_path: Path) -> None:
    result = python(tmp_path, tmp_path, "-m", "peft_bench", "method=prompts", "--cfg", "job")
    assert result.returncode != 0 and "Could not find 'method/prompts'" in result.stderr
    assert "mona" in result.stderr  # Hydra lists the known methods


def test_a_built_wheel_runs_from_another_directory(tmp_path: Path) -> None:
    source, wheels, site, work = (tmp_path / name for name in ("source", "wheels", "site", "work"))
    work.mkdir()
    # What the wheel is built from, copied: setuptools writes its build/ folder beside it.
    shutil.copytree(REPO / "peft_bench", source / "peft_bench", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    build = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation"]
    subprocess.run([*build, "-w", str(wheels), str(source)], check=True, capture_output=True, timeout=600)
    [wheel] = wheels.glob("peft_bench-*.whl")
    pip_install(site, str(wheel))

    where = python(site, work, "-c", "import peft_bench.conf; print(peft_bench.conf.__file__)")
    assert where.stdout.startswith(str(site)), (
        where.stdout + where.stderr
    )  # the wheel's copy, not the checkout
    job = python(site, work, "-m", "peft_bench", "--cfg", "job")
    assert job.returncode == 0 and "name: mona" in job.stdout, job.stderr
    ran = python(site, work, "-m", "peft_bench", *CELL[1:], "method=lora")
    assert ran.returncode == 0, ran.stderr
    [record] = records(work / "results")
    assert record["status"] == "completed" and record["weights"] == "mini"
