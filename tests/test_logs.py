"""
Tests for gotaxy.logs: the rotated error log and how long it is kept.
"""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

from twisted.logger import Logger

from gotaxy.logs import ErrorLogService, RetainingDailyLogFile, gotaxy_observer

DAY = 86400


def age(path: Path, days: float) -> None:
    then = time.time() - days * DAY
    os.utime(path, (then, then))


def test_old_rotated_files_are_deleted_on_open_and_recent_ones_kept(tmp_path: Path) -> None:
    old = tmp_path / "gotaxy.log.2020_1_1"
    older = tmp_path / "gotaxy.log.2019_12_1"
    recent = tmp_path / "gotaxy.log.2020_1_9"
    other = tmp_path / "notes.txt.2019_1_1"
    for path in (old, older, recent, other):
        path.write_text("x\n")
    age(old, 8)
    age(older, 40)
    age(recent, 6)
    age(other, 400)

    log = RetainingDailyLogFile("gotaxy.log", str(tmp_path), max_days=7)
    try:
        assert not old.exists() and not older.exists()
        assert recent.exists()
        assert other.exists()  # not ours: never touched
        assert (tmp_path / "gotaxy.log").exists()
    finally:
        log.close()


def test_rotation_prunes_too(tmp_path: Path) -> None:
    log = RetainingDailyLogFile("gotaxy.log", str(tmp_path), max_days=3)
    try:
        log.write("day one\n")
        stale = tmp_path / "gotaxy.log.2000_1_1"
        stale.write_text("x\n")
        age(stale, 4)
        log.rotate()
        assert not stale.exists()
        rotated = [p for p in tmp_path.iterdir() if p.name.startswith("gotaxy.log.")]
        assert len(rotated) == 1 and rotated[0].read_text() == "day one\n"
        log.write("day two\n")
        log.flush()
        assert (tmp_path / "gotaxy.log").read_text() == "day two\n"
    finally:
        log.close()


def test_the_live_file_is_never_pruned(tmp_path: Path) -> None:
    live = tmp_path / "gotaxy.log"
    live.write_text("long-running\n")
    age(live, 100)
    log = RetainingDailyLogFile("gotaxy.log", str(tmp_path), max_days=1)
    try:
        log.prune()
        assert live.exists()
    finally:
        log.close()


def test_prune_with_an_explicit_now(tmp_path: Path) -> None:
    log = RetainingDailyLogFile("gotaxy.log", str(tmp_path), max_days=2)
    try:
        kept = tmp_path / "gotaxy.log.2030_1_1"
        kept.write_text("x\n")
        log.prune(now=time.time() + 1 * DAY)
        assert kept.exists()
        log.prune(now=time.time() + 3 * DAY)
        assert not kept.exists()
    finally:
        log.close()


def test_new_log_file_is_private(tmp_path: Path) -> None:
    log = RetainingDailyLogFile("gotaxy.log", str(tmp_path), max_days=7)
    try:
        assert stat.S_IMODE(os.stat(tmp_path / "gotaxy.log").st_mode) == 0o600
    finally:
        log.close()


def test_error_log_service_keeps_warnings_and_worse(tmp_path: Path) -> None:
    directory = tmp_path / "data" / "logs"
    service = ErrorLogService(str(directory), max_days=7)
    service.startService()
    log = Logger(namespace="gotaxy.test")
    ours = Logger(namespace="gotaxy.test.ours", observer=gotaxy_observer)
    try:
        log.debug("a debug line {n}", n=1)
        log.info("an info line {n}", n=2)
        log.warn("a warning about {thing}", thing="port 6000")
        ours.info("our info line")
        ours.error("our error line")
        try:
            1 / 0
        except ZeroDivisionError:
            log.failure("a bug while relaying")
    finally:
        service.stopService()
    assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
    text = (directory / "gotaxy.log").read_text()
    assert "a warning about port 6000" in text
    assert "our error line" in text
    assert "a bug while relaying" in text and "ZeroDivisionError" in text and "Traceback" in text
    assert "info line" not in text and "debug line" not in text

    # After stopService nothing more is written.
    log.error("after the service stopped")
    assert "after the service stopped" not in (directory / "gotaxy.log").read_text()


def test_error_log_service_appends_across_restarts(tmp_path: Path) -> None:
    for n in range(2):
        service = ErrorLogService(str(tmp_path), max_days=7)
        service.startService()
        try:
            Logger(namespace="gotaxy.test").error("run {n}", n=n)
        finally:
            service.stopService()
    text = (tmp_path / "gotaxy.log").read_text()
    assert "run 0" in text and "run 1" in text


def test_log_level_applies_to_gotaxy_lines() -> None:
    from twisted.logger import globalLogPublisher

    from gotaxy.logs import set_level

    seen: list = []
    globalLogPublisher.addObserver(seen.append)
    ours = Logger(namespace="gotaxy.test.level", observer=gotaxy_observer)
    try:
        set_level("warn")
        ours.info("quiet please")
        ours.warn("still heard")
        set_level("debug")
        ours.debug("now heard")
    finally:
        set_level("info")
        globalLogPublisher.removeObserver(seen.append)
    formats = [e.get("log_format") for e in seen if e.get("log_namespace") == "gotaxy.test.level"]
    assert formats == ["still heard", "now heard"]
