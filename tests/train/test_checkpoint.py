"""Checkpoint files: exact round trips, atomic writes, and damage that is always detected."""

from __future__ import annotations

import io
import json
import os
import stat

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from minires.atomic import atomic_write_bytes
from minires.train.checkpoint import FORMAT_VERSION, CheckpointError, load_checkpoint, save_checkpoint


def _example_state() -> dict:
    rng = np.random.default_rng(0)
    return {
        "model": {"conv1.weight": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
                  "bn1.num_batches_tracked": np.array(7, dtype=np.int64)},
        # integer keys, as in an optimiser's per-parameter state
        "optimizer": {"state": {0: {"momentum_buffer": rng.standard_normal(5)}}, "lr": 0.1},
        "schedule": {"milestones": (10, 20), "last_epoch": 3},
        "rng": np.random.default_rng(5).bit_generator.state,  # 128-bit Python ints
        "scalar": np.float32(0.1),
        "metrics": [{"epoch": 1, "loss": float("inf"), "note": None}],
        "__dunder_key": True,
    }


def _assert_same(a, b, where="state"):
    """Deep equality that also compares types and dtypes (a tuple is not a list)."""
    assert type(a) is type(b) or (isinstance(a, np.ndarray) and isinstance(b, np.ndarray)), (where, a, b)
    if isinstance(a, dict):
        assert list(a.keys()) == list(b.keys()), where
        for k in a:
            _assert_same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, (np.ndarray, np.generic)):
        assert a.dtype == b.dtype and a.shape == b.shape, where
        assert a.tobytes() == b.tobytes(), where
    else:
        assert a == b or (a != a and b != b), (where, a, b)


def test_round_trip_preserves_types_dtypes_and_bits(tmp_path):
    state = _example_state()
    path = save_checkpoint(tmp_path / "ckpt.npz", state)
    _assert_same(state, load_checkpoint(path))
    # A restored generator continues the exact same stream.
    restored = load_checkpoint(path)["rng"]
    g1, g2 = np.random.default_rng(), np.random.default_rng()
    g1.bit_generator.state, g2.bit_generator.state = state["rng"], restored
    assert np.array_equal(g1.random(4), g2.random(4))


@settings(max_examples=20, deadline=None)
@given(
    arrays=st.lists(
        hnp.arrays(
            dtype=st.sampled_from([np.float32, np.float64, np.int64, np.uint8, np.bool_]),
            shape=hnp.array_shapes(min_dims=0, max_dims=4, max_side=5),
        ),
        min_size=0,
        max_size=4,
    )
)
def test_round_trip_any_arrays(tmp_path_factory, arrays):
    path = tmp_path_factory.mktemp("ckpt") / "c.npz"
    state = {"arrays": arrays, "pairs": tuple((i, a) for i, a in enumerate(arrays))}
    save_checkpoint(path, state)
    _assert_same(state, load_checkpoint(path))


def test_file_is_plain_npz_without_pickle(tmp_path):
    path = save_checkpoint(tmp_path / "c.npz", _example_state())
    with np.load(path, allow_pickle=False) as npz:
        meta = json.loads(npz["__meta__"].tobytes())
        assert meta["format"] == "minires-checkpoint" and meta["version"] == FORMAT_VERSION
        assert len(meta["sha256"]) == 64
        for name in npz.files:
            assert npz[name].dtype != np.dtype(object)


def test_unsupported_objects_are_refused(tmp_path):
    with pytest.raises(TypeError, match="set"):
        save_checkpoint(tmp_path / "c.npz", {"bad": {1, 2}})
    with pytest.raises(TypeError, match="object array"):
        save_checkpoint(tmp_path / "c.npz", {"bad": np.array([object()], dtype=object)})
    assert not (tmp_path / "c.npz").exists()


def test_truncation_is_detected_and_names_the_file(tmp_path):
    path = save_checkpoint(tmp_path / "c.npz", _example_state())
    data = path.read_bytes()
    for cut in (0, 10, len(data) // 3, len(data) // 2, len(data) - 30, len(data) - 1):
        path.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match="c.npz"):
            load_checkpoint(path)


def test_every_single_byte_flip_is_detected_or_harmless(tmp_path):
    """Flip each byte of a small checkpoint in turn: loading must either raise
    CheckpointError or return exactly the original state (a flip in a zip field
    nobody reads, such as a timestamp, is harmless). Never a wrong result."""
    state = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "meta": {"epoch": 3, "lr": 0.05}}
    path = save_checkpoint(tmp_path / "c.npz", state)
    original = path.read_bytes()
    detected = 0
    for i in range(len(original)):
        damaged = bytearray(original)
        damaged[i] ^= 0xFF
        path.write_bytes(bytes(damaged))
        try:
            loaded = load_checkpoint(path)
        except CheckpointError as exc:
            assert "c.npz" in str(exc)
            detected += 1
            continue
        _assert_same(state, loaded, f"flip at byte {i}")
    # The payload (array bytes, JSON) is most of the file; flips there are all caught.
    assert detected > len(original) // 2


def test_consistent_tampering_is_caught_by_sha256(tmp_path):
    """Rewrite one array with a valid zip (so CRCs pass) but keep the old metadata."""
    path = save_checkpoint(tmp_path / "c.npz", {"w": np.zeros(4, dtype=np.float32)})
    with np.load(path, allow_pickle=False) as npz:
        entries = {k: npz[k] for k in npz.files}
    entries["a/0"] = entries["a/0"] + 1
    buffer = io.BytesIO()
    np.savez(buffer, **entries)
    path.write_bytes(buffer.getvalue())
    with pytest.raises(CheckpointError, match="SHA-256"):
        load_checkpoint(path)


