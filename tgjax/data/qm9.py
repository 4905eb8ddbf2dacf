"""QM9: 12 regression targets of 130,831 small molecules, from ``qm9pack``.

The molecules come from the CSV files shipped in the PyPI package
``qm9pack==1.0.3``, found with :mod:`importlib.util` without importing the
package (its own reader needs ``pkg_resources`` and pandas). Features need no chemistry
toolkit: the counts of H, C, N, O and F atoms, followed by the eigenvalues of
the molecule's Coulomb matrix sorted by decreasing magnitude and zero-padded
to 29 atoms, 34 numbers in all. Featurising every molecule takes tens of
seconds, so the result is cached (see :func:`tgjax.data.cache.cache_dir`).
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from tgjax.data.base import MultiTaskData, from_arrays
from tgjax.data.cache import atomic_save_npz, cache_dir, load_npz
from tgjax.tasks import Task

# Task name -> (CSV column, unit), in the order of the MultiTaskData labels.
QM9_TARGETS: dict[str, tuple[str, str]] = {
    "mu": ("Dipole_debye", "D"),
    "alpha": ("Polarizability_bohr3", "bohr^3"),
    "homo": ("HOMO_au", "Ha"),
    "lumo": ("LUMO_au", "Ha"),
    "gap": ("HOMO_LUMO_gap_au", "Ha"),
    "r2": ("R2_bohr2", "bohr^2"),
    "zpve": ("ZPVE_au", "Ha"),
    "U0": ("InternalEnergy_0K_au", "Ha"),
    "U": ("InternalEnergy_298K_au", "Ha"),
    "H": ("Enthalphy_298K_au", "Ha"),
    "G": ("GibbsFreeEnergy_298K_au", "Ha"),
    "Cv": ("Heatcapacity_Cv_cal_mol_K", "cal/(mol K)"),
}
ELEMENTS = ("H", "C", "N", "O", "F")
NUCLEAR_CHARGE = {"H": 1.0, "C": 6.0, "N": 7.0, "O": 8.0, "F": 9.0}
MAX_ATOMS = 29
NUM_FEATURES = len(ELEMENTS) + MAX_ATOMS
PACKAGE_FILES = ("qm9_part1.csv", "qm9_part2.csv", "qm9_part3.csv")
_BOHR_PER_ANGSTROM = 1.8897261246
# Bump when the features change, so that old cache files are not reused.
_FEATURE_VERSION = 1

QM9_SPLIT = (0.1, 0.1)
"""(validation, test) fractions of the seeded random split; train is the rest."""


def _parse_list(text: str, what: str, where: str) -> list[str]:
    flat = text.replace("[", "").replace("]", "")
    items = [s.strip().strip("'\"") for s in flat.split(",")]
    if not items or any(not s for s in items):
        raise ValueError(f"{where}: cannot read the {what} list {text[:60]!r}.")
    return items


def parse_qm9_csv(
    lines: Iterable[str], source: str = "<qm9 csv>"
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Parses one qm9pack CSV file into atoms, coordinates and targets.

    The file has a header row naming at least ``Index``, ``N_atoms``,
    ``Elements`` (a list such as ``['C','H','H','H','H']``), ``XYZ_Ang`` (a
    nested list of coordinates in Angstrom, numbers such as ``0.`` or
    ``2.1E-6``, which is why it is not read as JSON) and the target columns of
    :data:`QM9_TARGETS`.

    Args:
      lines: the text lines of the file, header first.
      source: file name used in error messages.

    Returns:
      ``(charges, coords, targets, index)``: `[molecules, 29]` nuclear charges
      (0 for padding), `[molecules, 29, 3]` coordinates in Bohr, `[molecules,
      12]` float64 targets in original units, `[molecules]` int64 molecule
      numbers.

    Raises:
      ValueError: naming the file, line and column of a malformed cell.
    """
    reader = csv.reader(lines)
    try:
        header = next(reader)
    except StopIteration:
        raise ValueError(
            f"{source}: the file is empty; expected a header row."
        ) from None
    needed = ["Index", "N_atoms", "Elements", "XYZ_Ang"]
    needed += [col for col, _ in QM9_TARGETS.values()]
    missing = [c for c in needed if c not in header]
    if missing:
        raise ValueError(
            f"{source}: missing column(s) {missing}; a qm9pack CSV has the header "
            f"{needed} among its columns."
        )
    col = {name: header.index(name) for name in needed}
    target_cols = [col[c] for c, _ in QM9_TARGETS.values()]
    charges, coords, targets, index = [], [], [], []
    for lineno, row in enumerate(reader, start=2):
        if not row:
            continue
        where = f"{source}, line {lineno}"
        if len(row) != len(header):
            raise ValueError(f"{where}: expected {len(header)} cells, got {len(row)}.")
        elements = _parse_list(row[col["Elements"]], "Elements", where)
        unknown = sorted(set(elements) - set(ELEMENTS))
        if unknown:
            raise ValueError(f"{where}: unknown element(s) {unknown}.")
        try:
            n = int(row[col["N_atoms"]])
            xyz = [float(v) for v in _parse_list(row[col["XYZ_Ang"]], "XYZ", where)]
            values = [float(row[c]) for c in target_cols]
            mol = int(row[col["Index"]])
        except ValueError as e:
            raise ValueError(f"{where}: a number cannot be read ({e}).") from None
        if n != len(elements) or len(xyz) != 3 * n or n > MAX_ATOMS:
            raise ValueError(
                f"{where}: N_atoms={n}, {len(elements)} elements and "
                f"{len(xyz)} coordinates disagree (expected 3 per atom, at most "
                f"{MAX_ATOMS} atoms)."
            )
        z = np.zeros(MAX_ATOMS)
        z[:n] = [NUCLEAR_CHARGE[e] for e in elements]
        r = np.zeros((MAX_ATOMS, 3))
        r[:n] = np.reshape(xyz, (n, 3)) * _BOHR_PER_ANGSTROM
        charges.append(z)
        coords.append(r)
        targets.append(values)
        index.append(mol)
    if not targets:
        raise ValueError(f"{source}: the file holds no molecules.")
    return (
        np.stack(charges),
        np.stack(coords),
        np.asarray(targets, np.float64),
        np.asarray(index, np.int64),
    )


