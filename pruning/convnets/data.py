"""Data of resnet.py and mlp.py, read strictly: every file is checked before any work, and a bad one is one
`DataError` naming the file (and the row, or the image).

Images (each a train and an evaluation `ImageSet` of uint8 tensors or image files):
- "digits": scikit-learn's bundled 8x8 digits (1,797 images, 10 classes, one channel), split 80/20 once
  (stratified, seed 0, whatever the run's seed), upsampled to IMAGE_SIZE when it is not 8;
- "cifar10" from a folder in the official python layout (cifar-10-batches-py: data_batch_1..5, test_batch,
  batches.meta; pickled dicts with b'data' uint8 (N, 3072) and b'labels'), or "hub" (`uoft-cs/cifar10` through
  `datasets`);
- "imagefolder": root/train/<class>/*.jpg|png|..., root/val/<class>/... (ImageNet's layout); classes sorted.
Augmentation is plain torch on tensors: CIFAR and digits: random crop with padding 4 (at 32 pixels; size/8 for
other sizes, 1 for 8x8 digits) + horizontal flip (not for digits: they are not mirror-symmetric);
ImageFolder: random resized crop (scale 0.08-1, ratio 3/4-4/3) + flip, and for evaluation a resize to
size/0.875 and a center crop. Each example's draw comes from its own generator seeded by (seed, epoch, index),
so a resumed run augments exactly as an uninterrupted one. Normalisation: per-channel mean and std (CIFAR's,
ImageNet's, or the digits' train split's).

Tabular (`TabularSet`): scikit-learn's bundled breast_cancer / wine / iris, the Titanic train.csv in Kaggle's
layout, or any CSV of numeric and categorical columns with a label column. Numeric columns: median imputation
and standard scaling; categorical: most-frequent imputation and one-hot; fit on the train split only.
"""
from __future__ import annotations

import csv
import math
import os
import pickle
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.nn import functional as F

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")
SPLIT_SEED = 0   # the one fixed train/dev split of sets that ship without one (digits, tabular)


class DataError(ValueError):
    """A data file that cannot be read as its layout says: names the file and the row or entry."""


# --- image sets ---------------------------------------------------------------------------------------
class ImageSet(torch.utils.data.Dataset):
    """Images as a uint8 tensor (N, C, H, W) or a list of files, with labels; `train` sets augment.
    Items: {"pixel_values": float (C, S, S), "labels": int}. `epoch` is set by the trainer each epoch."""

    def __init__(self, labels, *, images=None, files=None, train=False, augment="cifar", size=32,
                 mean=CIFAR_MEAN, std=CIFAR_STD, seed=0, flip=True):
        self.images, self.files, self.labels = images, files, list(map(int, labels))
        self.train, self.augment, self.size, self.seed, self.epoch = train, augment, size, seed, 0
        self.flip = flip  # digits are not mirror-symmetric: no flip for them
        self.mean = torch.tensor(mean).view(-1, 1, 1)
        self.std = torch.tensor(std).view(-1, 1, 1)

    def __len__(self):
        return len(self.labels)

    def _image(self, i) -> torch.Tensor:
        if self.images is not None:
            x = self.images[i].float() / 255
            if x.shape[-1] != self.size:
                x = F.interpolate(x[None], size=(self.size, self.size), mode="bilinear", align_corners=False)[0]
            return x
        from PIL import Image
        with Image.open(self.files[i]) as im:
            return torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255

    def __getitem__(self, i):
        x = self._image(i)
        g = torch.Generator().manual_seed(hash((self.seed, self.epoch, i)) & 0x7FFFFFFF) if self.train else None
        if self.augment == "folder":
            x = random_resized_crop(x, self.size, g) if self.train else center_crop(x, self.size)
        elif self.train:  # padding 4 at 32 pixels (CIFAR's); the same share of smaller images (1 at 8)
            x = pad_crop(x, max(1, self.size // 8), g)
        if self.train and self.flip and torch.rand((), generator=g) < 0.5:
            x = x.flip(-1)
        return {"pixel_values": (x - self.mean) / self.std, "labels": self.labels[i]}


def pad_crop(x: torch.Tensor, pad: int, g) -> torch.Tensor:
    """CIFAR's random crop: zero-pad by `pad` on each side, crop the original size at a random offset."""
    h, w = x.shape[-2:]
    padded = F.pad(x, (pad, pad, pad, pad))
    top, left = (int(v) for v in torch.randint(0, 2 * pad + 1, (2,), generator=g))
    return padded[:, top:top + h, left:left + w]


def random_resized_crop(x: torch.Tensor, size: int, g, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)) -> torch.Tensor:
    """Inception's random resized crop (torchvision's rule, 10 tries, then the center crop)."""
    h, w = x.shape[-2:]
    area = h * w
    for _ in range(10):
        target = area * float(torch.empty(()).uniform_(*scale, generator=g))
        aspect = math.exp(float(torch.empty(()).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=g)))
        cw, ch = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            top = int(torch.randint(0, h - ch + 1, (), generator=g))
            left = int(torch.randint(0, w - cw + 1, (), generator=g))
            crop = x[:, top:top + ch, left:left + cw]
            return F.interpolate(crop[None], size=(size, size), mode="bilinear", align_corners=False,
                                 antialias=True)[0]
    return center_crop(x, size)


