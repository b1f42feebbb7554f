"""DataLoader: coverage, order, reproducibility, resumption, prefetching; splits and subsets."""

from __future__ import annotations

import threading
import types

import numpy as np
import pytest

import minires
from minires import backend
from minires.data import DataLoader, split_validation, standard_augment, subset
from minires.data.transforms import normalize


def tagged(n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` tiny images whose pixels encode their own index, and labels = index.

    Pixel [0, 0, 0] holds ``i % 256`` and pixel [1, 0, 0] holds ``i // 256``, so
    a batch can be traced back to the examples it holds without trusting labels.
    """
    idx = np.arange(n)
    images = np.zeros((n, 3, 3, 3), dtype=np.uint8)
    images[:, 0, 0, 0] = idx % 256
    images[:, 1, 0, 0] = idx // 256
    return images, idx.astype(np.int64)


def ids_of(x: minires.Tensor) -> np.ndarray:
    """Example indices encoded in a batch made with ``normalize=False`` (pixels / 255)."""
    pixels = np.rint(x.numpy() * 255).astype(np.int64)
    return pixels[:, 0, 0, 0] + 256 * pixels[:, 1, 0, 0]


def epoch_ids(loader: DataLoader) -> list[np.ndarray]:
    out = []
    for x, y in loader:
        ids = ids_of(x)
        np.testing.assert_array_equal(ids, y.numpy())  # images and labels stay paired
        out.append(ids)
    return out


def arrays(loader: DataLoader) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(x.numpy().copy(), y.numpy().copy()) for x, y in loader]


def assert_same_batches(a, b) -> None:
    assert len(a) == len(b)
    for (xa, ya), (xb, yb) in zip(a, b):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)


# ---------------------------------------------------------------------------
# What an epoch contains
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("n, batch_size", [(10, 4), (12, 4), (7, 10), (300, 32), (1, 1)])
@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("shuffle", [False, True])
def test_every_example_once_per_epoch(n, batch_size, drop_last, shuffle):
    images, labels = tagged(n)
    loader = DataLoader(images, labels, batch_size, shuffle=shuffle, drop_last=drop_last, normalize=False)
    full, rest = divmod(n, batch_size)
    expected_len = full if drop_last else full + (rest > 0)
    assert len(loader) == expected_len
    for _ in range(2):  # two epochs
        batches = epoch_ids(loader)
        assert len(batches) == expected_len
        sizes = [len(b) for b in batches]
        assert all(s == batch_size for s in sizes[:-1])
        if batches:
            assert sizes[-1] == (batch_size if drop_last or rest == 0 else rest)
        seen = np.concatenate(batches) if batches else np.array([], int)
        assert len(np.unique(seen)) == len(seen)  # nobody twice
        if drop_last:
            assert len(seen) == full * batch_size
        else:
            np.testing.assert_array_equal(np.sort(seen), np.arange(n))  # everybody once
        if not shuffle:
            np.testing.assert_array_equal(seen, np.arange(len(seen)))


def test_batches_are_float32_and_int64_tensors_without_grad():
    images, labels = tagged(10)
    x, y = next(iter(DataLoader(images, labels, 4)))
    assert isinstance(x, minires.Tensor) and isinstance(y, minires.Tensor)
    assert x.shape == (4, 3, 3, 3) and x.dtype == np.float32 and str(x.device) == "cpu"
    assert y.shape == (4,) and y.dtype == np.int64
    assert not x.requires_grad and not y.requires_grad


def test_normalisation_is_applied(rng):
    images = rng.integers(0, 256, (20, 3, 4, 4), dtype=np.uint8)
    labels = rng.integers(0, 10, 20)
    (x, _), = list(DataLoader(images, labels, 20, shuffle=False))
    np.testing.assert_array_equal(x.numpy(), normalize(images))
    (x, _), = list(DataLoader(images, labels, 20, shuffle=False, normalize=((0.5,) * 3, (0.25,) * 3)))
    np.testing.assert_allclose(x.numpy(), (images / 255.0 - 0.5) / 0.25, rtol=1e-5, atol=1e-5)


def test_augment_gets_the_uint8_batch_and_a_generator():
    images, labels = tagged(8)
    calls = []

    def spy(batch, rng):
        calls.append((batch.dtype, batch.shape, type(rng)))
        return batch

    list(DataLoader(images, labels, 4, augment=spy, normalize=False))
    assert calls == [(np.uint8, (4, 3, 3, 3), np.random.Generator)] * 2


# ---------------------------------------------------------------------------
# Order and reproducibility
# ---------------------------------------------------------------------------


def test_same_seed_same_order_other_seed_other_order():
    images, labels = tagged(200)
    a = DataLoader(images, labels, 16, seed=3, normalize=False)
    b = DataLoader(images, labels, 16, seed=3, normalize=False)
    c = DataLoader(images, labels, 16, seed=4, normalize=False)
    ea, eb, ec = (np.concatenate(epoch_ids(d)) for d in (a, b, c))
    np.testing.assert_array_equal(ea, eb)
    assert not np.array_equal(ea, ec)


def test_epochs_differ_and_the_epoch_advances_by_itself():
    images, labels = tagged(200)
    loader = DataLoader(images, labels, 16, seed=0, normalize=False)
    assert loader.epoch == 0
    e0 = np.concatenate(epoch_ids(loader))
    assert loader.epoch == 1
    e1 = np.concatenate(epoch_ids(loader))
    assert loader.epoch == 2 and not np.array_equal(e0, e1)
    # set_epoch reproduces any epoch on demand, in another loader
    other = DataLoader(images, labels, 16, seed=0, normalize=False)
    other.set_epoch(1)
    np.testing.assert_array_equal(np.concatenate(epoch_ids(other)), e1)
    np.testing.assert_array_equal(loader.order(0), e0)


def test_breaking_out_does_not_advance_the_epoch():
    images, labels = tagged(64)
    loader = DataLoader(images, labels, 8, normalize=False)
    first = np.concatenate(epoch_ids(DataLoader(images, labels, 8, normalize=False)))
    for i, (x, _) in enumerate(loader):
        if i == 2:
            break
    assert loader.epoch == 0 and loader.state_dict()["batch"] == 3
    np.testing.assert_array_equal(np.concatenate(epoch_ids(loader)), first)  # restarts epoch 0
    assert loader.epoch == 1


def test_augmentation_differs_between_epochs_but_replays_exactly(rng):
    images = rng.integers(0, 256, (32, 3, 8, 8), dtype=np.uint8)
    labels = rng.integers(0, 10, 32)
    loader = DataLoader(images, labels, 8, shuffle=False, augment=standard_augment, seed=1)
    e0, e1 = arrays(loader), arrays(loader)
    assert not np.array_equal(e0[0][0], e1[0][0])  # same examples, new crops/flips
    replay = DataLoader(images, labels, 8, shuffle=False, augment=standard_augment, seed=1)
    assert_same_batches(arrays(replay), e0)


@pytest.mark.parametrize("prefetch", [0, 2])
def test_resume_mid_epoch_reproduces_the_uninterrupted_run(rng, prefetch):
    images = rng.integers(0, 256, (50, 3, 8, 8), dtype=np.uint8)
    labels = rng.integers(0, 10, 50)
    make = lambda: DataLoader(images, labels, 8, seed=7, augment=standard_augment, prefetch=prefetch)  # noqa: E731
    straight = make()
    reference = arrays(straight) + arrays(straight) + arrays(straight)  # epochs 0, 1, 2

    first = make()
    seen = arrays(first)  # epoch 0
    it = iter(first)
    for _ in range(3):  # 3 batches of epoch 1, then "crash" and checkpoint
        x, y = next(it)
        seen.append((x.numpy().copy(), y.numpy().copy()))
    state = first.state_dict()
    it.close()
    assert state["epoch"] == 1 and state["batch"] == 3

    resumed = make()
    resumed.load_state_dict(state)
    seen += arrays(resumed)  # rest of epoch 1
    seen += arrays(resumed)  # epoch 2
    assert_same_batches(seen, reference)


def test_load_state_dict_refuses_a_different_setup():
    images, labels = tagged(40)
    state = DataLoader(images, labels, 8).state_dict()
    with pytest.raises(ValueError, match="batch_size=8 but this loader has 10"):
        DataLoader(images, labels, 10).load_state_dict(state)
    with pytest.raises(ValueError, match="num_examples=40 but this loader has 39"):
        DataLoader(images[:39], labels[:39], 8).load_state_dict(state)
    with pytest.raises(KeyError, match="epoch"):
        DataLoader(images, labels, 8).load_state_dict({"seed": 0, "batch": 0})


@pytest.mark.parametrize("key, value, error, words", [
    ("seed", -1, ValueError, "seed=-1 must be a non-negative integer"),
    ("epoch", -3, ValueError, "epoch=-3 must be a non-negative integer"),
    ("batch", -1, ValueError, "batch=-1 must be a non-negative integer"),
    ("seed", 1.5, TypeError, "seed=1.5 must be an integer, got float"),
    ("epoch", 2.0, TypeError, "epoch=2.0 must be an integer, got float"),
    ("batch", 2.7, TypeError, "batch=2.7 must be an integer, got float"),  # int() would quietly make it 2
    ("epoch", "1", TypeError, "epoch='1' must be an integer, got str"),
    ("seed", None, TypeError, "seed=None must be an integer, got NoneType"),
    ("seed", True, TypeError, "seed=True must be an integer, got bool"),
    ("epoch", np.array([1, 2]), TypeError, "must be an integer, got ndarray"),
])
def test_load_state_dict_refuses_bad_counters_naming_key_and_value(key, value, error, words):
    images, labels = tagged(40)
    loader = DataLoader(images, labels, 8, seed=3, normalize=False)
    before = loader.state_dict()
    with pytest.raises(error) as info:
        loader.load_state_dict({**before, key: value})
    assert words in str(info.value), str(info.value)
    assert loader.state_dict() == before  # a refused state changes nothing
    assert len(epoch_ids(loader)) == 5  # and the loader still works


def test_load_state_dict_refuses_a_non_dict():
    images, labels = tagged(40)
    with pytest.raises(TypeError, match="loader state must be a dict.*got list"):
        DataLoader(images, labels, 8).load_state_dict([("seed", 0), ("epoch", 0), ("batch", 0)])


def test_load_state_dict_accepts_numpy_integers():
    images, labels = tagged(40)
    reference = DataLoader(images, labels, 8, seed=5, normalize=False)
    reference.set_epoch(2)
    expected = epoch_ids(reference)
    loader = DataLoader(images, labels, 8, normalize=False)
    loader.load_state_dict({"seed": np.int64(5), "epoch": np.int32(2), "batch": np.uint8(1)})
    assert type(loader.seed) is int and loader.state_dict()["epoch"] == 2
    got = epoch_ids(loader)
    assert len(got) == 4
    for a, b in zip(got, expected[1:]):
        np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------------------
# Prefetching
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("prefetch", [1, 2, 5])
def test_prefetch_gives_exactly_the_same_batches(rng, prefetch):
    images = rng.integers(0, 256, (70, 3, 8, 8), dtype=np.uint8)
    labels = rng.integers(0, 10, 70)
    plain = DataLoader(images, labels, 16, seed=2, augment=standard_augment)
    ahead = DataLoader(images, labels, 16, seed=2, augment=standard_augment, prefetch=prefetch)
    for _ in range(2):
        assert_same_batches(arrays(ahead), arrays(plain))
    assert ahead.epoch == plain.epoch == 2


class Boom(RuntimeError):
    pass


@pytest.mark.parametrize("prefetch", [0, 1, 3])
def test_errors_in_the_batch_pipeline_reach_the_consumer(prefetch):
    images, labels = tagged(40)
    calls = {"n": 0}

    def failing(batch, rng):
        calls["n"] += 1
        if calls["n"] == 3:
            raise Boom("augmentation failed on batch 2")
        return batch

    loader = DataLoader(images, labels, 8, shuffle=False, augment=failing, prefetch=prefetch, normalize=False)
    got = []
    with pytest.raises(Boom, match="batch 2"):
        for x, _ in loader:
            got.append(ids_of(x))
    assert [g[0] for g in got] == [0, 8]  # the two good batches arrived first, in order
    assert loader.epoch == 0
    assert not [t for t in threading.enumerate() if t.name == "minires-prefetch"]


def test_stopping_early_stops_the_prefetch_thread():
    images, labels = tagged(400)
    loader = DataLoader(images, labels, 4, prefetch=2)
    it = iter(loader)
    next(it)
    assert [t for t in threading.enumerate() if t.name == "minires-prefetch"]
    it.close()
    assert not [t for t in threading.enumerate() if t.name == "minires-prefetch"]


# ---------------------------------------------------------------------------
# Splits and subsets
# ---------------------------------------------------------------------------


def test_split_validation_is_a_reproducible_partition():
    images, labels = tagged(500)
    tr_x, tr_y, va_x, va_y = split_validation(images, labels, n_val=50, seed=0)
    assert tr_x.shape == (450, 3, 3, 3) and va_x.shape == (50, 3, 3, 3)
    assert tr_y.shape == (450,) and va_y.shape == (50,)
    np.testing.assert_array_equal(np.sort(np.concatenate([tr_y, va_y])), np.arange(500))  # disjoint, complete
    # images travel with their labels
    np.testing.assert_array_equal(tr_x[:, 0, 0, 0], tr_y % 256)
    np.testing.assert_array_equal(va_x[:, 1, 0, 0], va_y // 256)
    again = split_validation(images, labels, n_val=50, seed=0)
    np.testing.assert_array_equal(again[3], va_y)
    other = split_validation(images, labels, n_val=50, seed=1)
    assert not np.array_equal(other[3], va_y)
    assert va_y.max() > 400 and va_y.min() < 100  # random, not the first or last 50


def test_paper_split_sizes():
    images = np.zeros((50000, 1, 1, 1), np.uint8)
    labels = np.zeros(50000, np.int64)
    tr_x, tr_y, va_x, va_y = split_validation(images, labels)
    assert len(tr_x) == len(tr_y) == 45000 and len(va_x) == len(va_y) == 5000


def test_subset_takes_the_first_k():
    images, labels = tagged(30)
    x, y = subset(images, labels, 7)
    np.testing.assert_array_equal(y, np.arange(7))
    np.testing.assert_array_equal(x, images[:7])
    assert subset(images, labels, None)[0] is images


@pytest.mark.parametrize(
    "call, error, words",
    [
        (lambda x, y: DataLoader(x, y, 0), ValueError, "batch_size must be a positive integer, got 0"),
        (lambda x, y: DataLoader(x, y[:-1], 4), ValueError, "(9,)"),
        (lambda x, y: DataLoader(x[0], y, 4), ValueError, "(N, C, H, W)"),
        (lambda x, y: DataLoader(x, y.astype(np.float32), 4), TypeError, "float32"),
        (lambda x, y: DataLoader(x, y, 4, seed=-1), ValueError, "-1"),
        (lambda x, y: DataLoader(x, y, 4, prefetch=-2), ValueError, "-2"),
        (lambda x, y: DataLoader(x, y, 4, augment="flip"), TypeError, "str"),
        (lambda x, y: DataLoader(x, y, 4, device="tpu"), ValueError, "tpu"),
        (lambda x, y: DataLoader(x[:, :2], y, 4), ValueError, "images have 2 channels, got 3 means"),
        (lambda x, y: split_validation(x, y, n_val=10), ValueError, "1..9, got 10"),
        (lambda x, y: subset(x, y, 0), ValueError, "1..10, got 0"),
    ],
)
def test_bad_arguments_are_named(call, error, words):
    images, labels = tagged(10)
    with pytest.raises(error) as info:
        call(images, labels)
    assert words in str(info.value)


# ---------------------------------------------------------------------------
# Handing GPU batches between threads (a recording stand-in for CuPy)
# ---------------------------------------------------------------------------


class _StreamRecorder:
    """Just enough of CuPy for the prefetch handover, every call logged.

    Each thread has its own current stream, as with per-thread default streams
    (``CUPY_CUDA_PER_THREAD_DEFAULT_STREAM=1``), the case where a batch made by
    the prefetch thread is not ordered before the training step by itself.
    """

    def __init__(self):
        self.log = []
        self._local = threading.local()
        recorder = self

        class Stream:
            def __init__(self):
                self.thread = threading.current_thread().name

            def wait_event(self, event):
                recorder.log.append(("wait", event, self))

        class Event:
            def __init__(self, block=False, disable_timing=False, interprocess=False):
                pass

            def record(self, stream=None):
                recorder.log.append(("record", self, stream))

        class Device:
            def __init__(self, index=0):
                self.id = index

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                return False

        def get_current_stream():
            if not hasattr(recorder._local, "stream"):
                recorder._local.stream = Stream()
            return recorder._local.stream

        runtime = types.SimpleNamespace(getDeviceCount=lambda: 1)
        self.cuda = types.SimpleNamespace(Device=Device, Event=Event, Stream=Stream,
                                          get_current_stream=get_current_stream, runtime=runtime)


@pytest.fixture
def recorded_gpu(monkeypatch):
    """A pretend CUDA device whose streams and events are recorded; batches are their indices."""
    fake = _StreamRecorder()
    monkeypatch.setitem(backend._cupy_state, "checked", True)
    monkeypatch.setitem(backend._cupy_state, "module", fake)
    monkeypatch.setitem(backend._cupy_state, "reason", None)

    def make_batch(loader, epoch, index, order):
        fake.log.append(("made", index))
        return index, index

    monkeypatch.setattr(DataLoader, "_make_batch", make_batch)
    return fake


@pytest.mark.parametrize("prefetch", [1, 3])
def test_a_prefetched_gpu_batch_is_yielded_only_after_its_stream_work_is_waited_for(recorded_gpu, prefetch):
    images, labels = tagged(10)
    loader = DataLoader(images, labels, 2, shuffle=False, device="cuda", prefetch=prefetch)
    log = recorded_gpu.log
    for index, _ in loader:
        log.append(("yielded", index))
    for index in range(5):
        made = log.index(("made", index))
        yielded = log.index(("yielded", index))
        # The first event recorded after the batch was made is the batch's event.
        recorded = next(i for i in range(made, len(log)) if log[i][0] == "record")
        _, event, producer_stream = log[recorded]
        waited = next(i for i, entry in enumerate(log) if entry[0] == "wait" and entry[1] is event)
        consumer_stream = log[waited][2]
        assert made < recorded < waited < yielded, log
        assert producer_stream.thread == "minires-prefetch"  # recorded where the batch was made
        assert consumer_stream.thread == threading.current_thread().name  # waited where it is used


def test_without_prefetch_or_on_the_cpu_no_event_is_needed(recorded_gpu):
    images, labels = tagged(6)
    for _ in DataLoader(images, labels, 2, device="cuda", prefetch=0):
        pass
    for _ in DataLoader(images, labels, 2, device="cpu", prefetch=2):
        pass
    assert not [entry for entry in recorded_gpu.log if entry[0] in ("record", "wait")]


# ---------------------------------------------------------------------------
# GPU
# ---------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("prefetch", [0, 2])
def test_cuda_batches_equal_cpu_batches(rng, prefetch):
    if not backend.cupy_available():
        pytest.skip(f"no usable CUDA device: {backend.cupy_unavailable_reason()}")
    images = rng.integers(0, 256, (40, 3, 8, 8), dtype=np.uint8)
    labels = rng.integers(0, 10, 40)
    cpu = DataLoader(images, labels, 16, augment=standard_augment, seed=5)
    gpu = DataLoader(images, labels, 16, augment=standard_augment, seed=5, device="cuda", prefetch=prefetch)
    for (xc, yc), (xg, yg) in zip(cpu, gpu):
        assert xg.device.type == "cuda" and yg.device.type == "cuda"
        assert xg.dtype == np.float32 and yg.dtype == np.int64
        np.testing.assert_allclose(backend.to_device(xg.data, "cpu"), xc.numpy(), rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(backend.to_device(yg.data, "cpu"), yc.numpy())
