"""``ilit report``: HTML/Markdown reports rendered from real histories (toy adaptor runs of each strategy, a
resumed run, a run with failed trials, an older history file) are self-contained and show history.json's numbers."""

import base64
import json
import os
import re
import shutil

import numpy as np
import pytest

import ilit
import ilit_toy
from ilit.report import ReportError, load_run, pareto_front, summary_table, write_report
from ilit.report import charts as report_charts
from ilit.report.data import derived_sensitivity

pytest.importorskip("matplotlib", reason="the core session installs ilit-core[report]; charts need matplotlib")

OLD = os.path.join(os.path.dirname(__file__), "data", "history_ilit0.1.0_format1.json")


def _conf(ws, **tuning):
    c = {"framework": {"name": "toy"},
         "calibration": {"iterations": [2, 4], "algorithm": {"activation": "minmax"}},
         "quantization": {"weight": {"granularity": "per_channel", "scheme": ["sym", "asym"]},
                          "activation": {"dtype": "uint8", "scheme": "asym"}},
         "tuning": {"metric": {"toy_accuracy": None}, "accuracy_criterion": {"relative": 0.01},
                    "workspace": {"path": str(ws)}, "objective": "performance", "timeout": 600, "max_trials": 25}}
    c["tuning"].update(tuning)
    return c


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Workspaces of real runs on the toy adaptor: {name: workspace path}."""
    root = tmp_path_factory.mktemp("runs")
    model = ilit_toy.make_model(n_layers=6, fragile=(2, 4), seed=0)
    data = ilit_toy.make_dataset(model)
    out = {}
    for strategy in ("basic", "mse", "bayesian"):
        if strategy == "bayesian":
            pytest.importorskip("sklearn", reason="the bayesian strategy needs scikit-learn (ilit-core[bayesian])")
        ilit.Tuner(_conf(root / strategy, strategy=strategy)).tune(model, data, eval_dataloader=data)
        out[strategy] = root / strategy
    # resumed: 3 trials, then the same run resumed up to 25
    ilit.Tuner(_conf(root / "resumed", max_trials=3)).tune(model, data, eval_dataloader=data)
    ilit.Tuner(_conf(root / "resumed")).tune(model, data, eval_dataloader=data,
                                                           resume_file=str(root / "resumed" / "history.json"))
    out["resumed"] = root / "resumed"
    calls = []

    def flaky_eval(m):  # the 2nd and 5th quantized trials fail
        calls.append(m)
        if len(calls) in (3, 6):
            raise RuntimeError(f"injected failure {len(calls)}")
        return ilit_toy.accuracy(m, data)

    c = _conf(root / "failed")
    del c["tuning"]["metric"]
    ilit.Tuner(c).tune(model, data, eval_func=flaky_eval)
    out["failed"] = root / "failed"
    old = root / "old"
    old.mkdir()
    shutil.copy(OLD, old / "history.json")
    out["old"] = old
    return out


NAMES = ["basic", "mse", "bayesian", "resumed", "failed", "old"]


def history(ws):
    with open(os.path.join(ws, "history.json")) as f:
        return json.load(f)


def rows_of(html):
    """{trial number: (attrs, cells)} of the HTML trial table."""
    out = {}
    for m in re.finditer(r'<tr id="trial-(\d+)"([^>]*)>(.*?)</tr>', html, re.S):
        cells = re.findall(r"<td[^>]*>(.*?)</td>", m.group(3), re.S)
        out[int(m.group(1))] = (m.group(2), cells)
    return out


def test_fixture_runs_cover_what_the_report_must_show(runs):
    """The histories really contain failed trials, a returned model and several passing trials with objectives."""
    assert any(t["error"] for t in history(runs["failed"])["trials"])
    assert any(t["error"] for t in history(runs["old"])["trials"])
    assert len(history(runs["resumed"])["trials"]) > 3
    for name in NAMES:
        h = history(runs[name])
        assert h["best"] is not None and h["trials"], name


@pytest.mark.parametrize("name", NAMES)
def test_html_report_is_self_contained(runs, name, tmp_path):
    path = write_report(runs[name], str(tmp_path / "out"), "html")
    assert path == str(tmp_path / "out" / "report.html")
    html = open(path, encoding="utf-8").read()
    # nothing is loaded from anywhere: no URL, script, stylesheet link, frame or CSS url()/@import
    text = re.sub(r'src="data:image/png;base64,[A-Za-z0-9+/=]+"', "", html)
    for forbidden in ("http:", "https:", "ftp:", "<script", "<link", "<iframe", "<object", "url(", "@import", "//",
                      "src=", "href="):
        assert forbidden not in text, forbidden
    srcs = re.findall(r'src="([^"]*)"', html)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    pngs = {f: open(tmp_path / "out" / f, "rb").read() for f in os.listdir(tmp_path / "out") if f.endswith(".png")}
    embedded = [base64.b64decode(s.split(",", 1)[1]) for s in srcs]
    assert all(e.startswith(b"\x89PNG\r\n\x1a\n") for e in embedded)
    assert sorted(embedded) == sorted(pngs.values())  # the PNG files beside it are the same charts
    assert "trials.png" in pngs


@pytest.mark.parametrize("name", NAMES)
def test_html_numbers_match_history(runs, name, tmp_path):
    h = history(runs[name])
    html = open(write_report(runs[name], str(tmp_path), "html"), encoding="utf-8").read()
    rows = rows_of(html)
    assert sorted(rows) == [t["trial"] for t in h["trials"]]
    for t in h["trials"]:
        attrs, cells = rows[t["trial"]]
        acc = re.search(r'data-accuracy="([^"]*)"', attrs).group(1)
        obj = re.search(r'data-objective="([^"]*)"', attrs).group(1)
        if t["accuracy"] is None:
            assert acc == "" and cells[1] == "-"
        else:
            assert float(acc) == t["accuracy"] and cells[1] == f"{t['accuracy']:.4f}"
            assert cells[2] == f"{t['accuracy'] - h['baseline_accuracy']:+.4f}"
        if t["objective"] is None:
            assert obj == "" and cells[3] == "-"
        else:
            assert float(obj) == t["objective"] and cells[3] == f"{t['objective']:.4g} ms"
        assert ("best" in attrs) == (t["trial"] == h["best"])
        assert ("failed" in attrs) == (t["error"] is not None)
        if t["error"]:
            assert t["error"] in cells  # the message is shown
    assert f"accuracy {h['baseline_accuracy']:.4f}, performance {h['baseline_objective']:.4g} ms" in html
    assert f"trial {h['best']}: accuracy" in html
    threshold = h["baseline_accuracy"] * (1 - h["config"]["tuning"]["accuracy_criterion"]["relative"])
    assert f"accuracy &gt;= {threshold:.4f}" in html


@pytest.mark.parametrize("name", NAMES)
def test_markdown_report_has_the_same_numbers(runs, name, tmp_path):
    h = history(runs[name])
    path = write_report(runs[name], str(tmp_path), "md")
    assert path.endswith("report.md")
    md = open(path, encoding="utf-8").read()
    table = md.split("## Trial table\n", 1)[1].split("\n## ", 1)[0]
    lines = [ln for ln in table.splitlines() if re.match(r"\| \d+", ln)]
    assert len(lines) == len(h["trials"])
    for ln, t in zip(lines, h["trials"]):
        cells = [c.strip() for c in ln.strip("|").split(" | ")]
        assert cells[0].split()[0] == str(t["trial"])
        assert cells[1] == ("-" if t["accuracy"] is None else f"{t['accuracy']:.4f}")
    for img in re.findall(r"!\[[^]]*\]\(([^)]+)\)", md):  # linked charts exist beside it
        assert os.path.isfile(tmp_path / img)


def test_resumed_and_failed_trials_are_marked(runs, tmp_path):
    h = history(runs["resumed"])
    html = open(write_report(runs["resumed"], str(tmp_path), "html"), encoding="utf-8").read()
    resumed = h.get("run", {}).get("resumed_trials")
    rows = rows_of(html)
    marked = [n for n, (attrs, _) in rows.items() if "resumed" in attrs]
    # a history recording which trials were replayed has them marked; an older one has nothing to mark
    assert marked == (resumed or [])
    failed = rows_of(open(write_report(runs["failed"], str(tmp_path / "f"), "html"), encoding="utf-8").read())
    assert [n for n, (a, _) in failed.items() if "failed" in a] == [
        t["trial"] for t in history(runs["failed"])["trials"] if t["error"]]


def test_summary_table_matches_tuner_summary(runs):
    """`ilit history` prints, from the file, the table the tuner printed at the end of the run."""
    model = ilit_toy.make_model(n_layers=6, fragile=(2, 4), seed=0)
    data = ilit_toy.make_dataset(model)
    tuner = ilit.Tuner(_conf(runs["basic"].parent / "again"))
    tuner.tune(model, data, eval_dataloader=data)
    assert summary_table(load_run(tuner.history_path)) == tuner.summary()


def test_op_sensitivity_from_strategy_insights_is_rendered(runs, tmp_path):
    h = history(runs["old"])
    h["strategy_insights"] = {"op_sensitivity": {"dense4": 0.12, "dense2": 0.30, "dense0": -0.01},
                              "op_error": {"dense1": 0.5, "dense2": 2.0}, "phase": {"1": "model-wise", "4": "probe"},
                              "future_key": [1, 2]}
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "history.json").write_text(json.dumps(h))
    run = load_run(ws)
    assert list(run.op_data) == ["op_sensitivity", "op_error"]
    assert list(run.op_data["op_sensitivity"].items()) == [("dense2", 0.30), ("dense4", 0.12), ("dense0", -0.01)]
    html = open(write_report(ws, str(tmp_path / "out"), "html"), encoding="utf-8").read()
    assert os.path.isfile(tmp_path / "out" / "op_sensitivity.png") and os.path.isfile(tmp_path / "out" / "op_error.png")
    sens = html.split("fallback recovered</h2>", 1)[1].split("</table>", 1)[0]
    assert re.findall(r"<td>(dense\d)</td><td class=\"num\">([^<]*)</td>", sens) == [
        ("dense2", "0.3"), ("dense4", "0.12"), ("dense0", "-0.01")]
    rows = rows_of(html)
    assert "model-wise" in rows[1][1] and "probe" in rows[4][1] and "" in rows[2][1]
    assert "future_key" in html  # unknown insights are shown as data, not dropped


def test_derived_sensitivity_is_single_op_fallback_minus_full_config():
    """By hand: op b's single fallback recovers 0.3 over the fully quantized config it differs from in b only."""
    q = {"weight": {"dtype": "int8"}, "activation": {"dtype": "uint8"}}
    fp = {"weight": {"dtype": "fp32"}, "activation": {"dtype": "fp32"}}

    def t(acc, **ops):
        return {"tune_cfg": {"ops": {n: dict(ops.get(n, q), op_type="X") for n in "abc"},
                             "calibration": {"iterations": 2}}, "accuracy": acc}

    trials = [t(0.5), t(0.8, b=fp), t(0.45, c=fp), t(0.9, a=fp, b=fp), t(None, a=fp)]
    assert derived_sensitivity(trials) == pytest.approx({"b": 0.3, "c": -0.05})


