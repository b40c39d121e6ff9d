"""The suites' tasks (VTAB-1k, FGVC, the embedded VTAB) as dataset configs, stored with Hydra when
`peft_bench.tasks` is imported: `dataset=<task>` brings its suite's recipe, and for VTAB-1k and
FGVC each method's widths (`dataset_method`). Importing this imports no torch.
"""

from __future__ import annotations

from hydra.core.config_store import ConfigStore

from peft_bench.data.suites import SUITES

# Each suite's task brings its recipe as `dataset=<task>` (the command line wins): the backbone, the
# trainer, the protocol and the data's root folder and batch (docs/protocol.md, "VTAB-1k and FGVC").
SUITE_RECIPES = {
    "vtab": {"backbone": "vit_b", "trainer": "vtab", "root": "vtab-1k", "batch_size": 64},
    "fgvc": {"backbone": "vit_b", "trainer": "vtab", "root": "fgvc", "batch_size": 64},
    "vtab_mini": {"backbone": "vit_micro", "trainer": "vtab_mini", "root": None, "batch_size": 32},
}


def _suite_config(suite: str, task: str) -> dict:
    recipe = SUITE_RECIPES[suite]
    root = recipe["root"] and f"${{oc.env:PEFT_BENCH_DATA,data}}/{recipe['root']}"
    return {
        "defaults": [
            {"override /backbone": recipe["backbone"]},
            {"override /trainer": recipe["trainer"]},
            {"override /protocol": "vtab"},
            "_self_",
        ],
        "data": {"name": task, "task": "classification", "root": root, "batch_size": recipe["batch_size"]},
    }


# The methods' widths and ranks in the VTAB-1k and FGVC tables (NOAH's Table 1 and the peers':
# docs/methods.md), where ours default to the Swin presets' 64; a `dataset_method` entry per task,
# so the command line (a tune sweep's `method.rank=1,8,16`) still wins. The embedded suite keeps 64.
SUITE_METHOD_SETTINGS = {
    "adapter": {"dim": 8},
    "adaptformer": {"dim": 8},
    "lora": {"rank": 8},
    "dora": {"rank": 8},
    "mona": {"dim": 8},
    "e3va": {"dim": 8},
}
SUITES_WITH_METHOD_SETTINGS = ("vtab", "fgvc")


for _suite in SUITES.values():
    for _task in _suite.tasks:
        store = ConfigStore.instance()
        store.store(
            group="dataset", name=_task.name, package="_global_", node=_suite_config(_suite.name, _task.name)
        )
        if _suite.name in SUITES_WITH_METHOD_SETTINGS:
            for _method, _setting in SUITE_METHOD_SETTINGS.items():
                store.store(group="dataset_method", name=f"{_task.name}-{_method}", node={"method": _setting})