def center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """Resize the shorter side to size / 0.875 (256 for 224), then crop the center size x size."""
    h, w = x.shape[-2:]
    short = int(round(size / 0.875))
    nh, nw = (short, max(short, round(w * short / h))) if h <= w else (max(short, round(h * short / w)), short)
    x = F.interpolate(x[None], size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)[0]
    top, left = (nh - size) // 2, (nw - size) // 2
    return x[:, top:top + size, left:left + size]


@dataclass
class ImageData:
    train: ImageSet
    dev: ImageSet
    label_names: list[str]
    channels: int
    source: str
    name: str


def load_images(data: str, data_dir: str, image_size: int, seed: int) -> ImageData:
    """The image set `data` ("digits", "cifar10", "imagefolder") from `data_dir` ("" = the bundled digits;
    "hub" = uoft-cs/cifar10). Raises DataError for a missing or malformed file."""
    if data == "digits":
        return digits(image_size, seed)
    if data == "cifar10":
        if data_dir in ("hub", "hub:uoft-cs/cifar10"):
            return cifar_from_hub(image_size, seed)
        return cifar_from_folder(data_dir, image_size, seed)
    if data == "imagefolder":
        return image_folder(data_dir, image_size, seed)
    raise DataError(f"DATA={data!r}: choose digits, cifar10 or imagefolder")


def digits(image_size: int, seed: int) -> ImageData:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    d = load_digits()
    images = torch.from_numpy(np.round(d.images * (255 / 16)).astype(np.uint8))[:, None]
    tr, dv = train_test_split(np.arange(len(d.target)), test_size=0.2, random_state=SPLIT_SEED, stratify=d.target)
    train_images = images[tr]
    mean, std = (float(train_images.float().div(255).mean()),), (float(train_images.float().div(255).std()),)
    common = dict(size=image_size, mean=mean, std=std, seed=seed, augment="cifar", flip=False)
    return ImageData(ImageSet(d.target[tr], images=train_images, train=True, **common),
                     ImageSet(d.target[dv], images=images[dv], **common),
                     [str(i) for i in range(10)], 1, "sklearn.datasets.load_digits (bundled), 80/20 split", "digits")


def _unpickle(path: str) -> dict:
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="bytes")
    except FileNotFoundError:
        raise DataError(f"{path}: missing (cifar-10-batches-py holds data_batch_1..5, test_batch, batches.meta)") from None
    except Exception as e:
        raise DataError(f"{path}: not a pickled CIFAR-10 batch ({type(e).__name__}: {e})") from None