def test_pareto_front_matches_brute_force():
    rng = np.random.default_rng(0)
    for trial in range(50):
        n = int(rng.integers(1, 25))
        pts = [(i, float(rng.integers(0, 8)), float(rng.integers(0, 8))) for i in range(n)]
        for hi_acc in (True, False):
            for hi_obj in (True, False):
                def better_eq(p, q, hi_acc=hi_acc, hi_obj=hi_obj):  # p at least as good as q in both
                    return ((p[1] >= q[1]) if hi_obj else (p[1] <= q[1])) and \
                           ((p[2] >= q[2]) if hi_acc else (p[2] <= q[2]))
                front = set(pareto_front(pts, hi_acc, hi_obj))
                for p in pts:
                    dominated = any(better_eq(q, p) and (q[1], q[2]) != (p[1], p[2]) for q in pts)
                    duplicate_on_front = any((q[1], q[2]) == (p[1], p[2]) and q[0] in front and q[0] != p[0]
                                             for q in pts)
                    assert (p[0] in front) == (not dominated and not duplicate_on_front), (pts, hi_acc, hi_obj)


def test_a_newer_history_with_unknown_and_missing_keys_still_renders(runs, tmp_path):
    h = history(runs["old"])
    h["format"] = 99
    h["something_new"] = {"x": 1}
    del h["finished"], h["metric_higher_is_better"]
    for t in h["trials"]:
        t["new_field"] = 1
        del t["objective_s"]
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "history.json").write_text(json.dumps(h))
    html = open(write_report(ws, None, "html"), encoding="utf-8").read()
    assert len(rows_of(html)) == len(h["trials"])
    assert os.path.isfile(ws / "report" / "report.html")


