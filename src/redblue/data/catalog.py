"""The datasets redblue knows: their files (IDX files or one tarball), the digests that verify them, and their mirrors."""

from __future__ import annotations

from dataclasses import dataclass

from redblue.errors import ConfigError

SPLITS = ("train", "test")
IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions
LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension
IMAGE_SHAPE = (28, 28)  # (H, W) of every IDX dataset's images; one channel


@dataclass(frozen=True)
class FileSpec:
    """One IDX file of a dataset and the digests that verify it.

    `filename` is the raw name; the download is `filename + ".gz"`. `sha256` and `md5` are digests
    of the *decompressed* bytes, so they verify the original .gz, a re-compressed .gz and a raw
    copy alike; `gz_md5` is of the .gz file exactly as the hosts serve it, so it verifies only that
    file. Any one that matches verifies the file (see `redblue.data.idx.check_digests`).
    """

    filename: str
    count: int
    sha256: str | None = None
    md5: str | None = None
    gz_md5: str | None = None

    @property
    def magic(self) -> int:
        return IMAGES_MAGIC if "-images-" in self.filename else LABELS_MAGIC

    @property
    def header_bytes(self) -> int:
        return 4 + 4 * (self.magic & 0xFF)

    @property
    def nbytes(self) -> int:
        """The exact size of a good decompressed copy: header + count items (28x28 bytes or 1 byte)."""
        item_bytes = IMAGE_SHAPE[0] * IMAGE_SHAPE[1] if self.magic == IMAGES_MAGIC else 1
        return self.header_bytes + self.count * item_bytes

    @property
    def names(self) -> tuple[str, ...]:
        """The names the file may have on disk, preferred first: the original .gz, then a raw copy."""
        return (self.filename + ".gz", self.filename)

    @property
    def download_name(self) -> str:
        return self.filename + ".gz"


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset in the IDX format: its folder name, classes, mirrors and the files of each split."""

    name: str
    n_classes: int
    mirrors: tuple[str, ...]
    train: tuple[FileSpec, FileSpec]  # (images, labels)
    test: tuple[FileSpec, FileSpec]
    download_mb: int = 0  # the four .gz files together, rounded up; said when asking to download

    def split_files(self, split: str) -> tuple[FileSpec, FileSpec]:
        return self.train if split == "train" else self.test

    @property
    def files(self) -> tuple[FileSpec, ...]:
        return (*self.train, *self.test)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (1, *IMAGE_SHAPE)

    def split_count(self, split: str) -> int:
        return self.split_files(split)[0].count


@dataclass(frozen=True)
class ArchiveFile:
    """A dataset's one tarball, and the MD5 of the file exactly as its host serves it (the digest it publishes)."""

    filename: str
    md5: str
    size: int  # bytes, as the host serves it; a file of another size is not this one

    @property
    def names(self) -> tuple[str, ...]:
        return (self.filename,)

    @property
    def download_name(self) -> str:
        return self.filename


@dataclass(frozen=True)
class ArchiveSpec:
    """A dataset in the CIFAR python format: one tarball whose members are pickled batches.

    `folder` is the tarball's top folder; `train`/`test` name its batch members, `meta` the member
    with the class names (under `names_key`); each batch holds `data` (count, C*H*W) uint8 in CHW
    order and a list of labels under `label_key`.
    """

    name: str
    n_classes: int
    mirrors: tuple[str, ...]
    archive: ArchiveFile
    folder: str
    train: tuple[str, ...]
    test: tuple[str, ...]
    meta: str
    label_key: str
    names_key: str
    counts: tuple[int, int]  # (train, test) images
    image_shape: tuple[int, int, int] = (3, 32, 32)
    download_mb: int = 0

    def split_files(self, split: str) -> tuple[ArchiveFile]:
        return (self.archive,)

    @property
    def files(self) -> tuple[ArchiveFile]:
        return (self.archive,)

    def split_members(self, split: str) -> tuple[str, ...]:
        return self.train if split == "train" else self.test

    def split_count(self, split: str) -> int:
        return self.counts[0] if split == "train" else self.counts[1]


CatalogSpec = DatasetSpec | ArchiveSpec


def _file(filename: str, count: int, *, sha256: str | None = None, md5: str | None = None,
          gz_md5: str | None = None) -> FileSpec:
    return FileSpec(filename, count, sha256=sha256, md5=md5, gz_md5=gz_md5)


TRAIN_IMAGES, TRAIN_LABELS = "train-images-idx3-ubyte", "train-labels-idx1-ubyte"
TEST_IMAGES, TEST_LABELS = "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"

