"""Feature sessions for online action detection: the THUMOS'14 / TVSeries layout of the LSTR/TeSTra code.

Layout (``root/``)::

    data_info.json                 {"class_names": [...], "ignore_index": 21 | null, "fps": 4.0,
                                    "train_session_set": [...], "test_session_set": [...],
                                    "rgb_dir": "rgb_kinetics_resnet50",
                                    "flow_dir": "flow_kinetics_bninception" | null}
    <rgb_dir>/<session>.npy        (T, 2048) float
    <flow_dir>/<session>.npy       (T, 1024) float (optional: flow_dir null means RGB only)
    target_perframe/<session>.npy  (T, C+1) one-hot, column 0 = background

Every problem names the session: features without targets, lengths that differ, NaN or inf (with the
first bad frame), an empty session list.

OadTR's own layout is two pickles: features ``{session: {"rgb": (T, 2048), "flow": (T, 1024)}}`` and
annotations ``{session: {"anno": (T, C+1), "feature_length": T}}``. A pickle can run any code when it is
loaded, so :func:`load_oadtr_pickles` reads them with :class:`SafeUnpickler`, which rebuilds only NumPy
arrays, dtypes and plain containers and refuses every other global (naming it) before anything runs.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from papernotes.core.files import atomic_write_dir
from papernotes.errors import DataError

TARGET_DIR = "target_perframe"
INFO_FILE = "data_info.json"


@dataclass
class DataInfo:
    class_names: list[str]  # C + 1 names, background first
    train_session_set: list[str]
    test_session_set: list[str]
    ignore_index: int | None = None  # the ambiguous class's column, dropped by the metrics
    fps: float = 4.0  # features per second
    rgb_dir: str = "rgb_kinetics_resnet50"
    flow_dir: str | None = "flow_kinetics_bninception"
    extra: dict = field(default_factory=dict)  # anything else the file holds, kept on rewrite


@dataclass
class Session:
    name: str
    features: np.ndarray  # (T, D) float32
    targets: np.ndarray  # (T, C+1) float32 one-hot


def read_data_info(root: str | Path) -> DataInfo:
    path = Path(root) / INFO_FILE
    if not path.is_file():
        raise DataError(
            f"{path} does not exist: a feature root needs {INFO_FILE} (class names, session lists)"
        )
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from exc
    missing = [k for k in ("class_names", "train_session_set", "test_session_set") if k not in raw]
    if missing:
        raise DataError(f"{path} lacks {missing}")
    known = {k: raw[k] for k in DataInfo.__dataclass_fields__ if k in raw and k != "extra"}
    extra = {k: v for k, v in raw.items() if k not in DataInfo.__dataclass_fields__}
    return DataInfo(**known, extra=extra)


def _load_array(path: Path, session: str, what: str) -> np.ndarray:
    if not path.is_file():
        raise DataError(f"session {session}: {what} file {path} does not exist")
    array = np.load(path, allow_pickle=False)  # never unpickle: .npy files hold plain arrays
    if array.ndim != 2:
        raise DataError(f"session {session}: {path} has shape {array.shape}, expected (T, dim)")
    return array.astype(np.float32, copy=False)


def load_session(root: Path, info: DataInfo, name: str) -> Session:
    parts = [_load_array(root / info.rgb_dir / f"{name}.npy", name, "RGB feature")]
    if info.flow_dir:
        parts.append(_load_array(root / info.flow_dir / f"{name}.npy", name, "flow feature"))
    targets = _load_array(root / TARGET_DIR / f"{name}.npy", name, "target")
    lengths = [len(p) for p in parts] + [len(targets)]
    if len(set(lengths)) != 1:
        raise DataError(f"session {name}: lengths differ (features {lengths[:-1]}, targets {lengths[-1]})")
    features = np.concatenate(parts, axis=1)  # (T, D_rgb + D_flow): RGB first
    bad = ~np.isfinite(features).all(axis=1)
    if bad.any():
        raise DataError(f"session {name}: NaN or inf in the features at frame {int(np.argmax(bad))}")
    if targets.shape[1] != len(info.class_names):
        raise DataError(
            f"session {name}: targets have {targets.shape[1]} columns, data_info.json names "
            f"{len(info.class_names)} classes"
        )
    if (targets.sum(axis=1) <= 0).any():
        raise DataError(
            f"session {name}: frame {int(np.argmax(targets.sum(axis=1) <= 0))} has no target class"
        )
    return Session(name, features, targets)


def load_sessions(root: str | Path, split: str = "train") -> tuple[list[Session], DataInfo]:
    """The sessions of ``split`` ("train" or "test") and the dataset's DataInfo."""
    root = Path(root)
    info = read_data_info(root)
    names = {"train": info.train_session_set, "test": info.test_session_set}.get(split)
    if names is None:
        raise DataError(f"split must be 'train' or 'test', got {split!r}")
    if not names:
        raise DataError(f"{root / INFO_FILE}: the {split} session list is empty")
    return [load_session(root, info, n) for n in names], info


