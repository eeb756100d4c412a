"""
The installation id a client keeps in its data directory
(``gotaxy.client.identity``).
"""

from __future__ import annotations

import stat

import pytest

from gotaxy.client.identity import INSTANCE_ID_FILENAME, load_or_create_instance_id


def test_created_once_private_and_stable(tmp_path):
    data_dir = tmp_path / "new" / "data"
    first = load_or_create_instance_id(str(data_dir))
    assert len(first) == 32 and int(first, 16) >= 0
    path = data_dir / INSTANCE_ID_FILENAME
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    assert load_or_create_instance_id(str(data_dir)) == first
    assert [p.name for p in data_dir.iterdir()] == [INSTANCE_ID_FILENAME]  # no temporary files left


def test_each_data_directory_is_its_own_installation(tmp_path):
    assert load_or_create_instance_id(str(tmp_path / "a")) != load_or_create_instance_id(str(tmp_path / "b"))


@pytest.mark.parametrize("content", ["", "not an id\n", "ABCDEF" * 6])
def test_a_damaged_file_is_replaced(tmp_path, content):
    (tmp_path / INSTANCE_ID_FILENAME).write_text(content)
    made = load_or_create_instance_id(str(tmp_path))
    assert len(made) == 32 and (tmp_path / INSTANCE_ID_FILENAME).read_text().strip() == made


def test_a_data_directory_that_cannot_be_made_is_an_oserror(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OSError):
        load_or_create_instance_id(str(blocker / "sub"))
