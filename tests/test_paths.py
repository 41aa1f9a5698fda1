"""`resolve_under`: paths stay under their root unless the user opts in, and the refusal says how."""

from __future__ import annotations

import pytest

from panderm.errors import DataError
from panderm.paths import resolve_under


@pytest.mark.parametrize("relative", ["../secret.txt", "a/../../secret.txt", "/etc/passwd"])
def test_escaping_paths_name_the_command_line_option(tmp_path, relative):
    with pytest.raises(DataError, match=r"escapes the data root .*data\.allow_outside_root=true"):
        resolve_under(tmp_path / "root", relative)
    with pytest.raises(DataError, match=r"escapes the data root .* set allow_outside_root=true"):
        resolve_under(tmp_path / "root", relative, option="allow_outside_root=true")
    assert resolve_under(tmp_path / "root", relative, allow_outside=True).is_absolute()


def test_paths_under_the_root_resolve(tmp_path):
    assert resolve_under(tmp_path, "a/./b/../c.png") == tmp_path / "a" / "c.png"
    assert resolve_under(tmp_path, str(tmp_path / "d.png")) == tmp_path / "d.png"