@pytest.mark.parametrize("content, message", [
    (b"\x80\x04K\x01.", "binary file"),
    (b"{not json", "not a valid history.json"),
    (b'{"a": 1}', "not an ilit history"),
])
def test_a_file_that_is_no_history_is_refused(tmp_path, content, message):
    p = tmp_path / "history.json"
    p.write_bytes(content)
    with pytest.raises(ReportError, match=message):
        write_report(p)


def test_a_directory_without_history_is_refused(tmp_path):
    with pytest.raises(ReportError, match="without a history.json"):
        write_report(tmp_path)
    with pytest.raises(ReportError, match="does not exist"):
        write_report(tmp_path / "nope")


def test_without_matplotlib_a_markdown_report_is_written_and_the_pip_command_given(runs, tmp_path, monkeypatch,
                                                                                    caplog):
    import ilit.report as report

    monkeypatch.setattr(report, "plotting_available", lambda: False)
    with caplog.at_level("WARNING", logger="ilit.report"):
        path = write_report(runs["basic"], str(tmp_path))
    assert path.endswith("report.md") and not [f for f in os.listdir(tmp_path) if f.endswith(".png")]
    assert "pip install 'ilit-core[report]'" in caplog.text
    with pytest.raises(ImportError, match=r"pip install 'ilit-core\[report\]'"):
        write_report(runs["basic"], str(tmp_path), "html")


