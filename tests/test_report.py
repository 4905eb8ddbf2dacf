"""Reports, figures, TensorBoard logs and the progress bar."""

import glob
import io
import json
import math
import os
import re
import shutil
import struct
import subprocess

import numpy as np
import pytest
from PIL import Image

from tgjax import cli
from tgjax.report import RUN_FILES, fmt, summarize_records, write_report
from tgjax.runio import read_jsonl
from tgjax.tblog import assignment_entropy

TASKS = "Class1,Class2,Class3,Class4,Class5"
TINY = ["--epochs", "2", "--finetune-epochs", "1", "--hidden", "8", "--quiet"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """One tiny yeast run with baselines and TensorBoard logs, shared by the tests."""
    out = tmp_path_factory.mktemp("report") / "run"
    argv = ["train", "--tasks", TASKS, "--groups", "3", "--log-every", "3"]
    argv += ["--out", str(out), "--with-baselines", "--tensorboard", *TINY]
    assert cli.main(argv) == 0
    return out


@pytest.fixture(scope="module")
def report(run_dir):
    return write_report(run_dir)


# TensorBoard.


def _masked_crc(data: bytes) -> int:
    from tensorboardX.crc32c import crc32c

    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def read_events(path):
    """Parses a TensorBoard event file record by record, checking every CRC."""
    from tensorboardX.proto import event_pb2

    with open(path, "rb") as f:
        data = f.read()
    events, pos = [], 0
    while pos < len(data):
        header = data[pos : pos + 8]
        (length,) = struct.unpack("<Q", header)
        (crc,) = struct.unpack("<I", data[pos + 8 : pos + 12])
        assert crc == _masked_crc(header), f"bad length CRC at byte {pos}"
        body = data[pos + 12 : pos + 12 + length]
        (crc,) = struct.unpack("<I", data[pos + 12 + length : pos + 16 + length])
        assert crc == _masked_crc(body), f"bad data CRC at byte {pos}"
        events.append(event_pb2.Event.FromString(body))
        pos += 16 + length
    return events


def _scalars(events):
    out = {}
    for ev in events:
        for v in ev.summary.value:
            if v.HasField("simple_value"):
                out.setdefault(v.tag, {})[ev.step] = v.simple_value
    return out


def test_tensorboard_event_files_parse_back_with_the_expected_tags(run_dir):
    for method in ("dmtg", "mtl", "stl"):
        assert glob.glob(str(run_dir / "tensorboard" / method / "events.out.*"))
    (path,) = glob.glob(str(run_dir / "tensorboard" / "dmtg" / "events.out.*"))
    events = read_events(path)
    scalars = _scalars(events)
    tasks = TASKS.split(",")
    expected = {
        "search/loss",
        "search/tau",
        "search/learning_rate",
        "search/assignment_learning_rate",
        "assignment/entropy",
        "search/train_loss",
        "search/val_total_loss",
        "search/non_empty_groups",
        "finetune/train_loss",
        "finetune/val_total_loss",
        "test/total_loss",
        "test/total_error_percent",
        *[f"task_loss/{t}" for t in tasks],
        *[f"group_loss/group_{k}" for k in range(3)],
    }
    assert expected <= set(scalars)

    # The scalars are the logged values, step for step.
    logged = [m for m in read_jsonl(run_dir / "metrics.jsonl") if "loss_matrix" in m]
    assert sorted(scalars["search/loss"]) == [m["step"] for m in logged]
    for m in logged:
        probs, losses = np.array(m["probabilities"]), np.array(m["loss_matrix"])
        sel = probs.argmax(1)
        for i, t in enumerate(tasks):
            assert scalars[f"task_loss/{t}"][m["step"]] == pytest.approx(
                losses[i, sel[i]], rel=1e-6
            )
        for k in range(3):
            assert scalars[f"group_loss/group_{k}"][m["step"]] == pytest.approx(
                float((probs[:, k] * losses[:, k]).sum()), rel=1e-5
            )
        assert scalars["assignment/entropy"][m["step"]] == pytest.approx(
            assignment_entropy(probs), rel=1e-6
        )
        assert scalars["search/tau"][m["step"]] == pytest.approx(2.5)
    results = json.loads((run_dir / "results.json").read_text())
    (total,) = scalars["test/total_loss"].values()
    assert total == pytest.approx(results["test"]["total_loss"], rel=1e-6)

    # One assignment image per search epoch, a readable PNG.
    images = [
        v.image
        for ev in events
        for v in ev.summary.value
        if v.tag == "assignment/probabilities"
    ]
    assert len(images) == 2
    with Image.open(io.BytesIO(images[-1].encoded_image_string)) as img:
        assert img.format == "PNG"
        assert img.size == (images[-1].width, images[-1].height)
        assert img.size[0] > 200 and img.size[1] > 100
    texts = [v.tag for ev in events for v in ev.summary.value if "groups" in v.tag]
    assert texts


def test_assignment_entropy_matches_closed_forms():
    assert assignment_entropy(np.eye(3)) == 0.0
    assert assignment_entropy(np.full((4, 5), 0.2)) == pytest.approx(math.log(5))
    assert assignment_entropy(np.array([[0.5, 0.5, 0.0]])) == pytest.approx(math.log(2))


# The run report.


def test_report_writes_every_file_with_valid_images(run_dir, report):
    assert report.kind == "run"
    names = {os.path.basename(p) for p in report.figures}
    assert names == {
        "groups.png",
        "assignment.png",
        "assignment.gif",
        "task_losses.png",
        "training.png",
    }
    for path in report.figures:
        with Image.open(path) as img:
            assert img.format == ("GIF" if path.endswith(".gif") else "PNG")
            assert 300 <= img.size[0] <= 2000 and 150 <= img.size[1] <= 1500
    logged = [m for m in read_jsonl(run_dir / "metrics.jsonl") if "loss_matrix" in m]
    with Image.open(run_dir / "figures" / "assignment.gif") as gif:
        assert gif.n_frames == min(40, len(logged)) > 1
        size = gif.size
        for frame in range(gif.n_frames):
            gif.seek(frame)
            assert gif.size == size
    leftovers = [
        n for n in os.listdir(run_dir) + os.listdir(run_dir / "figures") if "tmp" in n
    ]
    assert not leftovers


def test_report_markdown_holds_groups_results_and_settings(run_dir, report):
    with open(report.markdown) as f:
        md = f.read()
    results = json.loads((run_dir / "results.json").read_text())
    config = json.loads((run_dir / "config.json").read_text())
    # Every figure is linked and exists.
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert len(links) == 5
    for link in links:
        assert (run_dir / link).is_file()
    # The test table: the method and both baselines with their totals.
    for label, res in [
        ("DMTG", results),
        ("MTL (K = 1)", results["baselines"]["mtl"]),
        ("STL (K = N)", results["baselines"]["stl"]),
    ]:
        test = res["test"]
        row = (
            f"| {label} | {len(res['groups'])} | "
            f"{fmt(test['total_error_percent'])} | {fmt(test['total_loss'])} |"
        )
        assert row in md
    for task, v in results["test"]["tasks"].items():
        assert f"| {task} | {v['metric']} | {fmt(v['value'])} |" in md
    for group in results["groups"]:
        assert ", ".join(group) in md
    assert f"| epochs | {config['run']['epochs']} |" in md
    assert f"| tau | {config['run']['tau']} |" in md

    with open(report.html) as f:
        page = f.read()
    assert page.startswith("<!DOCTYPE html>")
    assert page.count("<img ") == 5
    separators = [ln for ln in md.splitlines() if ln.startswith("|---|")]
    assert page.count("<table>") == len(separators) == 4


def _copy_run(run_dir, dest):
    dest.mkdir()
    for name in RUN_FILES:
        shutil.copy(run_dir / name, dest / name)
    return dest


@pytest.mark.parametrize("missing", RUN_FILES)
def test_report_names_the_missing_file(run_dir, tmp_path, capsys, missing):
    folder = _copy_run(run_dir, tmp_path / "run")
    (folder / missing).unlink()
    assert cli.main(["report", str(folder)]) == 2
    err = capsys.readouterr().err
    assert f"{missing} is missing" in err
    assert not (folder / "report.md").exists()


def test_report_names_a_broken_file(run_dir, tmp_path, capsys):
    folder = _copy_run(run_dir, tmp_path / "run")
    text = (folder / "groups.json").read_text()
    (folder / "groups.json").write_text(text[: len(text) // 2])
    assert cli.main(["report", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "groups.json is not valid JSON" in err

    assert cli.main(["report", str(tmp_path / "nowhere")]) == 2
    assert "is not a folder" in capsys.readouterr().err


def test_report_writes_to_another_folder(run_dir, tmp_path):
    folder = _copy_run(run_dir, tmp_path / "run")
    out = tmp_path / "elsewhere"
    rep = write_report(folder, out)
    assert os.path.dirname(rep.markdown) == str(out)
    assert (out / "report.html").is_file() and (
        out / "figures" / "groups.png"
    ).is_file()
    assert not (folder / "report.md").exists()


# The comparison report.

COMPARE_RECORDS = [
    {
        "method": method,
        "seed": seed,
        "groups": [["a", "b"], ["c"]] if method != "mtl" else [["a", "b", "c"]],
        "val_total": base + 0.1 * seed,
        "test_total": base + 0.2 + 0.1 * seed,
        "test_tasks": {"a": 10.0 + seed, "b": 20.0, "c": 30.0},
        "steps": steps,
        "wall_seconds": wall * (1 + 0.1 * seed),
        "oracle_rank": seed + 1,
        "oracle_percentile": 90.0 + seed,
        "in_noise_band": seed < 2,
    }
    for method, base, steps, wall in [
        ("dmtg", 3.0, 300, 12.0),
        ("mtl", 3.4, 300, 4.0),
        ("stl", 3.1, 300, 9.0),
    ]
    for seed in range(3)
]


@pytest.fixture
def compare_dir(tmp_path):
    folder = tmp_path / "compare"
    folder.mkdir()
    (folder / "results.json").write_text(json.dumps({"records": COMPARE_RECORDS}))
    (folder / "oracle.json").write_text(json.dumps({"best": {"groups": [["a", "b"]]}}))
    (folder / "results.md").write_text("| method |\n|---|\n| dmtg |\n")
    return folder


def test_summarize_records_gives_mean_and_std_over_seeds():
    rows = {r["method"]: r for r in summarize_records(COMPARE_RECORDS)}
    assert list(rows) == ["dmtg", "mtl", "stl"]
    d = rows["dmtg"]
    assert d["seeds"] == 3
    assert d["val_total_mean"] == pytest.approx(3.1)
    assert d["val_total_std"] == pytest.approx(0.1)  # sample std of 3.0, 3.1, 3.2
    assert d["wall_seconds_mean"] == pytest.approx(12.0 * 1.1)
    assert d["steps_std"] == 0.0
    assert d["in_noise_band"] == pytest.approx(2 / 3)
    one = summarize_records(COMPARE_RECORDS[:1])[0]
    assert one["test_total_std"] == 0.0 and one["seeds"] == 1


def test_report_on_a_compare_folder(compare_dir, capsys):
    assert cli.main(["report", str(compare_dir)]) == 0
    assert "cost_quality.png" in capsys.readouterr().out
    with Image.open(compare_dir / "figures" / "cost_quality.png") as img:
        assert img.format == "PNG"
        assert img.size[0] > 600 and img.size[1] > 500  # two rows: wall time, steps
    md = (compare_dir / "report.md").read_text()
    assert (
        "| dmtg | 3 | 3.100 ± 0.1000 | 3.300 ± 0.1000 | 13.20 ± 1.200 | "
        "300.00 ± 0.000 | 2.000 ± 1.000 | 91.00 ± 1.000 | 67% of seeds |"
    ) in md
    assert "| mtl | 0 | 3.400 | 3.600 | 4.000 | 300 | {a, b, c} | 10.00 | 20.00" in md
    assert "Best partition of the exhaustive search: {a, b}" in md
    assert "results.md, oracle.json" in md
    page = (compare_dir / "report.html").read_text()
    assert 'src="figures/cost_quality.png"' in page


def test_compare_report_without_costs_is_an_error(tmp_path, capsys):
    records = [
        {k: v for k, v in r.items() if k not in ("steps", "wall_seconds")}
        for r in COMPARE_RECORDS
    ]
    (tmp_path / "results.json").write_text(json.dumps({"records": records}))
    assert cli.main(["report", str(tmp_path)]) == 2
    assert "no record has 'wall_seconds' or 'steps'" in capsys.readouterr().err


# The HTML in a real browser.

BROWSER_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--virtual-time-budget=10000",
]

# Injected into a copy of the page: records load errors (images included) and,
# once the page has loaded, writes each image's natural width into the DOM.
PROBE = """<script>
window.__errors = [];
window.addEventListener("error", function (e) {
  window.__errors.push(String(e.message || (e.target && e.target.src) || e));
}, true);
window.addEventListener("load", function () {
  var imgs = Array.from(document.images).map(function (i) {
    return {src: i.getAttribute("src"), complete: i.complete, width: i.naturalWidth};
  });
  var pre = document.createElement("pre");
  pre.id = "probe";
  pre.textContent = JSON.stringify({images: imgs, errors: window.__errors});
  document.body.appendChild(pre);
});
</script>"""


def _chromium():
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    if os.environ.get("CI"):
        pytest.fail("chromium is not installed; .ci/run installs it with apt-get")
    pytest.skip("chromium is not installed (apt-get install chromium)")


def _load_in_browser(browser, page, tmp_path):
    html = page.read_text().replace("<head>", "<head>\n" + PROBE, 1)
    probe_page = page.parent / ".probe.html"
    probe_page.write_text(html)
    try:
        proc = subprocess.run(
            [
                browser,
                *BROWSER_FLAGS,
                f"--user-data-dir={tmp_path / 'profile'}",
                "--dump-dom",
                probe_page.as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        probe_page.unlink()
    assert proc.returncode == 0, proc.stderr[-2000:]
    found = re.search(r'<pre id="probe">(.*?)</pre>', proc.stdout, re.S)
    assert found, proc.stdout[-2000:]
    return json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))


def test_report_html_loads_in_headless_chromium(run_dir, report, tmp_path):
    browser = _chromium()
    state = _load_in_browser(browser, run_dir / "report.html", tmp_path)
    assert state["errors"] == []
    assert len(state["images"]) == 5
    for img in state["images"]:
        assert img["complete"] and img["width"] > 100, img

    # The probe does see a broken image: the check can fail.
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "report.html").write_text(
        (run_dir / "report.html").read_text().replace("figures/groups.png", "no.png")
    )
    shutil.copytree(run_dir / "figures", broken / "figures")
    state = _load_in_browser(browser, broken / "report.html", tmp_path)
    widths = {img["src"]: img["width"] for img in state["images"]}
    assert widths["no.png"] == 0 and state["errors"]


# The progress bar.


def test_progress_bar_shows_eta_loss_tau_and_groups(capsys):
    log = []

    class Log:
        def write(self, record):
            log.append(record)

    bar = cli._Progress(Log(), quiet=False, label="dmtg")
    bar("start", {"phase": "search", "epochs": 2, "steps_per_epoch": 5})
    epoch = {
        "phase": "search",
        "epoch": 0,
        "train_loss": 1.23456,
        "tau": 2.0,
        "val_total_loss": 1.5,
        "non_empty_groups": 3,
    }
    bar("epoch", epoch)
    shown = capsys.readouterr().err.split("\r")[-1]
    assert "dmtg search" in shown and "5/10" in shown
    assert re.search(r"\d\d:\d\d<\d\d:\d\d", shown)  # elapsed<remaining
    assert "loss=1.235" in shown and "tau=2.00" in shown and "groups=3" in shown
    bar("done", {})
    capsys.readouterr()
    assert log == [{"event": "epoch", **epoch}]

    quiet = cli._Progress(Log(), quiet=True, label="dmtg")
    quiet("start", {"phase": "search", "epochs": 2, "steps_per_epoch": 5})
    quiet("epoch", epoch)
    quiet("done", {})
    assert capsys.readouterr().err == ""
