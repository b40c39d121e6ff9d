"""The report's profiles: which preset each table reads, the sweeps a table needs beyond its preset,
and (mini) which of the paper's columns an embedded dataset stands for. Everything a reader must
change when a preset changes is here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from hydra.core.global_hydra import GlobalHydra

from peft_bench.errors import UserError
from peft_bench.plugins import config_session
from peft_bench.report.grid import Cell, Part, preset_cells


@dataclass(frozen=True)
class Profile:
    suffix: str  # table 3's preset is `table3<suffix>`, Figure 5's `fig5<suffix>`
    # The sweeps of a table beyond its preset's own, e.g. Table 2's ADE20K half.
    extra_parts: Mapping[str, tuple[Part, ...]] = field(default_factory=dict)
    # Our dataset name -> the dataset of the paper's column it stands for (absent: its own name).
    paper_datasets: Mapping[str, str] = field(default_factory=dict)

    def preset(self, target: str) -> str:
        """The preset of `target` ("1" ... "5", "ext", "fig5", "vtab", "fgvc"): table1, ..., table_ext,
        fig5, vtab, fgvc (+ suffix)."""
        name = f"table{target}" if target.isdigit() else {"ext": "table_ext"}.get(target, target)
        return f"{name}{self.suffix}"

    def has_preset(self, target: str) -> bool:
        """Whether `target`'s preset exists: a suite may have none in a profile (FGVC in mini)."""
        with config_session():
            known = GlobalHydra.instance().config_loader().get_group_options("experiment")
        return self.preset(target) in known

    def cells(self, target: str, overrides: Sequence[str] = ()) -> list[Cell]:
        """The cells of `target` (as `preset`'s): its preset's sweep and any extra ones."""
        return preset_cells(self.preset(target), (Part(), *self.extra_parts.get(target, ())), overrides)


PROFILES = {
    "paper": Profile(
        suffix="",
        # conf/experiment/table2.yaml's second command (Mona's ADE20K settings come with it).
        extra_parts={"2": (Part(("dataset=ade20k",)),)},
    ),
    "mini": Profile(
        suffix="_mini",
        extra_parts={"2": (Part(("dataset=shapes_seg",)),)},
        paper_datasets={
            "shapes_inst": "coco",
            "shapes_det": "voc",
            "shapes_seg": "ade20k",
            "shapes_single": "flowers102",
            "digits": "pets",
            "shapes": "voc2007",
        },
    ),
}


def profile(name: str) -> Profile:
    if name not in PROFILES:
        raise UserError(f"Unknown profile {name!r}: use one of {', '.join(PROFILES)}.")
    return PROFILES[name]