def test_charts_do_not_touch_pyplot_state(runs):
    """Drawing uses matplotlib's object API: an application's pyplot backend and figures are left alone."""
    import matplotlib

    backend = matplotlib.get_backend()
    report_charts.draw_charts(load_run(runs["basic"]))
    assert matplotlib.get_backend() == backend
    import sys
    if "matplotlib.pyplot" in sys.modules:
        assert sys.modules["matplotlib.pyplot"].get_fignums() == []


def test_unknown_format_is_refused(runs):
    with pytest.raises(ValueError, match="not one of auto, html, md"):
        write_report(runs["basic"], fmt="pdf")


def test_run_facts_are_recorded_and_shown(runs, tmp_path):
    """history.json records the facts the report shows (framework, versions, phase times, stop reason, resumed
    trials), and the report shows them as recorded."""
    import numpy

    h = history(runs["basic"])
    run = h["run"]
    assert run["framework"] == "toy" and run["versions"]["ilit"] == ilit.__version__
    assert run["versions"]["numpy"] == numpy.__version__
    assert 0 < run["baseline_s"] <= run["total_s"]
    assert run["total_s"] >= max(t["elapsed_s"] for t in h["trials"])
    assert "resumed_trials" not in run
    html = open(write_report(runs["basic"], str(tmp_path), "html"), encoding="utf-8").read()
    from html import escape

    assert f"<td>stop reason</td><td>{escape(h['stop_reason'])}</td>" in html
    assert f"<td>FP32 baseline (evaluate + objective)</td><td class=\"num\">{run['baseline_s']:.2f}</td>" in html
    assert f"<td>whole run</td><td class=\"num\">{run['total_s']:.2f}</td>" in html
    quantize = sum(t["quantize_s"] for t in h["trials"])
    assert f"<td>quantize (incl. calibration)</td><td class=\"num\">{quantize:.2f}</td>" in html
    assert f"ilit {ilit.__version__}" in html and f"numpy {numpy.__version__}" in html
    # the resumed run: its first session ran trials 1-3, which the second replayed from the history
    resumed = history(runs["resumed"])
    assert resumed["run"]["resumed_trials"] == [1, 2, 3]
    assert len(resumed["trials"]) > 3


def test_older_history_says_what_it_did_not_record(runs, tmp_path):
    html = open(write_report(runs["old"], str(tmp_path), "html"), encoding="utf-8").read()
    assert "<td>stop reason</td><td>not recorded by this ilit version</td>" in html
    assert "<td>framework</td><td>toy</td>" in html  # from the config's framework.name