def coulomb_features(charges: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """Element counts and sorted Coulomb-matrix eigenvalues.

    The Coulomb matrix has ``0.5 Z_i^2.4`` on the diagonal and
    ``Z_i Z_j / |R_i - R_j|`` elsewhere (atomic units); padding atoms have
    ``Z = 0`` and so contribute zero eigenvalues, which sort last.

    Args:
      charges: `[molecules, atoms]` nuclear charges, 0 for padding.
      coords: `[molecules, atoms, 3]` coordinates in Bohr.

    Returns:
      `[molecules, 5 + atoms]` float32: counts of H, C, N, O, F, then the
      eigenvalues by decreasing absolute value.
    """
    z = np.asarray(charges, np.float64)
    dist = np.linalg.norm(coords[:, :, None, :] - coords[:, None, :, :], axis=-1)
    zz = z[:, :, None] * z[:, None, :]
    off = np.divide(zz, dist, out=np.zeros_like(zz), where=dist > 0)
    eye = np.eye(z.shape[1], dtype=bool)[None]
    cm = np.where(eye, 0.5 * z[:, :, None] ** 2.4, off)
    eig = np.linalg.eigvalsh(cm)
    order = np.argsort(-np.abs(eig), axis=1, kind="stable")
    eig = np.take_along_axis(eig, order, axis=1)
    counts = np.stack([(z == NUCLEAR_CHARGE[e]).sum(1) for e in ELEMENTS], axis=1)
    return np.concatenate([counts, eig], axis=1).astype(np.float32)


def _package_files() -> list[Path]:
    # Locate the package without importing it: its __init__ needs
    # pkg_resources, which recent setuptools no longer provides.
    spec = importlib.util.find_spec("qm9pack")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "The qm9 data set needs the package 'qm9pack==1.0.3', which is not "
            "installed. Install it with: pip install 'tgjax[qm9]' (in a source "
            "checkout: pip install '.[qm9]')"
        )
    root = Path(list(spec.submodule_search_locations)[0]) / "data"
    files = [root / name for name in PACKAGE_FILES]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(
            f"qm9pack is installed but lacks {missing}; reinstall it with: "
            "pip install --force-reinstall 'qm9pack==1.0.3'"
        )
    return files


