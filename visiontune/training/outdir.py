"""The run folder, before and around writing it.

``check_out`` refuses a target before any work: one that is a file, that cannot be created or
written (checked on the nearest folder that exists, creating nothing), one that holds an
interrupted run, or a finished one unless ``--overwrite``. ``remove_old_run`` takes away the files
an earlier run wrote there, so a folder never holds two models. ``missing_folders`` and
``remove_empty`` keep a failed run from leaving an empty folder behind.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from .._paths import check_writable_dir
from ..choices import EXPORT_FORMATS
from ..errors import VisiontuneError
from ..exporting.exporter import default_export_name
from ..formats.bundle import CONFIG_FILE, WEIGHTS_FILE
from ..formats.trust import TRUST_FILE
from ..prediction.ensemble import ENSEMBLE_FILE
from .checkpoints import refuse_interrupted

__all__ = [
    "FINISHED_MARKERS",
    "check_out",
    "is_report",
    "missing_folders",
    "refuse_finished",
    "remove_empty",
    "remove_old_run",
]

# A folder holding any of these is a finished run (or ensemble).
FINISHED_MARKERS = ("metrics.json", WEIGHTS_FILE, ENSEMBLE_FILE)
RUN_FILES = (
    WEIGHTS_FILE,
    CONFIG_FILE,
    TRUST_FILE,
    "history.json",
    "history.csv",
    "metrics.json",
    ENSEMBLE_FILE,
    *(default_export_name(f) for f in EXPORT_FORMATS),
)
REPORT_FILES = ("index.html", "metrics.json")  # what makes a sub-folder an evaluate --report


def refuse_finished(run_dir: Path, *, overwrite: bool) -> None:
    """A finished run is replaced only when asked (``--overwrite``)."""
    found = [name for name in FINISHED_MARKERS if (run_dir / name).is_file()]
    if found and not overwrite:
        raise VisiontuneError(
            f"{run_dir} holds a finished run ({found[0]}); give --overwrite to replace it (its "
            "model, exports, metrics and reports are removed), or choose another --out"
        )


def check_out(run_dir: Path, *, overwrite: bool, resuming: bool = False) -> None:
    """Every reason ``run_dir`` cannot take a new run, raised before any work."""
    check_writable_dir(run_dir, "--out")
    if not resuming:
        refuse_interrupted(run_dir)
        refuse_finished(run_dir, overwrite=overwrite)


def is_report(folder: Path) -> bool:
    return folder.is_dir() and all((folder / name).is_file() for name in REPORT_FILES)


def remove_old_run(run_dir: Path, *, keep_members: int = 0) -> None:
    """The files of an earlier run in ``run_dir``: bundle, exports, history, metrics, report
    folders, and ensemble members from ``keep_members`` on. The checkpoint is kept (a resumed run
    still needs it) and so is everything we did not write."""
    if not run_dir.is_dir():
        return
    for name in RUN_FILES:
        (run_dir / name).unlink(missing_ok=True)
    for child in run_dir.iterdir():
        if is_report(child):
            shutil.rmtree(child)
    members = run_dir / "members"
    if members.is_dir():
        for member in members.iterdir():
            if member.name.isdigit() and int(member.name) >= keep_members:
                shutil.rmtree(member)
        if not any(members.iterdir()):
            members.rmdir()


def missing_folders(folder: Path) -> list[Path]:
    """``folder`` and those of its ancestors that do not exist yet, deepest first."""
    missing, path = [], Path(folder).absolute()
    while not path.exists() and path != path.parent:
        missing.append(path)
        path = path.parent
    return missing


def remove_empty(folders: list[Path]) -> None:
    """Remove those of ``folders`` (deepest first) that exist and are empty: a failed run leaves
    no empty run folder behind. A folder with a checkpoint in it stays."""
    for folder in folders:
        try:
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        except OSError:
            return