def write_sessions(root: str | Path, sessions: list[Session], info: DataInfo) -> Path:
    """Write sessions in the layout above, atomically; all features go under ``rgb_dir`` (flow_dir null)."""
    with atomic_write_dir(root) as tmp:
        (tmp / info.rgb_dir).mkdir()
        (tmp / TARGET_DIR).mkdir()
        for s in sessions:
            np.save(tmp / info.rgb_dir / f"{s.name}.npy", s.features.astype(np.float32))
            np.save(tmp / TARGET_DIR / f"{s.name}.npy", s.targets.astype(np.float32))
        content = {k: v for k, v in asdict(info).items() if k != "extra"} | {"flow_dir": None} | info.extra
        (tmp / INFO_FILE).write_text(json.dumps(content, indent=2) + "\n")
    return Path(root)


class SafeUnpickler(pickle.Unpickler):
    """Unpickles NumPy arrays and plain Python containers only; any other global is refused."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("builtins", "dict"),
        ("builtins", "list"),
        ("builtins", "tuple"),
        ("collections", "OrderedDict"),
        ("_codecs", "encode"),  # how pickle protocol 2 stores the bytes of an array (a pure function)
        ("codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refused global {module}.{name}: only NumPy arrays are allowed")
        return super().find_class(module, name)


def _read_pickle(path: Path) -> dict:
    if not path.is_file():
        raise DataError(f"{path} does not exist")
    try:
        with path.open("rb") as handle:
            content = SafeUnpickler(handle).load()
    except pickle.UnpicklingError as exc:
        raise DataError(f"{path}: {exc}") from exc
    if not isinstance(content, dict):
        raise DataError(f"{path}: expected a dict of sessions, got {type(content).__name__}")
    return content


def load_oadtr_pickles(
    feature_pickle: str | Path, annotation_pickle: str | Path, sessions: list[str] | None = None
) -> list[Session]:
    """Sessions from OadTR's pickles (all sessions of the annotation file unless ``sessions`` names some)."""
    features, annotations = _read_pickle(Path(feature_pickle)), _read_pickle(Path(annotation_pickle))
    names = sessions if sessions is not None else sorted(annotations)
    if not names:
        raise DataError(f"{annotation_pickle} holds no sessions")
    result = []
    for name in names:
        if name not in features or name not in annotations:
            where = feature_pickle if name not in features else annotation_pickle
            raise DataError(f"session {name}: missing from {where}")
        parts = [
            np.asarray(features[name][k], dtype=np.float32) for k in ("rgb", "flow") if k in features[name]
        ]
        targets = np.asarray(annotations[name]["anno"], dtype=np.float32)
        lengths = [len(p) for p in parts] + [len(targets)]
        if not parts or len(set(lengths)) != 1:
            raise DataError(
                f"session {name}: lengths differ (features {lengths[:-1]}, targets {lengths[-1]})"
            )
        feats = np.concatenate(parts, axis=1)
        bad = ~np.isfinite(feats).all(axis=1)
        if bad.any():
            raise DataError(f"session {name}: NaN or inf in the features at frame {int(np.argmax(bad))}")
        result.append(Session(name, feats, targets))
    return result