def _cache_key(files: Sequence[Path]) -> str:
    h = hashlib.sha1(f"qm9 v{_FEATURE_VERSION}".encode())
    for f in files:
        st = os.stat(f)
        h.update(f"{Path(f).resolve()}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def qm9_arrays(
    files: Sequence[str | os.PathLike] | None = None,
    *,
    cache: str | os.PathLike | None | bool = None,
) -> dict[str, np.ndarray]:
    """Featurised QM9 molecules, from the cache when possible.

    Args:
      files: qm9pack-format CSV files; by default the ones in ``qm9pack``.
      cache: a cache folder, None for :func:`~tgjax.data.cache.cache_dir`, or
        False to neither read nor write a cache.

    Returns:
      dict with ``x`` `[molecules, 34]` float32 features, ``y`` `[molecules,
      12]` float64 targets in original units and ``index`` `[molecules]`.
    """
    files = _package_files() if files is None else [Path(f) for f in files]
    path = None
    if cache is not False:
        folder = cache_dir(None if cache is None else cache)
        path = folder / f"qm9_features_{_cache_key(files)}.npz"
        cached = load_npz(path)
        if cached is not None and {"x", "y", "index"} <= set(cached):
            return cached
    parts = []
    for f in files:
        with open(f, newline="", encoding="utf-8") as fh:
            parts.append(parse_qm9_csv(fh, source=str(f)))
    charges, coords, y, index = (np.concatenate(p) for p in zip(*parts, strict=True))
    x = np.concatenate(
        [
            coulomb_features(charges[i : i + 8192], coords[i : i + 8192])
            for i in range(0, len(charges), 8192)
        ]
    )
    arrays = {"x": x, "y": y, "index": index}
    if path is not None:
        atomic_save_npz(path, **arrays)
    return arrays


def load_qm9(
    *,
    seed: int = 0,
    subset: int | None = None,
    files: Sequence[str | os.PathLike] | None = None,
    cache: str | os.PathLike | None | bool = None,
) -> MultiTaskData:
    """QM9 as 12 regression tasks on 34 numeric features.

    Split 80/10/10 at random with ``seed``; features and targets are
    standardised with train statistics, which the returned data keeps in
    ``target_mean``/``target_std`` so that errors can be reported in the
    original units (see :data:`QM9_TARGETS`). Every task is reported by its
    mean absolute error.

    Args:
      seed: seed of the subset choice and of the split.
      subset: if given, use this many molecules, drawn at random with ``seed``.
      files: qm9pack-format CSV files to read instead of the packaged ones.
      cache: see :func:`qm9_arrays`.

    Raises:
      ImportError: when ``qm9pack`` is missing, naming the pip command.
      ValueError: for a malformed file or a bad ``subset``.

    Example:
      >>> data = load_qm9(subset=2000)  # doctest: +SKIP
      >>> data.task_names[:3]  # doctest: +SKIP
      ['mu', 'alpha', 'homo']
    """
    arrays = qm9_arrays(files, cache=cache)
    x, y = arrays["x"], arrays["y"]
    if subset is not None:
        if not isinstance(subset, int) or not 10 <= subset <= len(x):
            raise ValueError(
                f"subset must be an integer in [10, {len(x)}], got {subset!r}."
            )
        pick = np.sort(np.random.default_rng(seed).permutation(len(x))[:subset])
        x, y = x[pick], y[pick]
    tasks = tuple(Task(name, "regression") for name in QM9_TARGETS)
    return from_arrays(
        "qm9",
        tasks,
        x,
        y,
        fractions=QM9_SPLIT,
        seed=seed,
        description="QM9 molecules (qm9pack), 12 regression targets, "
        "element counts + Coulomb-matrix eigenvalues",
    )