def read_cifar_batch(path: str, classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """One batch file: (images uint8 (N, 3, 32, 32), labels int64 (N,)). Raises DataError naming the file and
    the row for a missing key, a wrong dtype or shape, or a label outside 0..classes-1."""
    d = _unpickle(path)
    if not isinstance(d, dict) or b"data" not in d or b"labels" not in d:
        keys = sorted(d) if isinstance(d, dict) else type(d).__name__
        raise DataError(f"{path}: a CIFAR-10 batch is a dict with b'data' and b'labels'; found {keys}")
    data, labels = d[b"data"], d[b"labels"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        shape = getattr(data, "shape", None)
        raise DataError(f"{path}: b'data' must be uint8 of shape (N, 3072); got {getattr(data, 'dtype', type(data).__name__)} {shape}")
    if len(labels) != len(data):
        raise DataError(f"{path}: {len(data)} images but {len(labels)} labels")
    for row, label in enumerate(labels):
        if isinstance(label, bool) or not isinstance(label, (int, np.integer)) or not 0 <= int(label) < classes:
            raise DataError(f"{path}, row {row}: label {label!r} is not a class id 0..{classes - 1}")
    return data.reshape(-1, 3, 32, 32), np.asarray(labels, dtype=np.int64)


def cifar_from_folder(root: str, image_size: int, seed: int) -> ImageData:
    """CIFAR-10 in its official python layout (`root` is cifar-10-batches-py or its parent)."""
    if not root:
        raise DataError("DATA=cifar10 needs DATA_DIR: the cifar-10-batches-py folder, or 'hub'")
    if os.path.isdir(os.path.join(root, "cifar-10-batches-py")):
        root = os.path.join(root, "cifar-10-batches-py")
    if not os.path.isdir(root):
        raise DataError(f"DATA_DIR={root}: no such folder")
    meta = _unpickle(os.path.join(root, "batches.meta"))
    names = meta.get(b"label_names") if isinstance(meta, dict) else None
    if not isinstance(names, list) or len(names) != 10:
        raise DataError(f"{os.path.join(root, 'batches.meta')}: b'label_names' must list the 10 class names")
    parts = [read_cifar_batch(os.path.join(root, f"data_batch_{i}")) for i in range(1, 6)]
    test = read_cifar_batch(os.path.join(root, "test_batch"))
    images = torch.from_numpy(np.concatenate([p[0] for p in parts]))
    labels = np.concatenate([p[1] for p in parts])
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    common = dict(size=image_size, seed=seed, augment="cifar")
    return ImageData(ImageSet(labels, images=images, train=True, **common),
                     ImageSet(test[1], images=torch.from_numpy(test[0]), **common), names, 3, root, "cifar10")


def cifar_from_hub(image_size: int, seed: int) -> ImageData:  # pragma: no cover - needs the Hub
    """CIFAR-10 from the Hub (`uoft-cs/cifar10`: columns img, label; splits train, test)."""
    import datasets
    try:
        d = datasets.load_dataset("uoft-cs/cifar10")
    except Exception as e:  # offline, no cache, or no such dataset: one clear line, before any work
        raise DataError(f"DATA_DIR=hub: uoft-cs/cifar10 could not be loaded from the Hub or its cache "
                        f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); give the "
                        "cifar-10-batches-py folder instead") from None
    names = d["train"].features["label"].names

    def tensors(split):
        images = np.stack([np.asarray(im.convert("RGB"), dtype=np.uint8) for im in split["img"]])
        return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), np.asarray(split["label"])
    (xt, yt), (xd, yd) = tensors(d["train"]), tensors(d["test"])
    common = dict(size=image_size, seed=seed, augment="cifar")
    return ImageData(ImageSet(yt, images=xt, train=True, **common), ImageSet(yd, images=xd, **common), names, 3,
                     "hub:uoft-cs/cifar10", "cifar10")


def _folder_split(root: str, split: str) -> tuple[list[str], list[str]]:
    path = os.path.join(root, split)
    if not os.path.isdir(path):
        raise DataError(f"{path}: missing (the ImageFolder layout is root/train/<class>/*.jpg, root/val/<class>/...)")
    classes = sorted(c for c in os.listdir(path) if os.path.isdir(os.path.join(path, c)))
    if not classes:
        raise DataError(f"{path}: no class folders")
    files, labels = [], []
    for c in classes:
        for f in sorted(os.listdir(os.path.join(path, c))):
            full = os.path.join(path, c, f)
            if not f.lower().endswith(IMAGE_EXTENSIONS):
                raise DataError(f"{full}: not an image file ({', '.join(IMAGE_EXTENSIONS)})")
            files.append(full)
            labels.append(c)
    return files, labels


def image_folder(root: str, image_size: int, seed: int) -> ImageData:
    """ImageNet's layout; every image is opened (header and size) before training: a file PIL cannot read is
    named. A class of val/ missing from train/ is an error."""
    from PIL import Image, UnidentifiedImageError
    if not root or not os.path.isdir(root):
        raise DataError(f"DATA_DIR={root!r}: no such folder (the ImageFolder layout: root/train/<class>/, root/val/<class>/)")
    train_files, train_labels = _folder_split(root, "train")
    dev_files, dev_labels = _folder_split(root, "val")
    classes = sorted(set(train_labels))
    unknown = sorted(set(dev_labels) - set(classes))
    if unknown:
        raise DataError(f"{os.path.join(root, 'val', unknown[0])}: class {unknown[0]!r} has no folder in train/")
    for f in (*train_files, *dev_files):
        try:
            with Image.open(f) as im:
                im.verify()
        except (UnidentifiedImageError, OSError, SyntaxError) as e:
            raise DataError(f"{f}: not a readable image ({e})") from None
    index = {c: i for i, c in enumerate(classes)}
    common = dict(size=image_size, seed=seed, augment="folder", mean=IMAGENET_MEAN, std=IMAGENET_STD)
    return ImageData(ImageSet([index[c] for c in train_labels], files=train_files, train=True, **common),
                     ImageSet([index[c] for c in dev_labels], files=dev_files, **common), classes, 3, root, "imagefolder")