def _rewrite_meta(path, change) -> None:
    """Rewrite the checkpoint's __meta__ JSON with ``change(meta)`` as a valid zip (CRCs pass)."""
    with np.load(path, allow_pickle=False) as npz:
        entries = {k: npz[k] for k in npz.files}
    meta = json.loads(entries["__meta__"].tobytes())
    meta = change(meta)
    entries["__meta__"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    buffer = io.BytesIO()
    np.savez(buffer, **entries)
    path.write_bytes(buffer.getvalue())


def test_edited_state_tree_is_caught_by_sha256(tmp_path):
    # The digest covers the JSON state too (epoch, config, metrics), not only the arrays.
    path = save_checkpoint(tmp_path / "c.npz", {"epoch": 3, "w": np.zeros(2, dtype=np.float32)})

    def edit(meta):
        meta["state"]["epoch"] = 4
        return meta

    _rewrite_meta(path, edit)
    with pytest.raises(CheckpointError, match="SHA-256"):
        load_checkpoint(path)


def test_version_1_files_still_load(tmp_path):
    # Version 1 hashed the arrays alone; such files must keep loading.
    from minires.train.checkpoint import _digest

    path = save_checkpoint(tmp_path / "c.npz", {"epoch": 3, "w": np.arange(3, dtype=np.float32)})

    def downgrade(meta):
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files if k != "__meta__"}
        meta["version"], meta["sha256"] = 1, _digest(arrays)
        return meta

    _rewrite_meta(path, downgrade)
    loaded = load_checkpoint(path)
    assert loaded["epoch"] == 3 and np.array_equal(loaded["w"], np.arange(3, dtype=np.float32))


@pytest.mark.parametrize("meta", [[1, 2], "text", 7, None])
def test_metadata_that_is_not_an_object_is_refused(tmp_path, meta):
    path = tmp_path / "odd.npz"
    np.savez(path, __meta__=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8))
    with pytest.raises(CheckpointError, match="not a minires checkpoint"):
        load_checkpoint(path)


def test_foreign_or_future_files_are_refused(tmp_path):
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, weights=np.ones(3))
    with pytest.raises(CheckpointError, match="not a minires checkpoint"):
        load_checkpoint(foreign)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.npz")
    with pytest.raises(CheckpointError, match=f"checkpoint {tmp_path} is a directory, not a checkpoint file"):
        load_checkpoint(tmp_path)

    future = tmp_path / "future.npz"
    meta = {"format": "minires-checkpoint", "version": FORMAT_VERSION + 1, "sha256": "", "arrays": {}, "state": {}}
    np.savez(future, __meta__=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8))
    with pytest.raises(CheckpointError, match="format version"):
        load_checkpoint(future)


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "c.npz", {"epoch": 1})

    def broken_replace(src, dst):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="simulated"):
        save_checkpoint(path, {"epoch": 2})
    monkeypatch.undo()
    assert load_checkpoint(path) == {"epoch": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.npz"]


def test_atomic_write_bytes_replaces_content(tmp_path):
    target = tmp_path / "metrics.csv"
    atomic_write_bytes(target, b"a,b\n")
    atomic_write_bytes(target, b"a,b\n1,2\n")
    assert target.read_bytes() == b"a,b\n1,2\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.csv"]


def test_atomic_write_through_a_symlink_replaces_the_target_and_keeps_the_link(tmp_path):
    (tmp_path / "real").mkdir()
    real = tmp_path / "real" / "checkpoint.npz"
    real.write_bytes(b"old")
    link = tmp_path / "latest.npz"
    link.symlink_to(real)
    atomic_write_bytes(link, b"new")
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert real.read_bytes() == b"new"
    # The temporary file lived next to the target (same file system) and is gone.
    assert sorted(p.name for p in (tmp_path / "real").iterdir()) == ["checkpoint.npz"]


def test_atomic_write_through_a_dangling_symlink_creates_the_target(tmp_path):
    link = tmp_path / "latest.csv"
    link.symlink_to(tmp_path / "created.csv")
    atomic_write_bytes(link, b"a,b\n")
    assert link.is_symlink() and (tmp_path / "created.csv").read_bytes() == b"a,b\n"


@pytest.mark.parametrize("mode", [0o640, 0o600, 0o444], ids=oct)
def test_atomic_write_keeps_the_permissions_of_an_existing_file(tmp_path, mode):
    target = tmp_path / "private.json"
    target.write_bytes(b"{}")
    os.chmod(target, mode)
    atomic_write_bytes(target, b'{"a": 1}')
    assert stat.S_IMODE(target.stat().st_mode) == mode
    assert target.read_bytes() == b'{"a": 1}'


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002], ids=oct)
def test_atomic_write_gives_a_new_file_the_mode_open_would(tmp_path, umask):
    old = os.umask(umask)
    try:
        atomic_write_bytes(tmp_path / "atomic.txt", b"x")
        with open(tmp_path / "plain.txt", "wb") as f:
            f.write(b"x")
    finally:
        os.umask(old)
    expected = stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode)
    assert expected == 0o666 & ~umask
    assert stat.S_IMODE((tmp_path / "atomic.txt").stat().st_mode) == expected


def test_atomic_write_into_a_missing_directory_names_the_directory(tmp_path):
    missing = tmp_path / "no" / "such"
    with pytest.raises(FileNotFoundError) as info:
        atomic_write_bytes(missing / "c.npz", b"x")
    assert info.value.filename == str(missing)
    assert str(missing) in str(info.value) and ".tmp" not in str(info.value)
    assert not (tmp_path / "no").exists()
