"""Bounded fuzz of the config parser and the user-file loaders.

Whatever the input, the outcome is either a valid object or one ValueError
(FileNotFoundError for a missing file) with a message; never another
exception type, and never data that the training checks would refuse.
"""

import dataclasses
import json
import math

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tgjax.config import RunConfig
from tgjax.data import load_file
from tgjax.validate import check_fit_inputs

FIELDS = [f.name for f in dataclasses.fields(RunConfig)]
KEYS = st.sampled_from(FIELDS + ["learning_rte", "group", "Tau", "", "epochs "])
VALUES = st.one_of(
    st.sampled_from(
        [None, True, False, 0, 1, -1, 2, 64, 2.5, -0.5, 0.0, 1e400, -1e400]
    ),
    st.sampled_from(["", "relaxed", "cosine", "mtl", "x", "4", "nan"]),
    st.just(float("nan")),
    st.lists(st.sampled_from([0, 1, 8, -2, 2.5, "a", None]), max_size=3),
    st.dictionaries(st.sampled_from(["a", "groups"]), st.integers(), max_size=2),
)
FUZZ = settings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


def _assert_valid(config: RunConfig) -> None:
    assert config.groups >= 1 and config.epochs >= 1 and config.batch_size >= 1
    for name in ("learning_rate", "tau"):
        v = getattr(config, name)
        assert math.isfinite(v) and v > 0
    assert config.hidden and all(h >= 1 for h in config.hidden)
    # A valid config survives a round trip through its JSON form.
    assert RunConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


@FUZZ
@given(values=st.dictionaries(KEYS, VALUES, max_size=4))
def test_fuzz_config_dict(values):
    try:
        config = RunConfig.from_dict(values)
    except ValueError as e:
        message = str(e)
        assert message and "\n" not in message
        bad = [k for k in values if k not in FIELDS]
        if bad:
            assert repr(bad[0]) in message
        return
    _assert_valid(config)


@FUZZ
@given(
    text=st.one_of(
        st.text(st.characters(exclude_categories=["Cs"]), max_size=40),
        st.dictionaries(KEYS, VALUES, max_size=3).map(json.dumps),
        st.dictionaries(KEYS, VALUES, max_size=3).map(lambda d: json.dumps(d)[:-1]),
    )
)
def test_fuzz_config_file(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("cfg") / "c.json"
    path.write_text(text, encoding="utf-8")
    try:
        config = RunConfig.from_json(path)
    except ValueError as e:
        assert str(path) in str(e)
        return
    _assert_valid(config)


CELLS = st.sampled_from(
    ["0", "1", "1", "0", "2", "0.5", "-1", "", "nan", "inf", "x", "1e400", "3.25"]
)


@FUZZ
@given(
    rows=st.lists(st.lists(CELLS, min_size=4, max_size=4), min_size=0, max_size=14),
    cut=st.integers(0, 30),
)
def test_fuzz_csv_is_refused_or_ready_to_train(tmp_path_factory, rows, cut):
    path = tmp_path_factory.mktemp("csv") / "d.csv"
    text = "\n".join(["f1,f2,task:a,task:b"] + [",".join(r) for r in rows]) + "\n"
    # Sometimes truncate the file mid-row, as an interrupted copy would.
    if cut and len(text) > cut:
        text = text[:-cut]
    path.write_text(text)
    try:
        data = load_file(path)
    except ValueError as e:
        assert str(e)
        return
    notes = check_fit_inputs(data, RunConfig(batch_size=1, groups=2))
    assert notes == []
    assert np.isfinite(data.train.x).all()


@FUZZ
@given(
    n=st.integers(0, 12),
    label=st.sampled_from([0.0, 1.0, 2.0, 0.5, -1.0, np.nan, np.inf]),
    feature=st.sampled_from([0.0, np.nan, -np.inf, 1e38]),
    drop=st.integers(0, 200),
    extra=st.booleans(),
)
def test_fuzz_npz_is_refused_or_ready_to_train(
    tmp_path_factory, n, label, feature, drop, extra
):
    path = tmp_path_factory.mktemp("npz") / "d.npz"
    rng = np.random.default_rng(n)
    x = rng.normal(size=(n, 2))
    a = (np.arange(n) % 2).astype(float)
    if n:
        x[0, 1] = feature
        a[0] = label
    arrays = {"x": x, "a": a}
    if extra:
        arrays["b"] = np.zeros(max(n - 1, 0))
    np.savez(path, **arrays)
    if drop:
        raw = path.read_bytes()
        path.write_bytes(raw[: max(len(raw) - drop, 0)])
    try:
        data = load_file(path)
    except ValueError as e:
        assert str(e)
        return
    check_fit_inputs(data, RunConfig(batch_size=1, groups=1))
    assert np.isfinite(data.train.x).all()
