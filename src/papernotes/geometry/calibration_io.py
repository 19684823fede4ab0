"""Calibration files: OpenCV FileStorage YAML (readable by any OpenCV program) or JSON, one tree for both.

* one camera: ``camera_matrix``, ``dist_coeffs``, ``image_size`` (width, height), ``rms``;
* a stereo pair: ``camera_matrix_1/2``, ``dist_coeffs_1/2``, ``image_size``, ``R``, ``T``, ``E``, ``F``,
  ``rms`` and the rectification ``R1``, ``R2``, ``P1``, ``P2``, ``Q`` (the names of OpenCV's stereo samples);
* a rig: ``num_cameras``, ``reference``, ``rms`` and one map per camera, ``camera_<c>``, holding the
  one-camera keys plus ``R`` and ``T`` (reference frame -> camera c) and that camera's ``rms``.

The format follows the file suffix (.yaml/.yml or .json). Files are written to a temporary name and
renamed, so a reader never sees half a file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from papernotes.errors import ConfigError, DataError
from papernotes.geometry.calibration import CameraCalibration
from papernotes.geometry.rig import RigCalibration
from papernotes.geometry.stereo import StereoCalibration

Calibration = CameraCalibration | StereoCalibration | RigCalibration


def _camera_tree(camera: CameraCalibration) -> dict[str, Any]:
    return {
        "camera_matrix": np.asarray(camera.K, np.float64),
        "dist_coeffs": np.asarray(camera.dist, np.float64).reshape(1, -1),
        "image_size": np.array(camera.image_size, np.int32).reshape(1, 2),
        "rms": float(camera.rms),
    }


def to_tree(calibration: Calibration) -> dict[str, Any]:
    """The file's content as nested dicts of arrays and numbers."""
    if isinstance(calibration, CameraCalibration):
        return _camera_tree(calibration)
    if isinstance(calibration, StereoCalibration):
        tree = {
            f"{k}_{i}": v
            for i, cam in ((1, calibration.left), (2, calibration.right))
            for k, v in _camera_tree(cam).items()
            if k in ("camera_matrix", "dist_coeffs")
        }
        tree["image_size"] = _camera_tree(calibration.left)["image_size"]
        tree.update(R=calibration.R, T=calibration.T.reshape(3, 1), E=calibration.E, F=calibration.F)
        tree["rms"] = float(calibration.rms)
        tree.update(calibration.rectification)
        return tree
    if isinstance(calibration, RigCalibration):
        tree = {
            "num_cameras": len(calibration.cameras),
            "reference": calibration.reference,
            "rms": float(calibration.rms),
        }
        for c, camera in enumerate(calibration.cameras):
            node = _camera_tree(camera)
            node.update(R=calibration.R[c], T=np.asarray(calibration.T[c]).reshape(3, 1))
            node["rms"] = float(calibration.camera_errors[c])
            tree[f"camera_{c}"] = node
        return tree
    raise ConfigError(
        f"cannot save a {type(calibration).__name__}; expected a camera, stereo or rig calibration"
    )


def _camera_from(tree: dict[str, Any], suffix: str = "", rms: float | None = None) -> CameraCalibration:
    size = tree["image_size"]
    return CameraCalibration(
        np.asarray(tree[f"camera_matrix{suffix}"], np.float64).reshape(3, 3),
        np.asarray(tree[f"dist_coeffs{suffix}"], np.float64).reshape(-1),
        tuple(int(v) for v in np.asarray(size).reshape(-1)),
        float(tree.get("rms", 0.0) if rms is None else rms),
    )


