"""Start-up: composing a config, or failing on a wrong name, imports no model code (the registries
are lazy: `peft_bench.registry`); `params` imports what its task's head needs, not its data or
metric; every lazy entry names what builds it; and a plugin registers lazily as the package does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from conftest import REPO, cli_env

from peft_bench.data.classification import CLASSIFICATION_DATASETS
from peft_bench.methods import METHODS
from peft_bench.models.retinanet import FPN_STAGES
from peft_bench.registry import BACKBONES, DATASETS, HEADS, TASKS, Ref, Registry

MODEL_CODE = ("torch", "timm", "torchvision", "torchmetrics", "pycocotools", "numpy")


# `python -m <module> <arguments>`, then every module imported, from `sys.modules` at exit (`-X importtime`
# misses what `importlib.import_module` imports, as the lazy entries and plugins are).
PROBE = """
import atexit, json, os, runpy, sys
atexit.register(lambda: open(os.environ["MODULES_OUT"], "w").write(json.dumps(sorted(sys.modules))))
sys.argv = sys.argv[1:]
runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
"""


def imported(
    *arguments: str, env: dict[str, str] | None = None
) -> tuple[subprocess.CompletedProcess, set[str]]:
    """`python -m <arguments>` and the modules it imported."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "modules.json"
        env = dict(env or cli_env(), MODULES_OUT=str(out))
        command = [sys.executable, "-c", PROBE, *arguments]
        result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        return result, set(json.loads(out.read_text()))


def heavy(modules: set[str], packages: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules if m.split(".")[0] in packages)


@pytest.mark.parametrize(
    "overrides",
    [[], ["method=mona", "dataset=voc"], ["dataset=coco", "method=lora"], ["dataset=vtab_mini_textures"]],
)
def test_composing_a_config_imports_no_model_code(overrides: list[str]) -> None:
    result, modules = imported("peft_bench", "--cfg", "job", *overrides)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "peft_bench.plugins" in modules and "peft_bench.methods.configs" in modules
    assert heavy(modules, MODEL_CODE) == []
    assert not [m for m in modules if m.startswith(("peft_bench.models", "peft_bench.metrics"))]


def test_an_unknown_method_fails_with_every_known_one_and_imports_no_model_code() -> None:
    result, modules = imported("peft_bench", "method=nope")
    assert result.returncode == 1
    assert "Could not find 'method/nope'" in result.stderr
    assert all(f"\t{name}\n" in result.stderr for name in METHODS)
    assert heavy(modules, MODEL_CODE) == []


@pytest.mark.parametrize(
    ("dataset", "head"),
    [("shapes", "peft_bench.models.classifier"), ("shapes_det", "peft_bench.models.retinanet")],
)
def test_params_imports_the_head_of_its_task_and_neither_its_data_nor_its_metric(
    dataset: str, head: str
) -> None:
    result, modules = imported("peft_bench.params", f"dataset={dataset}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert head in modules and "torch" in modules
    assert heavy(modules, ("torchmetrics", "pycocotools")) == []
    datasets_and_evaluators = [f"peft_bench.tasks.{task}" for task in TASKS]
    assert not [m for m in modules if m.startswith("peft_bench.metrics") or m in datasets_and_evaluators]


def test_every_lazy_entry_names_what_builds_it() -> None:
    """Each loads (a method with its label and schema), and the hand-kept names agree with the code."""
    assert all(METHODS[name].label and METHODS[name].config_class for name in METHODS)
    builders = [
        *(entry.build for entry in BACKBONES.values()),
        *(entry.build for entry in DATASETS.values()),
        *(entry.build for entry in HEADS.values()),
        *(builder for task in TASKS.values() for builder in (task.build_evaluator, task.score)),
    ]
    assert all(callable(builder.load()) for builder in builders if isinstance(builder, Ref))
    classification = {name for name, entry in DATASETS.items() if entry.task == "classification"}
    assert classification == set(CLASSIFICATION_DATASETS)
    assert HEADS["retinanet"].stages == FPN_STAGES


def test_a_lazy_entry_is_known_by_its_name_and_imported_at_its_first_lookup() -> None:
    registry: Registry[object] = Registry("thing", "thing.name")
    registry.add("path", Ref("pathlib:PurePosixPath"))
    registry.add("path", Ref("pathlib:PurePosixPath"))  # the same registration again is harmless
    assert "path" in registry and list(registry) == ["path"]
    assert registry.lookup("path") is __import__("pathlib").PurePosixPath
    with pytest.raises(ValueError, match="registered twice"):
        registry.add("path", Ref("pathlib:Path"))
    with pytest.raises(ValueError, match="module:attr"):
        Ref("pathlib.Path")


LIGHT = """
from dataclasses import dataclass

from peft_bench.methods import MethodConfig, register_method


@dataclass
class FrozenConfig(MethodConfig):
    note: str = "none"


register_method("frozen", config=FrozenConfig, label="Frozen")("lazy_frozen.method:Frozen")
"""
HEAVY = """
from peft_bench.methods import Method, freeze


class Frozen(Method):
    def apply(self, backbone):
        freeze(backbone)
"""


def test_a_plugin_registers_a_method_lazily_as_the_package_does(tmp_path: Path) -> None:
    """An installed plugin (an entry point) whose package registers a method by name: composing with
    it imports neither its class's module nor torch; `params` builds it."""
    (tmp_path / "lazy_frozen").mkdir()
    (tmp_path / "lazy_frozen" / "__init__.py").write_text(LIGHT)
    (tmp_path / "lazy_frozen" / "method.py").write_text(HEAVY)
    info = tmp_path / "lazy_frozen-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: lazy-frozen\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[peft_bench.plugins]\nfrozen = lazy_frozen\n")
    env = dict(
        cli_env(), PYTHONPATH=os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    )

    composed, modules = imported("peft_bench", "--cfg", "job", "method=frozen", "method.note=hi", env=env)
    assert composed.returncode == 0, composed.stderr[-2000:]
    assert "name: frozen" in composed.stdout and "note: hi" in composed.stdout
    assert "lazy_frozen" in modules and "lazy_frozen.method" not in modules
    assert heavy(modules, MODEL_CODE) == []

    counted, modules = imported("peft_bench.params", "method=frozen", env=env)
    assert counted.returncode == 0, counted.stderr[-2000:]
    assert '"backbone_trainable": 0' in counted.stdout and "lazy_frozen.method" in modules