# --- tabular sets -------------------------------------------------------------------------------------
TITANIC_COLUMNS = ["PassengerId", "Survived", "Pclass", "Name", "Sex", "Age", "SibSp", "Parch", "Ticket", "Fare",
                   "Cabin", "Embarked"]
TITANIC_FEATURES = {"Pclass": "categorical", "Sex": "categorical", "Age": "numeric", "SibSp": "numeric",
                    "Parch": "numeric", "Fare": "numeric", "Embarked": "categorical"}
BUNDLED = ("breast_cancer", "wine", "iris")


class TabularSet(torch.utils.data.Dataset):
    """Preprocessed features (float32 (N, F)) and class ids; items {"features", "labels"}."""

    def __init__(self, features: np.ndarray, labels: np.ndarray):
        self.features = torch.from_numpy(np.asarray(features, dtype=np.float32))
        self.labels = torch.from_numpy(np.asarray(labels, dtype=np.int64))
        self.epoch = 0

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"features": self.features[i], "labels": self.labels[i]}


@dataclass
class TabularData:
    train: TabularSet
    dev: TabularSet
    label_names: list[str]
    feature_names: list[str]
    source: str
    name: str
    columns: dict = field(default_factory=dict)   # column -> "numeric" / "categorical"


def read_csv_strict(path: str, label: str, expected: list[str] | None = None) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of a CSV; DataError naming the file and row (1 = the header) for a missing file, a header
    without `label` (or not `expected`), a row of another field count, or an empty label."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: missing")
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f, strict=True)
        try:
            header = next(reader)
        except StopIteration:
            raise DataError(f"{path}: empty file") from None
        except csv.Error as e:
            raise DataError(f"{path}, row 1: {e}") from None
        if expected is not None and header != expected:
            raise DataError(f"{path}, row 1: header {header} is not Kaggle's Titanic train.csv header {expected}")
        if label not in header:
            raise DataError(f"{path}, row 1: no label column {label!r} in the header {header}")
        rows = []
        try:
            for row in reader:
                if not row:
                    continue
                if len(row) != len(header):
                    raise DataError(f"{path}, row {reader.line_num}: {len(row)} fields, the header has {len(header)}")
                if row[header.index(label)].strip() == "":
                    raise DataError(f"{path}, row {reader.line_num}: empty label ({label})")
                rows.append(row)
        except csv.Error as e:
            raise DataError(f"{path}, row {reader.line_num}: {e}") from None
    if len(rows) < 2:
        raise DataError(f"{path}: {len(rows)} data rows; at least 2 are needed")
    return header, rows


def _check_titanic(path: str, header: list[str], rows: list[list[str]]) -> None:
    col = {c: header.index(c) for c in header}
    rules = {"Survived": {"0", "1"}, "Pclass": {"1", "2", "3"}, "Sex": {"male", "female"},
             "Embarked": {"", "S", "C", "Q"}}
    for r, row in enumerate(rows, start=2):
        for c, allowed in rules.items():
            if row[col[c]] not in allowed:
                raise DataError(f"{path}, row {r}: {c}={row[col[c]]!r}, expected one of {sorted(allowed)}")
        for c in ("Age", "Fare", "SibSp", "Parch"):
            v = row[col[c]]
            try:
                if v != "" and not math.isfinite(float(v)):
                    raise ValueError
            except ValueError:
                raise DataError(f"{path}, row {r}: {c}={v!r} is not a number") from None


def _split(n: int, labels: np.ndarray, seed: int = SPLIT_SEED):
    from sklearn.model_selection import train_test_split
    return train_test_split(np.arange(n), test_size=0.2, random_state=seed, stratify=labels)


