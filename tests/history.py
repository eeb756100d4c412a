"""
Earlier versions of this checkout, for the tests that run an old client
against today's server: the last commit whose copy of a file passes a test,
its ``gotaxy`` and ``twisted`` trees extracted from git.  Without git or the
repository's history (a tarball, a shallow clone that lacks the commit) the
functions return None and the test skips.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Callable, List, Optional

from tests.e2e import ROOT

#: Commits of a file looked at to find the one wanted.
HISTORY_DEPTH = 200


def _git(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, check=True, timeout=timeout)


def extract(commit: str, destination: Path) -> None:
    """The ``gotaxy`` and ``twisted`` trees of ``commit``, written below ``destination``."""
    with tarfile.open(fileobj=io.BytesIO(_git("archive", commit, "gotaxy", "twisted", timeout=60).stdout)) as tar:
        tar.extractall(destination, filter="data")


def _history_available() -> bool:
    return shutil.which("git") is not None and (ROOT / ".git").exists()


def last_commit_where(path: str, wanted: Callable[[str], bool], destination: Path) -> Optional[str]:
    """
    The newest commit (of the last HISTORY_DEPTH that changed ``path``) whose
    ``path`` text passes ``wanted``, extracted into ``destination``; its id.
    """
    if not _history_available():
        return None
    try:
        commits: List[str] = _git("log", f"-n{HISTORY_DEPTH}", "--format=%H", "--", path).stdout.decode().split()
        for commit in commits:
            shown = subprocess.run(["git", "-C", str(ROOT), "show", f"{commit}:{path}"],
                                   capture_output=True, text=True, timeout=30).stdout
            if shown and wanted(shown):
                extract(commit, destination)
                return commit
    except (subprocess.SubprocessError, OSError):
        return None
    return None


def commit_before_added(path: str, destination: Path) -> Optional[str]:
    """The parent of the commit that added ``path``, extracted into ``destination``; its id."""
    if not _history_available():
        return None
    try:
        added = _git("log", "--diff-filter=A", "--format=%H", "--", path).stdout.decode().split()
        if not added:
            return None
        commit = f"{added[-1]}^"
        extract(commit, destination)
        return commit
    except (subprocess.SubprocessError, OSError):
        return None
