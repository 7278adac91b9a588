"""Task dataset validation and DT context windows with returns-to-go."""

import numpy as np
import pytest
import torch

from pretrainkit.errors import DataError
from pretrainkit.systems.l2m.data import (
    ContextWindowDataset,
    load_task_dataset,
    returns_to_go,
    split_episodes,
)


def _write(path, **arrays):
    np.savez(path, **arrays)
    return path


def _toy(path, lengths=(3, 2), state_dim=2, task="toy-v3", **extra):
    T = sum(lengths)
    dones = np.zeros(T, bool)
    dones[np.cumsum(lengths) - 1] = True
    arrays = {
        "states": np.arange(T * state_dim, dtype=np.float32).reshape(T, state_dim),
        "actions": np.linspace(-1, 1, T * 4, dtype=np.float32).reshape(T, 4),
        "rewards": np.arange(1, T + 1, dtype=np.float32),
        "dones": dones,
        "task": np.array(task),
        "episode_lengths": np.asarray(lengths),
    }
    arrays.update(extra)
    return _write(path, **arrays)


def test_missing_keys_named(tmp_path):
    p = _write(tmp_path / "x.npz", states=np.zeros((3, 2)), actions=np.zeros((3, 4)))
    with pytest.raises(DataError) as e:
        load_task_dataset(p)
    assert "rewards" in str(e.value) and "dones" in str(e.value) and "\n" not in str(e.value)


def test_mismatched_lengths(tmp_path):
    p = _write(
        tmp_path / "x.npz",
        states=np.zeros((3, 2)),
        actions=np.zeros((3, 4)),
        rewards=np.zeros(2),
        dones=np.zeros(3, bool),
    )
    with pytest.raises(DataError, match="mismatched lengths"):
        load_task_dataset(p)


def test_other_bad_files(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_task_dataset(tmp_path / "absent.npz")
    (tmp_path / "junk.npz").write_text("not a zip")
    with pytest.raises(DataError, match="not a readable"):
        load_task_dataset(tmp_path / "junk.npz")
    p = _toy(tmp_path / "nan.npz")
    with np.load(p) as z:
        arrays = dict(z)
    arrays["states"][0, 0] = np.nan
    with pytest.raises(DataError, match="NaN"):
        load_task_dataset(_write(tmp_path / "nan.npz", **arrays))
    with pytest.raises(DataError, match="episode_lengths"):
        load_task_dataset(_toy(tmp_path / "len.npz", episode_lengths=np.array([2, 3])))
    with pytest.raises(DataError, match="2-D"):
        load_task_dataset(
            _write(
                tmp_path / "1d.npz",
                states=np.zeros(3),
                actions=np.zeros((3, 4)),
                rewards=np.zeros(3),
                dones=np.zeros(3, bool),
            )
        )


def test_load_episodes_and_returns(tmp_path):
    d = load_task_dataset(_toy(tmp_path / "t.npz"))
    assert d.task == "toy-v3" and len(d) == 5 and d.num_episodes == 2
    assert d.starts.tolist() == [0, 3] and d.ends.tolist() == [3, 5]
    np.testing.assert_allclose(d.episode_returns, [1 + 2 + 3, 4 + 5])
    np.testing.assert_allclose(returns_to_go(d.rewards, d.starts, d.ends), [6, 5, 3, 9, 5])
    train, val = split_episodes(d, 0.5, seed=0)
    assert train.num_episodes == 1 and val.num_episodes == 1 and len(train) + len(val) == 5


def test_unterminated_tail_is_an_episode(tmp_path):
    p = _write(
        tmp_path / "u.npz",
        states=np.zeros((4, 2)),
        actions=np.zeros((4, 4)),
        rewards=np.ones(4),
        dones=np.array([0, 1, 0, 0], bool),
    )
    d = load_task_dataset(p)
    assert d.task == "u" and d.starts.tolist() == [0, 2] and d.ends.tolist() == [2, 4]


def test_context_windows_left_pad_inside_episode(tmp_path):
    a = load_task_dataset(_toy(tmp_path / "a.npz"))
    b = load_task_dataset(_toy(tmp_path / "b.npz", lengths=(4,), task="other-v3"))
    ds = ContextWindowDataset([a, b], context=3, rtg_scale=2.0)
    assert len(ds) == 9 and ds.tasks == ["toy-v3", "other-v3"]
    w = ds[3]  # first step of episode 2 of task 0: two padded slots
    assert w["mask"].tolist() == [False, False, True]
    assert w["timesteps"].tolist() == [0, 0, 0]
    torch.testing.assert_close(w["rtg"], torch.tensor([0.0, 0.0, 9 / 2]))
    torch.testing.assert_close(w["states"][2], torch.from_numpy(a.states[3]))
    assert (w["states"][:2] == 0).all() and w["task_id"].item() == 0
    w = ds[2]  # last step of episode 1: full window
    assert w["mask"].all() and w["timesteps"].tolist() == [0, 1, 2]
    torch.testing.assert_close(w["rtg"], torch.tensor([6.0, 5.0, 3.0]) / 2)
    torch.testing.assert_close(w["actions"], torch.from_numpy(a.actions[0:3]))
    w = ds[8]
    assert w["task_id"].item() == 1 and w["timesteps"].tolist() == [1, 2, 3]
    batch = ds.sample_batch(5, torch.Generator().manual_seed(0))
    assert batch["states"].shape == (5, 3, 2) and batch["actions"].shape == (5, 3, 4)
    assert ContextWindowDataset(a, context=2, task_ids=[7])[0]["task_id"].item() == 7


def test_window_dataset_rejects_mixed_dims(tmp_path):
    a = load_task_dataset(_toy(tmp_path / "a.npz"))
    b = load_task_dataset(_toy(tmp_path / "b.npz", state_dim=3))
    with pytest.raises(DataError, match="state_dim"):
        ContextWindowDataset([a, b])


def test_window_batches_are_a_resumable_batch_stream(tmp_path):
    from pretrainkit.core.data import BatchStream
    from pretrainkit.systems.l2m.pipeline import WindowBatches

    ds = ContextWindowDataset(load_task_dataset(_toy(tmp_path / "a.npz")), context=3)
    stream = WindowBatches(ds, 4, seed=0)
    assert isinstance(stream, BatchStream) and stream.items_per_batch == 4
    next(stream)
    state = stream.state_dict()
    a = next(stream)
    stream.load_state_dict(state)
    assert all(torch.equal(a[k], v) for k, v in next(stream).items())
