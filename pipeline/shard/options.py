"""What `alexnet shard` is asked to do, as one object: the parser fills it (`ShardOptions.from_args`),
`shard_split` runs it, `alexnet submit -- shard` checks it before uploading anything, and the tests
and the demo build it by keyword. Light on purpose (no image or Ray import): the parser imports it.

    shard_split(ShardOptions(src="~/imagenet/train", out="out/", split="train"))
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass

from pipeline.errors import UserError

SPLITS = ("train", "val")  # other names with custom_split=True (--custom-split)


@dataclass(frozen=True, kw_only=True)
class ShardOptions:
    """One split's sharding: each field is the `alexnet shard` flag of the same name (docs/sharding.md)."""

    src: str  # ImageNet folder (class folders or flat val/), ILSVRC2012_img_train.tar, or URL
    out: str  # output folder or object-store URL
    split: str
    labels: str | None = None  # labels of a flat folder (CSV, LOC_val_solution.csv, or devkit ground truth)
    synset_map: str | None = None  # the devkit's ID -> synset map, for ground-truth --labels
    classes: str | None = None  # class list file; default: the train manifest in `out`, else the synsets found
    shard_size: int = 1000  # samples per shard
    seed: int = 0  # the shuffle's seed
    size: int = 256  # stored images' side, pixels
    quality: int = 95  # JPEG quality of the stored images
    chroma: str = "420"  # JPEG chroma subsampling: 420 or 444
    address: str | None = None  # the Ray instance (pipeline/ray_instance.py)
    max_in_flight: int | None = None  # shard tasks at once; default 2 per cluster CPU
    max_skip_fraction: float = 0.01  # unreadable inputs tolerated, as a fraction of the split
    overwrite: bool = False  # replace a split made another way
    limit: int | None = None  # the first N inputs only
    custom_split: bool = False  # a split named other than train or val

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ShardOptions:
        """The options of a parsed `alexnet shard` command line (every field is one of its flags)."""
        return cls(**{field.name: getattr(args, field.name) for field in dataclasses.fields(cls)})

    def check(self) -> None:
        """Refuse values no sharding can use, naming the flag; reads nothing."""
        split = self.split
        if not split or not split.replace("_", "").isalnum() or not split.isascii():
            raise UserError(f"--split {split!r}: use letters, digits and '_' only (it names the shard files)")
        if split not in SPLITS and not self.custom_split:
            raise UserError(f"--split {split}: use {' or '.join(SPLITS)} (a split of another name, e.g. test, "
                            "needs --custom-split)")
        if self.shard_size < 1:
            raise UserError(f"--shard-size {self.shard_size}: must be at least 1")
        if self.size < 8:
            raise UserError(f"--size {self.size}: must be at least 8 pixels")
        if not 1 <= self.quality <= 100:
            raise UserError(f"--quality {self.quality}: must be between 1 and 100")
        if not 0 <= self.max_skip_fraction <= 1:
            raise UserError(f"--max-skip-fraction {self.max_skip_fraction}: must be between 0 and 1")
        if self.max_in_flight is not None and self.max_in_flight < 1:
            raise UserError(f"--max-in-flight {self.max_in_flight}: must be at least 1")
