"""The built-in dataset specs, as data.

The eleven few-shot datasets follow CoOp's ``DATASETS.md`` layout (folder, image folder,
split file) and ``datasets/*.py`` readers; the four ImageNet distribution-shift sets are
test-only. Class counts and (train, val, test) sizes are those of CoOp's split files;
prompt sets live in ``data/templates.json``; download sources are the official hosts
(checksums as published with torchvision's dataset classes where one exists). No split
file's sha256 is pinned: the official files are on Google Drive and no copy could be
verified byte for byte, so ``bench data check`` prints the computed hash instead.
"""

from __future__ import annotations

from bench.datasets.prompts import prompt_sets
from bench.datasets.spec import DatasetSpec, Download

SPLIT_READER = "split_file"
FGVC_READER = "bench.datasets.readers:read_fgvc_aircraft"
IMAGENET_READER = "bench.datasets.readers:read_imagenet"
IMAGENET_V2_READER = "bench.datasets.readers:read_imagenet_v2"
WNID_FOLDERS_READER = "bench.datasets.readers:read_wnid_folders"


def drive(file_id: str) -> str:
    """A Google Drive file's direct-download address (the split files CoOp's DATASETS.md links)."""
    return f"https://drive.usercontent.google.com/download?id={file_id}&export=download&confirm=t"


def split_download(split_file: str, file_id: str) -> Download:
    return Download(split_file, drive(file_id), place=split_file)


SYNTHETIC = DatasetSpec(
    name="synthetic",
    version="1",
    folder="synthetic",
    image_dir="images",
    split_file="split_zhou_Synthetic.json",
    prompts={
        "coop": ("a photo of a {}.",),
        "ensemble": ("a photo of a {}.", "a picture with {}.", "an image of {} pattern."),
    },
    generator="bench.datasets.synthetic:generate",
    n_classes=8,
)

SYNTHETIC_ALT = DatasetSpec(
    name="synthetic_alt",
    version="1",
    folder="synthetic_alt",
    image_dir="images",
    split_file="split_zhou_SyntheticAlt.json",
    prompts={
        "coop": ("a photo of {}.",),
        "ensemble": ("a photo of {}.", "a picture with {}.", "an image of {} pattern."),
    },
    generator="bench.datasets.synthetic:generate_alt",
    n_classes=6,
)

CALTECH101 = DatasetSpec(
    name="caltech101",
    version="1",
    folder="caltech-101",
    image_dir="101_ObjectCategories",
    split_file="split_zhou_Caltech101.json",
    prompts=prompt_sets("caltech101"),
    n_classes=100,
    split_sizes=(4128, 1649, 2465),
    # CoOp datasets/caltech101.py NEW_CNAMES (BACKGROUND_Google and Faces_easy are not in the split file)
    classname_fixes={
        "airplanes": "airplane",
        "Faces": "face",
        "Leopards": "leopard",
        "Motorbikes": "motorbike",
    },
    downloads=(
        Download(
            "caltech-101.zip",
            "https://data.caltech.edu/records/mzrjq-6wc02/files/caltech-101.zip",
            "md5:3138e1922a9193bfa496528edbbc45d0",
            inner="caltech-101/101_ObjectCategories.tar.gz",
            members=(("101_ObjectCategories", "101_ObjectCategories"),),
        ),
        split_download("split_zhou_Caltech101.json", "1hyarUivQE36mY6jSomru6Fjd-JzwcCzN"),
    ),
)

OXFORD_PETS = DatasetSpec(
    name="oxford_pets",
    version="1",
    folder="oxford_pets",
    image_dir="images",
    split_file="split_zhou_OxfordPets.json",
    prompts=prompt_sets("oxford_pets"),
    n_classes=37,
    split_sizes=(2944, 736, 3669),
    downloads=(
        Download(
            "images.tar.gz",
            "https://www.robots.ox.ac.uk/~vgg/data/pets/data/images.tar.gz",
            "md5:5c4f3ee8e5d25df40f4fd59a7f44e54c",
            members=(("images", "images"),),
        ),
        Download(
            "annotations.tar.gz",
            "https://www.robots.ox.ac.uk/~vgg/data/pets/data/annotations.tar.gz",
            "md5:95a8c909bbe2e81eed6a22bccdf3f68f",
            members=(("annotations", "annotations"),),
        ),
        split_download("split_zhou_OxfordPets.json", "1501r8Ber4nNKvmlFVQZ8SeUHTcdTTEqs"),
    ),
)

