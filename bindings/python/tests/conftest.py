"""Shared set-up of the recon package tests.

Environment: RECON_LIBRARY (default: the repository's target/release or target/debug
librecon.so), MODEL_DIR (default: tests/fixtures/model_tiny), IMAGE (default:
tests/fixtures/images/example.png). Every test must run: a skipped test counts as failed, so a
run that skipped everything cannot pass. Every library function is wrapped to count its calls;
the last test checks that the package itself called each one.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, List

import pytest

ROOT = Path(__file__).resolve().parents[3]
if not os.environ.get("RECON_LIBRARY"):
    for profile in ("release", "debug"):
        candidate = ROOT / "target" / profile / "librecon.so"
        if candidate.exists():
            os.environ["RECON_LIBRARY"] = str(candidate)
            break

import recon  # noqa: E402

# name -> calls made from inside the recon package / from anywhere.
PACKAGE_CALLS: Dict[str, int] = dict.fromkeys(recon.abi.SIGNATURES, 0)
ALL_CALLS: Dict[str, int] = dict.fromkeys(recon.abi.SIGNATURES, 0)


def _count_calls() -> None:
    """Replaces each declared function of the loaded library with a counting wrapper; the
    package looks its functions up on every call, so it goes through the wrappers too."""
    lib = recon.abi.lib()
    for name in recon.abi.SIGNATURES:
        def counted(*args: Any, _fn: Any = getattr(lib, name), _name: str = name) -> Any:
            ALL_CALLS[_name] += 1
            caller = sys._getframe(1).f_globals.get("__name__", "")
            if caller == "recon" or caller.startswith("recon."):
                PACKAGE_CALLS[_name] += 1
            return _fn(*args)
        setattr(lib, name, counted)


_count_calls()

#: Lines for the "recon timings" section of pytest's summary (generation times and the like).
TIMINGS: List[str] = []


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "last: run after every other test")


def pytest_collection_modifyitems(items: List[pytest.Item]) -> None:
    items.sort(key=lambda item: item.get_closest_marker("last") is not None)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped, which this suite does not allow: {report.longrepr}"


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if TIMINGS:
        terminalreporter.section("recon timings")
        for line in TIMINGS:
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def model_dir() -> Path:
    path = Path(os.environ.get("MODEL_DIR") or ROOT / "tests" / "fixtures" / "model_tiny")
    assert (path / "pipeline.json").is_file(), f"MODEL_DIR {path} holds no pipeline.json"
    return path


@pytest.fixture(scope="session")
def image_path() -> Path:
    path = Path(os.environ.get("IMAGE") or ROOT / "tests" / "fixtures" / "images" / "example.png")
    assert path.is_file(), f"IMAGE {path} is missing"
    return path


@pytest.fixture(scope="session")
def model(model_dir: Path) -> Iterator[recon.Model]:
    """The tiny model on the CPU, shared by the tests that only run it."""
    with recon.Model.load(model_dir, device="cpu", offline=True) as m:
        yield m
