"""Feature sessions: the THUMOS layout round trip, errors that name the session, and the synthetic streams."""

import json

import numpy as np
import pytest

from papernotes.errors import DataError
from papernotes.video.online.data.features import Session, load_sessions, read_data_info, write_sessions
from papernotes.video.online.data.synthetic_streams import PRESETS, generate_streams, write_synthetic_streams


def test_synthetic_streams_round_trip_and_are_deterministic(tmp_path):
    cfg = PRESETS["tiny"]
    info = write_synthetic_streams(tmp_path / "streams", cfg)
    train, loaded_info = load_sessions(tmp_path / "streams", "train")
    test, _ = load_sessions(tmp_path / "streams", "test")
    again, again_test, _ = generate_streams(cfg)
    assert [s.name for s in train] == info.train_session_set and len(test) == cfg.test_sessions
    for a, b in zip(train, again):
        np.testing.assert_array_equal(a.features, b.features)
        np.testing.assert_array_equal(a.targets, b.targets)
    assert loaded_info.ignore_index == cfg.num_actions + 1 and loaded_info.flow_dir is None
    labels = np.concatenate([s.targets.argmax(1) for s in train])
    assert set(labels) == set(range(cfg.num_actions + 2))  # background, every action, ambiguous
    assert all((s.targets.sum(1) == 1).all() for s in train)


def test_a_pair_shares_its_frames_but_not_its_direction():
    train, _, _ = generate_streams(PRESETS["default"])
    features = np.concatenate([s.features for s in train])
    labels = np.concatenate([s.targets.argmax(1) for s in train])
    # the pair's plane, found by PCA of class 1's frames, holds class 2's circle as well, not class 3's
    ones = features[labels == 1]
    _, _, vt = np.linalg.svd(ones - ones.mean(0), full_matrices=False)
    u, v = vt[0], vt[1]
    energy = {
        c: np.mean((features[labels == c] @ u) ** 2 + (features[labels == c] @ v) ** 2) for c in (1, 2, 3)
    }
    assert abs(energy[2] / energy[1] - 1) < 0.15 and energy[3] < 0.3 * energy[1]

    def turning(c):
        """Mean sign of the 2-D cross product of consecutive frames: +1 one way round, -1 the other."""
        i = np.flatnonzero((labels[:-1] == c) & (labels[1:] == c))
        a, b = features[i], features[i + 1]
        return np.mean(np.sign((a @ u) * (b @ v) - (a @ v) * (b @ u)))

    assert turning(1) * turning(2) < 0 and min(abs(turning(1)), abs(turning(2))) > 0.5


def _write_one(root, features, targets, name="s1"):
    info_dir = root
    (info_dir / "rgb").mkdir(parents=True, exist_ok=True)
    (info_dir / "target_perframe").mkdir(exist_ok=True)
    np.save(info_dir / "rgb" / f"{name}.npy", features)
    if targets is not None:
        np.save(info_dir / "target_perframe" / f"{name}.npy", targets)
    info = {
        "class_names": ["bg", "a", "b"],
        "train_session_set": [name],
        "test_session_set": [],
        "rgb_dir": "rgb",
        "flow_dir": None,
    }
    (info_dir / "data_info.json").write_text(json.dumps(info))


def test_bad_sessions_name_the_session_and_frame(tmp_path):
    targets = np.eye(3, dtype=np.float32)[[0, 1, 1, 2]]
    _write_one(tmp_path / "a", np.zeros((4, 5), np.float32), None)
    with pytest.raises(DataError, match="session s1: target file .* does not exist"):
        load_sessions(tmp_path / "a")
    _write_one(tmp_path / "b", np.zeros((5, 5), np.float32), targets)
    with pytest.raises(DataError, match=r"session s1: lengths differ \(features \[5\], targets 4\)"):
        load_sessions(tmp_path / "b")
    bad = np.zeros((4, 5), np.float32)
    bad[2, 1] = np.inf
    _write_one(tmp_path / "c", bad, targets)
    with pytest.raises(DataError, match="session s1: NaN or inf in the features at frame 2"):
        load_sessions(tmp_path / "c")
    _write_one(tmp_path / "d", np.zeros((4, 5), np.float32), targets)
    with pytest.raises(DataError, match="the test session list is empty"):
        load_sessions(tmp_path / "d", "test")
    with pytest.raises(DataError, match="data_info.json does not exist"):
        read_data_info(tmp_path / "nowhere")
    sessions, info = load_sessions(tmp_path / "d")
    write_sessions(tmp_path / "e", [Session("s1", sessions[0].features, sessions[0].targets)], info)
    assert load_sessions(tmp_path / "e")[0][0].features.shape == (4, 5)


def test_oadtr_pickles_load_and_a_malicious_pickle_is_refused(tmp_path):
    import os
    import pickle

    from papernotes.video.online.data.features import load_oadtr_pickles

    rng = np.random.default_rng(0)
    feats = {"v1": {"rgb": rng.normal(size=(6, 4)), "flow": rng.normal(size=(6, 2))}}
    annos = {"v1": {"anno": np.eye(3)[[0, 1, 1, 2, 0, 0]], "feature_length": 6}}
    for protocol in (2, 4):
        (tmp_path / "f.pkl").write_bytes(pickle.dumps(feats, protocol=protocol))
        (tmp_path / "a.pkl").write_bytes(pickle.dumps(annos, protocol=protocol))
        (session,) = load_oadtr_pickles(tmp_path / "f.pkl", tmp_path / "a.pkl")
        np.testing.assert_allclose(
            session.features, np.concatenate([feats["v1"]["rgb"], feats["v1"]["flow"]], 1)
        )
        assert session.targets.shape == (6, 3)

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (tmp_path / "evil.pkl").write_bytes(pickle.dumps({"v1": {"rgb": Evil()}}))
    with pytest.raises(DataError, match=r"refused global (posix|os|nt)\.system"):
        load_oadtr_pickles(tmp_path / "evil.pkl", tmp_path / "a.pkl")
    assert not marker.exists()