def preprocess(columns: dict[str, str], train: dict[str, list], dev: dict[str, list]):
    """Fit the imputation, one-hot and scaling on `train` only; (train features, dev features, feature names).
    `columns`: name -> "numeric" / "categorical"; `train`, `dev`: name -> cell strings or numbers."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler
    numeric = [c for c, k in columns.items() if k == "numeric"]
    categorical = [c for c, k in columns.items() if k == "categorical"]

    def frame(d):
        out = np.empty((len(next(iter(d.values()))), len(columns)), dtype=object)
        for j, c in enumerate(columns):
            if columns[c] == "numeric":
                out[:, j] = [np.nan if v in ("", None) else float(v) for v in d[c]]
            else:
                out[:, j] = [np.nan if v in ("", None) else str(v) for v in d[c]]
        return out
    order = list(columns)
    transformer = ColumnTransformer([
        ("numeric", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), [order.index(c) for c in numeric]),
        ("categorical", make_pipeline(SimpleImputer(strategy="most_frequent"),
                                      OneHotEncoder(handle_unknown="ignore", sparse_output=False)),
         [order.index(c) for c in categorical])])
    xt = transformer.fit_transform(frame(train))
    xd = transformer.transform(frame(dev))
    names = list(numeric)
    if categorical:
        enc = transformer.named_transformers_["categorical"][-1]
        names += [f"{c}={v}" for c, cats in zip(categorical, enc.categories_) for v in cats]
    return xt.astype(np.float32), xd.astype(np.float32), names


def load_tabular(data: str, data_file: str, label: str) -> TabularData:
    """A bundled set ("breast_cancer", "wine", "iris"), the Titanic train.csv ("titanic": DATA_FILE is train.csv
    or its folder), or any CSV ("csv": DATA_FILE, LABEL_COLUMN). Split 80/20 once (stratified, seed 0); the
    preprocessing is fit on the train part only. Raises DataError for a bad file."""
    if data in BUNDLED:
        from sklearn import datasets as sk
        d = getattr(sk, f"load_{data}")()
        tr, dv = _split(len(d.target), d.target)
        columns = {str(n): "numeric" for n in d.feature_names}
        cols = {str(n): d.data[:, j] for j, n in enumerate(d.feature_names)}
        xt, xd, names = preprocess(columns, {c: v[tr] for c, v in cols.items()}, {c: v[dv] for c, v in cols.items()})
        return TabularData(TabularSet(xt, d.target[tr]), TabularSet(xd, d.target[dv]),
                           [str(n) for n in d.target_names], names,
                           f"sklearn.datasets.load_{data} (bundled), 80/20 split", data, columns)
    if data not in ("titanic", "csv"):
        raise DataError(f"DATA={data!r}: choose one of {', '.join(BUNDLED)}, titanic, csv")
    path = data_file
    if data == "titanic" and os.path.isdir(path):
        path = os.path.join(path, "train.csv")
    if not path:
        raise DataError(f"DATA={data} needs DATA_FILE (a .csv file{' or the folder of train.csv' if data == 'titanic' else ''})")
    if data == "titanic":
        header, rows = read_csv_strict(path, "Survived", TITANIC_COLUMNS)
        _check_titanic(path, header, rows)
        columns, label = dict(TITANIC_FEATURES), "Survived"
    else:
        header, rows = read_csv_strict(path, label)
        columns = {}
        for j, c in enumerate(header):
            if c == label:
                continue
            cells = [r[j] for r in rows if r[j] != ""]
            try:
                [float(v) for v in cells]
                columns[c] = "numeric"
            except ValueError:
                columns[c] = "categorical"
        if not columns:
            raise DataError(f"{path}: no feature column beside the label {label!r}")
    raw_labels = [r[header.index(label)].strip() for r in rows]
    try:
        as_int = [int(v) for v in raw_labels]
        names = [str(v) for v in sorted(set(as_int))]
        raw_labels = [str(v) for v in as_int]
    except ValueError:
        names = sorted(set(raw_labels))
    if len(names) < 2:
        raise DataError(f"{path}: the label column {label!r} holds one class only ({names[0]!r})")
    y = np.array([names.index(v) for v in raw_labels])
    tr, dv = _split(len(y), y)
    cols = {c: [r[header.index(c)] for r in rows] for c in columns}
    xt, xd, feature_names = preprocess(columns, {c: [v[i] for i in tr] for c, v in cols.items()},
                                       {c: [v[i] for i in dv] for c, v in cols.items()})
    return TabularData(TabularSet(xt, y[tr]), TabularSet(xd, y[dv]), names, feature_names,
                       f"{path}, 80/20 split", data, columns)
