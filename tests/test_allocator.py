import platform

import pytest
from click.testing import CliRunner

import convertsnn.cli
from convertsnn.allocator import keep_freed_memory


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_glibc_keeps_freed_memory(monkeypatch):
    for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"):
        monkeypatch.delenv(name, raising=False)
    assert keep_freed_memory()


def test_the_users_glibc_settings_win(monkeypatch):
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "131072")
    assert not keep_freed_memory()


def test_every_command_sets_the_allocator(monkeypatch):
    calls = []
    monkeypatch.setattr(convertsnn.cli, "keep_freed_memory", lambda: calls.append(1))
    assert CliRunner().invoke(convertsnn.cli.main, ["models"]).exit_code == 0
    assert calls == [1]
