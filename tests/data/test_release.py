"""Where CIFAR-10 is looked for (minires.data.release)."""

from __future__ import annotations

from minires.data.release import resolve_data_dir


def test_resolve_data_dir_argument_then_env_then_home(tmp_path, monkeypatch, home):
    monkeypatch.setenv("MINIRES_DATA", str(tmp_path / "from_env"))
    assert resolve_data_dir(tmp_path / "arg") == tmp_path / "arg"
    assert resolve_data_dir() == tmp_path / "from_env"
    monkeypatch.delenv("MINIRES_DATA")
    assert resolve_data_dir() == home / ".cache" / "minires"
    # Relative paths are anchored to the current directory once, at resolution time.
    monkeypatch.chdir(tmp_path)
    assert resolve_data_dir("rel/dir") == tmp_path / "rel" / "dir"
    assert resolve_data_dir("~/x") == home / "x"
