"""
Tests for gotaxy.logs: the rotated error log and how long it is kept.
"""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

from twisted.logger import Logger

from gotaxy.logs import DEFAULT_MAX_SIZE, ErrorLogService, RotatingLogFile, gotaxy_observer

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

    log = RotatingLogFile("gotaxy.log", str(tmp_path), max_days=7, max_size=DEFAULT_MAX_SIZE)
    try:
        assert not old.exists() and not older.exists()
        assert recent.exists()
        assert other.exists()  # not ours: never touched
        assert (tmp_path / "gotaxy.log").exists()
    finally:
        log.close()


def test_rotation_prunes_too(tmp_path: Path) -> None:
    log = RotatingLogFile("gotaxy.log", str(tmp_path), max_days=3, max_size=DEFAULT_MAX_SIZE)
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
    log = RotatingLogFile("gotaxy.log", str(tmp_path), max_days=1, max_size=DEFAULT_MAX_SIZE)
    try:
        log.prune()
        assert live.exists()
    finally:
        log.close()


def test_prune_with_an_explicit_now(tmp_path: Path) -> None:
    log = RotatingLogFile("gotaxy.log", str(tmp_path), max_days=2, max_size=DEFAULT_MAX_SIZE)
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
    log = RotatingLogFile("gotaxy.log", str(tmp_path), max_days=7, max_size=DEFAULT_MAX_SIZE)
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


class FakeClock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def test_the_file_rotates_at_the_size_cap_and_keeps_max_days_files(tmp_path: Path) -> None:
    # A flood of warnings (an attacker's doing, say) fills the file within a day.
    clock = FakeClock()
    log = RotatingLogFile("gotaxy.log", str(tmp_path), max_days=3, max_size=10_000, clock=clock)
    line = "x" * 99 + "\n"
    try:
        for _ in range(2_000):  # 200 kB: 20 times the cap
            log.write(line)
        log.flush()
    finally:
        log.close()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["gotaxy.log", "gotaxy.log.1", "gotaxy.log.2", "gotaxy.log.3"]
    for name in names[1:]:
        # Rotated as soon as the cap is reached (checked before each line).
        assert (tmp_path / name).stat().st_size == 10_000
    assert sum(p.stat().st_size for p in tmp_path.iterdir()) <= (3 + 1) * 10_000


def test_the_file_also_rotates_when_the_day_changes(tmp_path: Path) -> None:
    clock = FakeClock()
    log = RotatingLogFile("gotaxy.log", str(tmp_path), max_days=3, max_size=DEFAULT_MAX_SIZE, clock=clock)
    try:
        log.write("monday\n")
        log.write("still monday\n")
        clock.now += DAY
        log.write("tuesday\n")
        log.flush()
        assert (tmp_path / "gotaxy.log.1").read_text() == "monday\nstill monday\n"
        assert (tmp_path / "gotaxy.log").read_text() == "tuesday\n"
        clock.now += DAY
        log.flush()
    finally:
        log.close()


def test_an_empty_file_is_not_rotated_for_a_new_day(tmp_path: Path) -> None:
    clock = FakeClock()
    log = RotatingLogFile("gotaxy.log", str(tmp_path), max_days=3, max_size=DEFAULT_MAX_SIZE, clock=clock)
    try:
        clock.now += 2 * DAY
        log.write("first line\n")
        clock.now += 60
        log.write("second line\n")
        log.flush()
    finally:
        log.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gotaxy.log"]


def test_error_log_service_applies_the_size_cap(tmp_path: Path) -> None:
    service = ErrorLogService(str(tmp_path), max_days=2, max_size=65536)
    service.startService()
    try:
        log = Logger(namespace="gotaxy.test.flood")
        for n in range(3000):
            log.warn("refusing connection from 192.0.2.1 number {n}", n=n)
    finally:
        service.stopService()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["gotaxy.log", "gotaxy.log.1", "gotaxy.log.2"]
    assert all(p.stat().st_size < 65536 + 1000 for p in tmp_path.iterdir())
    assert "number 2999" in (tmp_path / "gotaxy.log").read_text()
