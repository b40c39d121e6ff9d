"""The house: one model builder behind runs, `params` and the tables; registries with user errors; an
import graph without cycles, in which the schema imports nothing of the package."""

from __future__ import annotations

import ast
import csv
from pathlib import Path

import pytest
import torch
from conftest import REPO, TINY_DETECTION_DATA, records, run_cli
from hydra import compose
from hydra.errors import ConfigCompositionException

from peft_bench.builder import build_task_model, build_tuned_backbone, check_choices
from peft_bench.config import Config, DataConfig, UperNetHeadConfig
from peft_bench.errors import UserError
from peft_bench.methods import METHODS
from peft_bench.params import count
from peft_bench.plugins import config_session
from peft_bench.registry import Registry
from peft_bench.report.__main__ import main as report
from peft_bench.tasks import DATASETS, HEADS, TASKS

EMBEDDED = ("shapes", "shapes_det", "shapes_inst", "shapes_seg")  # one dataset per task


def trainable(module: torch.nn.Module) -> set[str]:
    return {name for name, p in module.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("dataset", EMBEDDED)
def test_the_head_changes_nothing_of_what_trains_in_the_backbone(dataset: str) -> None:
    """For every method: the tuned backbone alone, the task model's backbone and `params` agree."""
    with config_session():
        for method in sorted(METHODS):
            cfg = compose("config", [f"dataset={dataset}", f"method={method}"])
            with torch.device("meta"):
                alone = build_tuned_backbone(cfg, pretrained=False)
                model = build_task_model(cfg, num_classes=3, pretrained=False)
            assert trainable(model.backbone) == trainable(alone), method
            counted = sum(p.numel() for n, p in alone.named_parameters() if n in trainable(alone))
            assert count(cfg)["backbone_trainable"] == counted, method


def test_retinanet_freezes_the_stage_norm_it_does_not_read() -> None:
    with config_session():
        cfg = compose("config", ["dataset=shapes_det", "method=normtuning"])
    with torch.device("meta"):
        backbone = build_tuned_backbone(cfg, pretrained=False)
    assert not any(p.requires_grad for p in backbone.output_norms[0].parameters())
    assert all(p.requires_grad for norm in backbone.output_norms[1:] for p in norm.parameters())


@pytest.mark.slow
def test_record_params_and_table_count_the_same_on_detection(results_dir: Path) -> None:
    """BitFit and NormTuning on the detection scenes: the record's trainable count, `params`'s and
    Table 2's (whose cells were 32 apart when the detector froze the stage-0 norm by itself)."""
    tiny = [*TINY_DETECTION_DATA, "trainer.max_steps=1"]
    result = run_cli(
        "-m", "experiment=table2_mini", "method=bitfit,normtuning", *tiny, results_dir=results_dir
    )
    assert result.returncode == 0, result.stderr
    recorded = {r["method"]: r["params"]["backbone_trainable"] for r in records(results_dir)}
    assert set(recorded) == {"bitfit", "normtuning"}

    overrides = [f"override={o}" for o in ["method=bitfit,normtuning", *tiny]]
    assert report([f"results_dir={results_dir}", "profile=mini", "table=2", *overrides]) == 0
    rows = csv.DictReader((results_dir / "report" / "table2.csv").open())
    table = {r["row"]: round(float(r["ours"]) * 1e6) for r in rows if r["metric"] == "params_m"}
    with config_session():
        for method, label in (("bitfit", "BitFit"), ("normtuning", "NormTuning")):
            cfg = compose("config", ["experiment=table2_mini", f"method={method}", *tiny])
            assert recorded[method] == count(cfg)["backbone_trainable"] == table[label]


def test_wrong_names_fail_with_the_known_ones() -> None:
    with config_session():
        cfg = compose("config", ["dataset=shapes_det"])
        with pytest.raises(
            UserError, match=r"Unknown task 'detektion' \(data\.task\)\. Known: classification"
        ):
            check_choices(compose("config", ["dataset=shapes_det", "data.task=detektion"]))
        with pytest.raises(UserError, match=r"head 'linear' belongs to the task 'classification'.*retinanet"):
            check_choices(compose("config", ["dataset=shapes_det", "head.name=linear"]))
        with pytest.raises(ConfigCompositionException, match="dataset/shapes_det"):  # names fpn_channels
            compose("config", ["dataset=shapes_det", "head=upernet"])
        with pytest.raises(UserError, match=r"dataset 'shapes_seg' belongs to the task 'semantic'"):
            check_choices(compose("config", ["dataset=shapes_det", "data.name=shapes_seg"]))
        assert (
            check_choices(compose("config", ["dataset=shapes_inst", "head.name=mask_rcnn"])).name
            == "instance"
        )
    assert check_choices(cfg).main_metric == "ap50"
    retinanet_named_upernet = Config(
        method=METHODS["mona"].config_class(name="mona"),
        data=DataConfig(name="shapes_det", task="detection"),
        head=UperNetHeadConfig(name="retinanet"),
    )
    with pytest.raises(UserError, match=r"head\.name='retinanet' with the settings of another head"):
        check_choices(retinanet_named_upernet)


def test_registries_list_what_the_package_ships_and_refuse_a_second_entry_of_a_name() -> None:
    assert set(TASKS) == {"classification", "detection", "instance", "semantic"}
    assert {HEADS[h].task for h in HEADS} == set(TASKS) and {DATASETS[d].task for d in DATASETS} == set(TASKS)
    assert HEADS["retinanet"].stages == (1, 2, 3) and HEADS["linear"].stages is None
    registry: Registry[int] = Registry("thing", "thing.name")
    registry.add("a", 1)
    registry.add("a", 1)  # the same entry again (a module imported twice) is harmless
    with pytest.raises(ValueError, match="registered twice"):
        registry.add("a", 2)
    with pytest.raises(UserError, match=r"Unknown thing 'b' \(thing\.name\)\. Known: a\."):
        registry.lookup("b")


def imports_of(path: Path, package: Path) -> set[str]:
    """The package modules that a module imports, at load time or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("peft_bench"):
            names = [f"{node.module}.{a.name}" for a in node.names]
            found.update(n if module_path(n, package) else node.module for n in names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("peft_bench"))
    return found


def module_path(name: str, package: Path) -> Path | None:
    base = package.parent / name.replace(".", "/")
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


def import_graph() -> dict[str, set[str]]:
    package = REPO / "peft_bench"
    graph = {}
    for path in package.rglob("*.py"):
        name = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        graph[name] = {m for m in imports_of(path, package) if m != name}
    return graph


def test_no_import_cycle_and_the_schema_imports_nothing_of_the_package() -> None:
    """Function-level imports included: a registry that imports what registers with it is a circle."""
    graph = import_graph()
    assert graph["peft_bench.config"] == set()

    def parents(module: str) -> list[str]:  # importing a.b.c imports a.b and a first
        parts = module.split(".")
        return [".".join(parts[:i]) for i in range(2, len(parts))]

    state: dict[str, str] = {}

    def visit(module: str, trail: list[str]) -> None:
        if state.get(module) == "done":
            return
        assert state.get(module) != "open", "import cycle: " + " -> ".join([*trail, module])
        state[module] = "open"
        for imported in graph.get(module, ()):
            for dependency in [*parents(imported), imported]:
                if dependency in graph and dependency != module and not module.startswith(dependency + "."):
                    visit(dependency, [*trail, module])
        state[module] = "done"

    for module in graph:
        visit(module, [])


# The package's folders from the top floor down: a folder imports only folders below it.
FLOORS = (
    "report",
    "methods",
    "tasks",
    "models",
    "metrics",
    "engine",
    "data",
    "backbones",
    "layers",
    "results",
)


def test_imports_run_downward_between_folders() -> None:
    upward = []
    for module, imported in import_graph().items():
        folder = module.split(".")[1] if module.count(".") >= 2 else None
        for target in imported:
            below = target.split(".")[1] if target.count(".") >= 2 else None
            if folder in FLOORS and below in FLOORS and FLOORS.index(below) < FLOORS.index(folder):
                upward.append(f"{module} -> {target}")
    assert not upward, "imports that run up a floor: " + ", ".join(sorted(upward))


def test_methods_heads_tasks_and_the_builder_speak_to_the_contract_only() -> None:
    """No method, head, task or the builder imports a backbone family or timm's models: they ask the
    contract (`peft_bench.backbones.base`)."""
    package = REPO / "peft_bench"
    places = [*(package / d for d in ("methods", "models", "tasks")), package / "builder.py"]
    files = [f for place in places for f in ([place] if place.is_file() else sorted(place.rglob("*.py")))]
    families = ("peft_bench.backbones.swin", "peft_bench.backbones.vit", "timm.models")
    reaching = [
        f"{path.relative_to(REPO)}: {module}"
        for path in files
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ImportFrom | ast.Import)
        for module in (
            [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
        )
        if module.startswith(families)
    ]
    assert not reaching, reaching


def test_a_config_directory_of_ones_own_adds_groups_through_the_search_path(tmp_path: Path) -> None:
    (tmp_path / "dataset").mkdir()
    (tmp_path / "dataset" / "my_shapes.yaml").write_text(
        "# @package _global_\ndata:\n  name: shapes\n  task: classification\n  train_size: 40\n"
    )
    with config_session():
        cfg = compose("config", [f"hydra.searchpath=[file://{tmp_path}]", "dataset=my_shapes"])
    assert (cfg.data.name, cfg.data.train_size, cfg.head.name) == ("shapes", 40, "linear")
