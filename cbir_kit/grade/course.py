"""Instructor side: the course's own settings (``course.toml`` in the nbgrader course folder).

An nbgrader course needs ``source/<assignment>/<notebook>.ipynb``.  In cbir_kit the instructor
notebooks live in ``notebooks/`` (the only source of truth, executed by CI), so ``course.toml``
says where they are, and :func:`sync_sources` copies each ``NN_name.ipynb`` into
``source/NN_name/`` before every release: a fresh clone needs no manual step.

It also says what a notebook's grading kernel needs, because that kernel runs in a sandbox that
sees no environment variable and no file of the host:

``profile``    the ``CBIR_PROFILE`` every grading kernel gets (``ci``: offline demo data, no
               dataset needed; ``full``: the real datasets);
``data_root``  the host folder holding the datasets (default ``$CBIR_DATA``, else ``datasets/``
               next to the course folder);
``misconceptions``  the catalogue of known mistakes whose sentences explain failed hidden tests
               in the feedback (default ``misconceptions.toml`` beside the notebooks);
``[datasets.<profile>]``  per notebook, the dataset folders it reads under that profile; each is
               mounted read-only as ``<name>`` inside the kernel's own data root (``$CBIR_DATA``, a
               private writable folder, where the offline datasets are built).  A folder that is
               missing on the host is reported and left out (the notebook decides whether it can
               run without it).
"""
from __future__ import annotations

import os
import shutil
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import CbirError

CONFIG = "course.toml"


@dataclass
class Course:
    """The settings of one course folder (see the module docstring)."""

    root: Path
    notebooks: Path | None = None
    profile: str = "ci"
    data_root: Path | None = None
    datasets: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    misconceptions: Path | None = None

    def kernel_data(self, notebook: str) -> tuple[dict[str, str], dict[str, str], list[str]]:
        """``(env, datasets, missing)`` for the grading kernel of ``notebook``.

        ``env`` holds ``CBIR_PROFILE``; ``datasets`` maps each dataset folder name the notebook
        lists to its host folder; ``missing`` names the listed folders the host does not have.
        """
        datasets, missing = {}, []
        for name in self.datasets.get(self.profile, {}).get(notebook, []):
            host = (self.data_root / name) if self.data_root else None
            if host is None or not host.is_dir():
                missing.append(name)
            else:
                datasets[name] = str(host.resolve())
        return {"CBIR_PROFILE": self.profile}, datasets, missing


def load_course(root: str | Path) -> Course:
    """Read ``root/course.toml`` (every key optional); a course without it uses the defaults."""
    root = Path(root).resolve()
    path = root / CONFIG
    if not path.is_file():
        return Course(root)
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise CbirError(f"{path} is not valid TOML: {err}") from None
    known = {"notebooks", "profile", "data_root", "datasets", "misconceptions"}
    if set(raw) - known:
        raise CbirError(f"{path}: unknown key(s) {sorted(set(raw) - known)}; known: {', '.join(sorted(known))}")
    notebooks = (root / raw["notebooks"]).resolve() if raw.get("notebooks") else None
    if notebooks is not None and not notebooks.is_dir():
        raise CbirError(f"{path}: notebooks = {raw['notebooks']!r} is not a folder ({notebooks})")
    data = raw.get("data_root") or os.environ.get("CBIR_DATA") or str(root.parent / "datasets")
    datasets = raw.get("datasets", {})
    if not all(isinstance(v, dict) and all(isinstance(x, list) for x in v.values()) for v in datasets.values()):
        raise CbirError(f"{path}: [datasets.<profile>] tables map a notebook name to a list of dataset folders")
    if raw.get("misconceptions"):
        catalogue = (root / raw["misconceptions"]).resolve()
        if not catalogue.is_file():
            raise CbirError(f"{path}: misconceptions = {raw['misconceptions']!r} is not a file ({catalogue})")
    else:   # the default sits beside the notebooks, when there is one
        default = notebooks / "misconceptions.toml" if notebooks is not None else None
        catalogue = default if default is not None and default.is_file() else None
    return Course(root, notebooks, str(raw.get("profile", "ci")), (root / data).resolve(), datasets, catalogue)


def sync_sources(course: Course) -> list[str]:
    """Copy ``notebooks/NN_*.ipynb`` into ``source/NN_*/`` (replacing older copies); return the assignments."""
    if course.notebooks is None:
        return []
    found = sorted(p for p in course.notebooks.glob("[0-9]*.ipynb") if p.is_file())
    if not found:
        raise CbirError(f"{course.notebooks} holds no NN_name.ipynb notebooks (course.toml: notebooks)")
    for nb in found:
        dest = course.root / "source" / nb.stem
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(nb, dest / nb.name)
    return [nb.stem for nb in found]