STANFORD_CARS = DatasetSpec(
    name="stanford_cars",
    version="1",
    folder="stanford_cars",
    image_dir="",
    split_file="split_zhou_StanfordCars.json",
    prompts=prompt_sets("stanford_cars"),
    n_classes=196,
    split_sizes=(6509, 1635, 8041),
    downloads=(split_download("split_zhou_StanfordCars.json", "1ObCFbaAgVu0I-k_Au-gIUcefirdAuizT"),),
    manual=(
        "The official ai.stanford.edu links (cars_train.tgz, cars_test.tgz, car_devkit.tgz, "
        "cars_test_annos_withlabels.mat) are dead (CoOp issue #61). Get the original release from a mirror that "
        "keeps its file names (cars_train/00001.jpg ...) and arrange it as {folder}/cars_train/, {folder}/cars_test/, "
        "{folder}/devkit/ and {folder}/cars_test_annos_withlabels.mat; then run `bench data prepare stanford_cars` "
        "again (it fetches the split file) and `bench data check stanford_cars` (it verifies every listed image)."
    ),
)

OXFORD_FLOWERS = DatasetSpec(
    name="oxford_flowers",
    version="1",
    folder="oxford_flowers",
    image_dir="jpg",
    split_file="split_zhou_OxfordFlowers.json",
    prompts=prompt_sets("oxford_flowers"),
    n_classes=102,
    split_sizes=(4093, 1633, 2463),
    downloads=(
        Download(
            "102flowers.tgz",
            "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/102flowers.tgz",
            "md5:52808999861908f626f3c1f4e79d11fa",
            members=(("jpg", "jpg"),),
        ),
        Download(
            "imagelabels.mat",
            "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/imagelabels.mat",
            "md5:e0620be6f572b9609742df49c70aed4d",
            place="imagelabels.mat",
        ),
        Download("cat_to_name.json", drive("1AkcxCXeK_RCGCEC_GvmWxjcjaNhu-at0"), place="cat_to_name.json"),
        split_download("split_zhou_OxfordFlowers.json", "1Pp0sRXzZFZq15zVOzKjKBu4A9i01nozT"),
    ),
)

FOOD101 = DatasetSpec(
    name="food101",
    version="1",
    folder="food-101",
    image_dir="images",
    split_file="split_zhou_Food101.json",
    prompts=prompt_sets("food101"),
    n_classes=101,
    split_sizes=(50500, 20200, 30300),
    downloads=(
        Download(
            "food-101.tar.gz",
            "http://data.vision.ee.ethz.ch/cvl/food-101.tar.gz",
            "md5:85eeb15f3717b99a5da872d97d918f87",
            members=(("food-101/images", "images"), ("food-101/meta", "meta")),
        ),
        split_download("split_zhou_Food101.json", "1QK0tGi096I0Ba6kggatX1ee6dJFIcEJl"),
    ),
)

FGVC_AIRCRAFT = DatasetSpec(
    name="fgvc_aircraft",
    version="1",
    folder="fgvc_aircraft",
    image_dir="images",
    split_file="variants.txt",
    prompts=prompt_sets("fgvc_aircraft"),
    n_classes=100,
    split_sizes=(3334, 3333, 3333),
    reader=FGVC_READER,
    downloads=(
        # Unpinned: the official page links its md5 on a separate page no source here reproduces (the md5 some
        # ports carry, 85eeb15f..., is Food-101's); prepare prints the computed sha256 and the reader checks counts.
        Download(
            "fgvc-aircraft-2013b.tar.gz",
            "https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/archives/fgvc-aircraft-2013b.tar.gz",
            members=tuple(
                (f"fgvc-aircraft-2013b/data/{name}", name)
                for name in (
                    "images",
                    "variants.txt",
                    "images_variant_train.txt",
                    "images_variant_val.txt",
                    "images_variant_test.txt",
                )
            ),
        ),
    ),
)