# Where each digest comes from. A decompressed digest is listed only if we computed it from a copy
# whose .gz matched the publisher's .gz md5, or if two independent sources agree on it.
#
# MNIST: sha256 of the decompressed files, from the project's data README (shared/data).
#
# Fashion-MNIST: gz_md5 as the publisher gives them (zalandoresearch/fashion-mnist README; also in
# torchvision). Labels: sha256 computed here from the publisher's own .gz files (the repository's
# data/fashion/ folder, commit b2617bb), after checking them against those md5s. Images: md5 of
# the decompressed files, as two independent sources list them: the Mila datasets mirror's
# git-annex keys of FashionMNIST/raw/* (datasets-mila/datasets--fashionmnist, branch
# var/torchvision) and a tutorial that ran md5sum after gunzip. The same sources' md5s of the two
# label files equal those of the labels computed here, which is what vouches for the image md5s.
# No copy of the images could be reached to compute their sha256.
#
# KMNIST: gz_md5 as its publisher gives them (rois-codh/kmnist; also in torchvision). Train labels:
# sha256 computed here from a torchvision raw folder committed to a public repository
# (YashDagade/ECE-685-Fall-2024, data/KMNIST/raw), whose .gz matched the published md5; its
# decompressed md5 (949e7530...) equals the Mila mirror's annex key for the 60008-byte file.
# Test labels: md5 of the decompressed file, on which the Mila mirror's annex key
# (datasets-mila/datasets--kmnist) and a second, independent table agree. Images: no decompressed
# digest, because those two sources disagree (92be26ec.../bf305b8c... against
# 6da9a790.../3cf9ba58...) and no copy could be checked; only the original .gz verifies, and a
# gunzipped or re-compressed copy is reported "unverified", never "corrupt".
#
# Mirrors, primary first: MNIST as torchvision (ossci) and TensorFlow Datasets (CVDF) download it;
# Fashion-MNIST from its S3 site, then the copy in its GitHub repository (data/fashion); KMNIST
# from CODH, then the Google Storage bucket its README named before. A mirror's copy is used only
# if it passes the same digests.
DATASETS: dict[str, CatalogSpec] = {
    "mnist": DatasetSpec(
        name="mnist",
        n_classes=10,
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
        ),
        train=(
            _file(TRAIN_IMAGES, 60000, sha256="ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"),
            _file(TRAIN_LABELS, 60000, sha256="65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"),
        ),
        test=(
            _file(TEST_IMAGES, 10000, sha256="0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"),
            _file(TEST_LABELS, 10000, sha256="ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"),
        ),
        download_mb=12,
    ),
    "fashion-mnist": DatasetSpec(
        name="fashion-mnist",
        n_classes=10,
        mirrors=(
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
            "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
        ),
        train=(
            _file(TRAIN_IMAGES, 60000, md5="f4a8712d7a061bf5bd6d2ca38dc4d50a",
                  gz_md5="8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
            _file(TRAIN_LABELS, 60000, sha256="bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
                  gz_md5="25c81989df183df01b3e8a0aad5dffbe"),
        ),
        test=(
            _file(TEST_IMAGES, 10000, md5="8181f5470baa50b63fa0f6fddb340f0a",
                  gz_md5="bef4ecab320f06d8554ea6380940ec79"),
            _file(TEST_LABELS, 10000, sha256="0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
                  gz_md5="bb300cfdad3c16e7a12a480ee83cd310"),
        ),
        download_mb=31,
    ),
    "kmnist": DatasetSpec(
        name="kmnist",
        n_classes=10,
        mirrors=(
            "http://codh.rois.ac.jp/kmnist/dataset/kmnist/",
            "https://storage.googleapis.com/kuzushiji-mnist/",
        ),
        train=(
            _file(TRAIN_IMAGES, 60000, gz_md5="bdb82020997e1d708af4cf47b453dcf7"),
            _file(TRAIN_LABELS, 60000, sha256="2a16eeae62da984b8bd24fa32e31d47291f01dac3fe84d5594f304f71e7d374b",
                  gz_md5="e144d726b3acfaa3e44228e80efcd344"),
        ),
        test=(
            _file(TEST_IMAGES, 10000, gz_md5="5c965bf0a639b31b8f53240b1b52f4d7"),
            _file(TEST_LABELS, 10000, md5="9f55f451c0988b028eccdf7d5cc265ab",
                  gz_md5="7320c461ea6c1c855c0b718fb2a4b134"),
        ),
        download_mb=22,
    ),
    # CIFAR: the python-format tarballs, verified by the MD5 the publisher lists on
    # https://www.cs.toronto.edu/~kriz/cifar.html (the same as torchvision's `tgz_md5`); the sizes
    # are those the host sends (Content-Length, as download logs of torchvision and Keras show).
    # Its members are pickles: `redblue.data.pickles` reads them, after the MD5 matched.
    "cifar10": ArchiveSpec(
        name="cifar10",
        n_classes=10,
        mirrors=("https://www.cs.toronto.edu/~kriz/",),
        archive=ArchiveFile("cifar-10-python.tar.gz", md5="c58f30108f718f92721af3b95e74349a", size=170498071),
        folder="cifar-10-batches-py",
        train=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test=("test_batch",),
        meta="batches.meta",
        label_key="labels",
        names_key="label_names",
        counts=(50000, 10000),
        download_mb=163,
    ),
    "cifar100": ArchiveSpec(  # the 100 fine labels; the 20 coarse ones are not read
        name="cifar100",
        n_classes=100,
        mirrors=("https://www.cs.toronto.edu/~kriz/",),
        archive=ArchiveFile("cifar-100-python.tar.gz", md5="eb9058c3a382ffc7106e4002c42a8d85", size=169001437),
        folder="cifar-100-python",
        train=("train",),
        test=("test",),
        meta="meta",
        label_key="fine_labels",
        names_key="fine_label_names",
        counts=(50000, 10000),
        download_mb=162,
    ),
}


def get_spec(name: str) -> CatalogSpec:
    if name not in DATASETS:
        raise ConfigError(
            f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}; or give a dataset file or "
            f"image folder by its path (./data.npz, ./data.safetensors, ./images/ or file:NAME)"
        )
    return DATASETS[name]
