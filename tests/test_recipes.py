"""Each dataset brings its training recipe (conf/trainer), which the command line can replace."""

from __future__ import annotations

import pytest
from hydra import compose

from peft_bench.report.grid import config_session


def composed(*overrides: str):
    with config_session():
        return compose(config_name="config", overrides=list(overrides))


@pytest.mark.parametrize(
    ("dataset", "lr", "epochs", "iterations"),
    [
        ("shapes", 1e-3, 10, None),  # the default recipe
        ("flowers102", 1.5625e-5, 100, None),  # paper_cls
        ("voc", 1e-4, 12, None),  # voc_det
        ("coco", 1e-4, 36, None),  # coco_inst
        ("ade20k", 6e-5, 10, 160_000),  # ade20k_seg
        ("shapes_seg", 1e-3, 15, None),
    ],
)
def test_a_dataset_selects_its_recipe(dataset: str, lr: float, epochs: int, iterations: int | None) -> None:
    trainer = composed(f"dataset={dataset}").trainer
    assert (trainer.lr, trainer.epochs, trainer.iterations) == (pytest.approx(lr), epochs, iterations)


def test_the_command_line_recipe_wins_over_the_datasets() -> None:
    assert composed("dataset=voc", "trainer=default").trainer.lr == pytest.approx(1e-3)
    assert composed("dataset=voc", "trainer.lr=3e-4").trainer.lr == pytest.approx(3e-4)


def test_mona_trains_at_the_papers_multiplier_per_recipe() -> None:
    assert composed("dataset=pets").trainer.method_lr_mult == {"mona": 2.0}
    assert composed("dataset=ade20k").trainer.method_lr_mult == {"mona": 5.0}
    assert composed("dataset=shapes_seg").trainer.head_lr_mult == 10.0