SUN397 = DatasetSpec(
    name="sun397",
    version="1",
    folder="sun397",
    image_dir="SUN397",
    split_file="split_zhou_SUN397.json",
    prompts=prompt_sets("sun397"),
    n_classes=397,
    split_sizes=(15880, 3970, 19850),
    downloads=(
        Download(
            "SUN397.tar.gz", None, "md5:8ca2778205c41d23104230ba66911c7a", members=(("SUN397", "SUN397"),)
        ),
        split_download("split_zhou_SUN397.json", "1y2RD81BYuiyvebdN-JymPfyWYcd8_MUq"),
    ),
    manual=(
        "The official vision.princeton.edu/projects/2010/SUN/SUN397.tar.gz link is dead (CoOp issue #90). Get "
        "SUN397.tar.gz (md5 8ca2778205c41d23104230ba66911c7a) from a mirror, put it at {downloads}/SUN397.tar.gz "
        "and run `bench data prepare sun397` again: it verifies the md5, unpacks SUN397/ and fetches the split file."
    ),
)

DTD = DatasetSpec(
    name="dtd",
    version="1",
    folder="dtd",
    image_dir="images",
    split_file="split_zhou_DescribableTextures.json",
    prompts=prompt_sets("dtd"),
    n_classes=47,
    split_sizes=(2820, 1128, 1692),
    downloads=(
        Download(
            "dtd-r1.0.1.tar.gz",
            "https://www.robots.ox.ac.uk/~vgg/data/dtd/download/dtd-r1.0.1.tar.gz",
            "md5:fff73e5086ae6bdbea199a49dfb8a4c1",
            members=(("dtd/images", "images"), ("dtd/imdb", "imdb"), ("dtd/labels", "labels")),
        ),
        split_download("split_zhou_DescribableTextures.json", "1u3_QfB467jqHgNXC00UIzbLZRQCg2S7x"),
    ),
)

EUROSAT = DatasetSpec(
    name="eurosat",
    version="1",
    folder="eurosat",
    image_dir="2750",
    split_file="split_zhou_EuroSAT.json",
    prompts=prompt_sets("eurosat"),
    n_classes=10,
    split_sizes=(13500, 5400, 8100),
    # CoOp datasets/eurosat.py NEW_CNAMES (the official split file already has the new names)
    classname_fixes={
        "AnnualCrop": "Annual Crop Land",
        "HerbaceousVegetation": "Herbaceous Vegetation Land",
        "Highway": "Highway or Road",
        "Industrial": "Industrial Buildings",
        "Pasture": "Pasture Land",
        "PermanentCrop": "Permanent Crop Land",
        "Residential": "Residential Buildings",
        "SeaLake": "Sea or Lake",
    },
    downloads=(
        # madm.dfki.de (CoOp's link) is gone; torchgeo's pinned copy of the same EuroSAT.zip
        Download(
            "EuroSAT.zip",
            "https://huggingface.co/datasets/torchgeo/eurosat/resolve/"
            "c877bcd43f099cd0196738f714544e355477f3fd/EuroSAT.zip",
            "md5:c8fa014336c82ac7804f0398fcb19387",
            members=(("2750", "2750"),),
        ),
        split_download("split_zhou_EuroSAT.json", "1Ip7yaCWFi0eaOFUGga0lUdVi_DDQth1o"),
    ),
)

UCF101 = DatasetSpec(
    name="ucf101",
    version="1",
    folder="ucf101",
    image_dir="UCF-101-midframes",
    split_file="split_zhou_UCF101.json",
    prompts=prompt_sets("ucf101"),
    n_classes=101,
    split_sizes=(7639, 1898, 3783),
    downloads=(
        # CoOp's middle video frames, only published on Google Drive, with no checksum (unpinned: prepare
        # prints the computed sha256 and the split file's sizes are checked)
        Download(
            "UCF-101-midframes.zip",
            drive("10Jqome3vtUA2keJkNanAiFpgbyC9Hc2O"),
            members=(("UCF-101-midframes", "UCF-101-midframes"),),
        ),
        split_download("split_zhou_UCF101.json", "1I0S0q91hJfsV9Gf4xDIjgDq4AqBNJb1y"),
    ),
)

