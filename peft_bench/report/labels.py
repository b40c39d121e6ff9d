"""Display names of methods, datasets, backbones and metrics, spelt as the paper does; a name
without one is shown as it is. A method's or a backbone's name is the label it registered with."""

from __future__ import annotations

from peft_bench.backbones import BACKBONES
from peft_bench.methods import METHODS
from peft_bench.plugins import load_plugins

NAMES = {
    # datasets
    "coco": "COCO",
    "voc": "Pascal VOC",
    "ade20k": "ADE20K",
    "flowers102": "Flowers102",
    "pets": "OxfordPets",
    "voc2007": "VOC2007",
    # metrics
    "ap_box": "AP_box",
    "ap_mask": "AP_mask",
    "ap50": "AP50",
    "miou": "mIoU",
    "top1": "top-1",
    "top5": "top-5",
}


def label(name: object) -> str:
    load_plugins()  # a plugin's method or backbone is labelled as it registered
    if str(name) in METHODS:
        return METHODS[str(name)].label
    if str(name) in BACKBONES:
        return BACKBONES[str(name)].label
    return NAMES.get(str(name), str(name))