def from_tree(tree: dict[str, Any], source: str = "calibration") -> Calibration:
    """The inverse of :func:`to_tree`; the kind is told by the keys."""
    try:
        if "num_cameras" in tree:
            n = int(tree["num_cameras"])
            nodes = [tree[f"camera_{c}"] for c in range(n)]
            return RigCalibration(
                cameras=[_camera_from(node) for node in nodes],
                R=[np.asarray(node["R"], np.float64).reshape(3, 3) for node in nodes],
                T=[np.asarray(node["T"], np.float64).reshape(3) for node in nodes],
                rms=float(tree.get("rms", 0.0)),
                camera_errors=[float(node.get("rms", 0.0)) for node in nodes],
                reference=int(tree.get("reference", 0)),
            )
        if "camera_matrix_1" in tree:
            rect = {k: np.asarray(tree[k], np.float64) for k in ("R1", "R2", "P1", "P2", "Q") if k in tree}
            return StereoCalibration(
                _camera_from(tree, "_1"),
                _camera_from(tree, "_2"),
                np.asarray(tree["R"], np.float64).reshape(3, 3),
                np.asarray(tree["T"], np.float64).reshape(3),
                np.asarray(tree["E"], np.float64).reshape(3, 3),
                np.asarray(tree["F"], np.float64).reshape(3, 3),
                float(tree.get("rms", 0.0)),
                rectification=rect,
            )
        if "camera_matrix" in tree:
            return _camera_from(tree)
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{source}: incomplete calibration ({exc})") from exc
    raise DataError(
        f"{source}: not a calibration file; expected camera_matrix, camera_matrix_1 (stereo) or "
        f"num_cameras (rig) at the top, found {sorted(tree)[:8]}"
    )


def _write_yaml_node(storage: cv2.FileStorage, name: str, value: Any) -> None:
    if isinstance(value, dict):
        storage.startWriteStruct(name, cv2.FileNode_MAP)
        for key, item in value.items():
            _write_yaml_node(storage, key, item)
        storage.endWriteStruct()
    elif isinstance(value, np.ndarray):
        storage.write(name, value)
    elif isinstance(value, (bool, int, np.integer)):
        storage.write(name, int(value))
    else:
        storage.write(name, float(value))


def _read_yaml_node(node: cv2.FileNode) -> Any:
    if node.isMap():
        keys = node.keys()  # a FileNode is not iterable
        if {"rows", "cols", "data"} <= set(keys):  # an !!opencv-matrix
            return node.mat()
        return {key: _read_yaml_node(node.getNode(key)) for key in keys}
    if node.isInt():
        return int(node.real())
    if node.isReal():
        return node.real()
    if node.isString():
        return node.string()
    return node.mat()


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def _is_yaml(path: Path) -> bool:
    suffix = path.suffix.lower()
    if suffix not in (".yaml", ".yml", ".json"):
        raise ConfigError(f"{path}: calibration files end in .yaml, .yml or .json")
    return suffix != ".json"


def save_calibration(calibration: Calibration, path: str | Path) -> Path:
    """Write YAML or JSON (by suffix), atomically."""
    path = Path(path)
    yaml = _is_yaml(path)
    tree = to_tree(calibration)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    if yaml:
        storage = cv2.FileStorage(str(tmp), cv2.FILE_STORAGE_WRITE)
        for key, value in tree.items():
            _write_yaml_node(storage, key, value)
        storage.release()
    else:
        tmp.write_text(json.dumps(_jsonable(tree), indent=2) + "\n")
    tmp.replace(path)
    return path


def load_calibration(path: str | Path) -> Calibration:
    """A camera, stereo or rig calibration from a file written by :func:`save_calibration` (or OpenCV)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"calibration file {path} does not exist")
    if _is_yaml(path):
        try:
            storage = cv2.FileStorage(str(path), cv2.FILE_STORAGE_READ)
        except cv2.error as exc:
            raise DataError(f"{path}: not an OpenCV YAML file ({exc.err})") from exc
        try:
            tree = _read_yaml_node(storage.root())
        finally:
            storage.release()
    else:
        try:
            tree = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(tree, dict):
        raise DataError(f"{path}: expected a map of calibration values at the top")
    return from_tree(tree, str(path))