IMAGENET = DatasetSpec(
    name="imagenet",
    version="1",
    folder="imagenet",
    image_dir="images",
    split_file="classnames.txt",
    prompts=prompt_sets("imagenet"),
    n_classes=1000,
    split_sizes=(1281167, 0, 50000),
    reader=IMAGENET_READER,
    val_source="train",
    class_id_list="imagenet_synsets.txt",
    manual=(
        "ImageNet needs an account at https://image-net.org (ILSVRC2012). Put the training images in "
        "{folder}/images/train/<wnid>/*.JPEG (1,000 folders like n01440764) and the 50,000 validation images, "
        "sorted into the same wnid folders, in {folder}/images/val/<wnid>/*.JPEG (symbolic links are fine). "
        "`bench data prepare imagenet` writes {folder}/classnames.txt (CLIP's class names, as CoOp's)."
    ),
)


def _shift_spec(
    name: str,
    folder: str,
    image_dir: str,
    reader: str,
    n_classes: int,
    n_test: int,
    class_id_list: str,
    downloads: tuple[Download, ...] = (),
    manual: str | None = None,
) -> DatasetSpec:
    """A test-only ImageNet shift set: CoOp's folder layout plus a copy of ImageNet's classnames.txt."""
    return DatasetSpec(
        name=name,
        version="1",
        folder=folder,
        image_dir=image_dir,
        split_file="classnames.txt",
        prompts=prompt_sets("imagenet"),
        n_classes=n_classes,
        split_sizes=(0, 0, n_test),
        reader=reader,
        test_only=True,
        shift_of="imagenet",
        class_id_list=class_id_list,
        downloads=downloads,
        manual=manual,
    )


# ImageNet-V2's archive has no published checksum (unpinned: prepare prints the computed sha256)
IMAGENET_V2 = _shift_spec(
    "imagenet_v2",
    "imagenetv2",
    "imagenetv2-matched-frequency-format-val",
    IMAGENET_V2_READER,
    1000,
    10000,
    "imagenet_synsets.txt",
    downloads=(
        Download(
            "imagenetv2-matched-frequency.tar.gz",
            "https://huggingface.co/datasets/vaishaal/ImageNetV2/"
            "resolve/main/imagenetv2-matched-frequency.tar.gz",
            members=(("imagenetv2-matched-frequency-format-val", "imagenetv2-matched-frequency-format-val"),),
        ),
    ),
)
IMAGENET_SKETCH = _shift_spec(
    "imagenet_sketch",
    "imagenet-sketch",
    "images",
    WNID_FOLDERS_READER,
    1000,
    50889,
    "imagenet_synsets.txt",
    manual=(
        "Download ImageNet-Sketch from https://github.com/HaohanWang/ImageNet-Sketch (its README links the "
        "hosted copies) and extract it so that {folder}/images/<wnid>/ holds the 1,000 class folders; then run "
        "`bench data prepare imagenet_sketch` (writes classnames.txt) and `bench data check imagenet_sketch`."
    ),
)
IMAGENET_A = _shift_spec(
    "imagenet_a",
    "imagenet-adversarial",
    "imagenet-a",
    WNID_FOLDERS_READER,
    200,
    7500,
    "imagenet_a_synsets.txt",
    downloads=(
        Download(
            "imagenet-a.tar",
            "https://people.eecs.berkeley.edu/~hendrycks/imagenet-a.tar",
            "md5:c3e55429088dc681f30d81f4726b6595",  # as torchvision-style dataset classes publish it
            members=(("imagenet-a", "imagenet-a"),),
        ),
    ),
)
IMAGENET_R = _shift_spec(
    "imagenet_r",
    "imagenet-rendition",
    "imagenet-r",
    WNID_FOLDERS_READER,
    200,
    30000,
    "imagenet_r_synsets.txt",
    downloads=(
        Download(
            "imagenet-r.tar",
            "https://people.eecs.berkeley.edu/~hendrycks/imagenet-r.tar",
            "md5:a61312130a589d0ca1a8fca1f2bd3337",
            members=(("imagenet-r", "imagenet-r"),),
        ),
    ),
)
