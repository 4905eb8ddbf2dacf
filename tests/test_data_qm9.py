"""QM9 parsing and featurisation on a small file in qm9pack's format."""

import numpy as np
import pytest

from tgjax.data import qm9

HEADER = (
    "XYZ_file,Index,SMILES,InChi,N_atoms,Stoichiometry,Elements,XYZ_Ang,"
    "Mulliken_pop,Harmonic_Freq_cmi,RotA_GHz,RotB_GHz,RotC_GHz,Dipole_debye,"
    "Polarizability_bohr3,HOMO_au,LUMO_au,HOMO_LUMO_gap_au,R2_bohr2,ZPVE_au,"
    "InternalEnergy_0K_au,InternalEnergy_298K_au,Enthalphy_298K_au,"
    "GibbsFreeEnergy_298K_au,Heatcapacity_Cv_cal_mol_K"
)


def _number(v: float) -> str:
    # qm9pack writes "0." for zero and exponents such as "2.1E-6".
    if v == 0:
        return "0."
    if abs(v) < 1e-4:
        return f"{v:.1E}"
    return repr(round(float(v), 6))


def _row(i: int, rng) -> str:
    elements = ["C"] + ["H"] * (1 + i % 4) + (["O"] if i % 3 else [])
    n = len(elements)
    xyz = rng.normal(size=(n, 3)) * 1.5
    xyz[0, 2] = 2.1e-6
    xyz_text = (
        "["
        + ",".join("[" + ",".join(_number(v) for v in atom) + "]" for atom in xyz)
        + "]"
    )
    elem_text = "[" + ",".join(f"'{e}'" for e in elements) + "]"
    targets = rng.normal(size=12)
    if i % 2:
        targets[0] = 0.0
    cells = [
        f'"dsgdb9nsd_{i:06d}.xyz"',
        str(i),
        '"C"',
        '"InChI=1S/CH4/h1H4"',
        str(n),
        f'"[{elements.count("H")},1,0,{elements.count("O")},0]"',
        f'"{elem_text}"',
        f'"{xyz_text}"',
        '"[' + ",".join(["0.1"] * n) + ']"',
        '"[1341.307,1562.6731]"',
        "157.7118",
        "157.70997",
        "157.70699",
    ] + [_number(v) for v in targets]
    return ",".join(cells)


@pytest.fixture
def qm9_files(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for part in range(2):
        rows = [_row(1 + part * 20 + i, rng) for i in range(20)]
        path = tmp_path / f"qm9_part{part + 1}.csv"
        path.write_text(HEADER + "\n" + "\n".join(rows) + "\n")
        paths.append(path)
    return paths


def _naive_features(elements, xyz_bohr):
    z = np.array([qm9.NUCLEAR_CHARGE[e] for e in elements])
    n = len(z)
    cm = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            if i == j:
                cm[i, j] = 0.5 * z[i] ** 2.4
            else:
                cm[i, j] = z[i] * z[j] / np.linalg.norm(xyz_bohr[i] - xyz_bohr[j])
    eig = np.linalg.eigvalsh(cm)
    eig = eig[np.argsort(-np.abs(eig))]
    counts = [elements.count(e) for e in qm9.ELEMENTS]
    return np.concatenate([counts, eig, np.zeros(qm9.MAX_ATOMS - n)])


def test_parse_matches_naive_coulomb_features(qm9_files):
    with open(qm9_files[0], newline="") as f:
        charges, coords, targets, index = qm9.parse_qm9_csv(f, "part1")
    assert charges.shape == (20, 29) and coords.shape == (20, 29, 3)
    assert targets.shape == (20, 12) and index[0] == 1
    assert targets[0, 0] == 0.0 and targets[1, 0] != 0.0
    feats = qm9.coulomb_features(charges, coords)
    assert feats.shape == (20, qm9.NUM_FEATURES)
    inv = {v: k for k, v in qm9.NUCLEAR_CHARGE.items()}
    for m in (0, 5):
        n = int((charges[m] > 0).sum())
        elements = [inv[z] for z in charges[m, :n]]
        ref = _naive_features(elements, coords[m, :n])
        np.testing.assert_allclose(feats[m], ref, rtol=1e-5, atol=1e-5)


def test_load_qm9_splits_standardises_and_caches(qm9_files, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    data = qm9.load_qm9(files=qm9_files, cache=cache)
    assert data.task_names == list(qm9.QM9_TARGETS)
    assert all(t.kind == "regression" for t in data.tasks)
    assert (len(data.train), len(data.val), len(data.test)) == (32, 4, 4)
    np.testing.assert_allclose(data.train.y.mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(data.train.y.std(0), 1.0, atol=1e-4)
    assert list(cache.glob("*.npz")) and not list(cache.glob("*.tmp"))

    def fail(*a, **k):
        raise AssertionError("the cache was not used")

    monkeypatch.setattr(qm9, "parse_qm9_csv", fail)
    again = qm9.load_qm9(files=qm9_files, cache=cache)
    np.testing.assert_array_equal(again.train.x, data.train.x)
    small = qm9.load_qm9(files=qm9_files, cache=cache, subset=20)
    assert len(small.train) + len(small.val) + len(small.test) == 20
    with pytest.raises(ValueError, match="subset"):
        qm9.load_qm9(files=qm9_files, cache=cache, subset=1000)


def test_malformed_qm9_rows_name_the_line(tmp_path):
    good = _row(1, np.random.default_rng(1))
    bad = good.replace("'H'", "'Xe'", 1)
    path = tmp_path / "bad.csv"
    path.write_text(HEADER + "\n" + good + "\n" + bad + "\n")
    with pytest.raises(ValueError, match="line 3: unknown element"):
        qm9.load_qm9(files=[path], cache=False)
    path.write_text(HEADER.replace("Dipole_debye", "Dipole") + "\n" + good + "\n")
    with pytest.raises(ValueError, match="missing column"):
        qm9.load_qm9(files=[path], cache=False)
