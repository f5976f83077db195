"""What a workspace's test set measures: which split is in use, its size per class, and how many of
its test images have a copy in its training set (``data.duplicates``, ``data.splits``).

On the official split of the brain-tumour MRI dataset most test images have such a twin, so its
accuracy mixes recall of memorised images with generalisation; on the clean split none has one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from hscc_core.data.duplicates import HASH_NAME, find_groups, twins_in_training
from hscc_core.data.splits import class_counts
from hscc_core.runs.workspace import Progress, Workspace


@dataclass(frozen=True)
class SplitOverview:
    """The split in use and its leaks.

    Attributes
    ----------
    split : str
        ``official`` or ``clean``.
    data_fingerprint : str
        Fingerprint of the files in use (the split's own, so runs are stored per split).
    dedupe : bool
        Whether ``--dedupe`` dropped files.
    train, test : dict
        Class -> number of files on each side.
    twins : dict
        Class -> ``{"test", "pixel", "near"}``: test files, those pixel-identical to a training
        file at the input size, and those sharing a duplicate group with one (includes ``pixel``).
    threshold : int
        Perceptual-hash distance (bits) of the near-identical relation.
    hash : str
        The perceptual hash.
    size : int
        Input size the images were compared at.
    """

    split: str
    data_fingerprint: str
    dedupe: bool
    train: dict[str, int]
    test: dict[str, int]
    twins: dict[str, dict[str, int]]
    threshold: int
    hash: str
    size: int

    @property
    def test_images(self) -> int:
        return sum(self.test.values())

    @property
    def test_with_pixel_twin(self) -> int:
        return sum(r["pixel"] for r in self.twins.values())

    @property
    def test_with_twin(self) -> int:
        return sum(r["near"] for r in self.twins.values())

    def sentence(self) -> str:
        """One line for people, e.g. for the Baseline page."""
        head = (f"{self.split.capitalize()} split{' (de-duplicated)' if self.dedupe else ''}: "
                f"{sum(self.train.values())} training and {self.test_images} test images; ")
        if self.test_with_twin == 0:
            return head + f"no test image has a twin in training (pixel- or near-identical at {self.size} px)."
        return head + (f"{self.test_with_twin} test images have a twin in training ({self.test_with_pixel_twin} "
                       f"pixel-identical at {self.size} px, {self.test_with_twin - self.test_with_pixel_twin} "
                       "near-identical or in the same duplicate group).")

    def to_dict(self) -> dict:
        return dict(asdict(self), test_images=self.test_images, test_with_pixel_twin=self.test_with_pixel_twin,
                    test_with_twin=self.test_with_twin, sentence=self.sentence())


def split_overview(ws: Workspace, progress: Progress | None = None) -> SplitOverview:
    """Which split ``ws`` uses, its per-class counts and its test images with a training twin.

    Decodes every file once per dataset and input size (then cached with the workspace's
    signatures); no model is loaded.
    """
    progress = progress or (lambda stage, done, total: None)
    index = ws.index(progress)
    groups = find_groups(index, ws.signatures(progress))
    return SplitOverview(ws.split, index.fingerprint, ws.dedupe, class_counts(index, "train"),
                         class_counts(index, "test"), twins_in_training(index, groups), groups.threshold,
                         HASH_NAME, ws.size)
