"""The ``ilit`` command line: report, history, config check/template, exit codes, and a light ``import ilit``."""

import json
import os
import shutil
import subprocess
import sys
from importlib.resources import files

import pytest
import yaml

import ilit
from ilit.cli import main
from ilit.report import load_run, summary_table

OLD = os.path.join(os.path.dirname(__file__), "data", "history_ilit0.1.0_format1.json")


@pytest.fixture
def workspace(tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    shutil.copy(OLD, ws / "history.json")
    return ws


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_history_prints_the_summary_table(capsys, workspace):
    code, out, err = run(capsys, "history", str(workspace))
    assert code == 0 and err == ""
    assert out == summary_table(load_run(workspace)) + "\n"
    with open(OLD) as f:
        h = json.load(f)
    lines = out.splitlines()
    assert len(lines) == 3 + len(h["trials"])  # title, header, fp32, one line per trial
    best_line = next(ln for ln in lines if ln.strip().startswith(f"{h['best']}*"))
    assert f"{h['trials'][h['best'] - 1]['accuracy']:.4f}" in best_line


@pytest.mark.parametrize("fmt, name", [("md", "report.md"), ("html", "report.html")])
def test_report_writes_beside_the_history_and_prints_the_path(capsys, workspace, fmt, name):
    if fmt == "html":
        pytest.importorskip("matplotlib", reason="the core session installs ilit-core[report]")
    code, out, _ = run(capsys, "report", str(workspace / "history.json"), "--format", fmt)
    assert code == 0 and out.strip() == str(workspace / "report" / name)
    assert os.path.getsize(out.strip()) > 1000


def test_report_output_directory(capsys, workspace, tmp_path):
    code, out, _ = run(capsys, "report", str(workspace), "-o", str(tmp_path / "elsewhere"), "--format", "md")
    assert code == 0 and out.strip() == str(tmp_path / "elsewhere" / "report.md")


def test_a_path_that_is_no_history_exits_1_with_the_reason(capsys, tmp_path):
    code, out, err = run(capsys, "report", str(tmp_path))
    assert code == 1 and out == "" and "without a history.json" in err
    code, _, err = run(capsys, "history", str(tmp_path / "missing.json"))
    assert code == 1 and "does not exist" in err


def test_config_check_accepts_a_valid_config(capsys, tmp_path):
    p = tmp_path / "ok.yaml"
    p.write_text(yaml.safe_dump({"framework": {"name": "toy"}, "tuning": {"strategy": "mse",
                                                                          "metric": {"toy_accuracy": None}}}))
    code, out, err = run(capsys, "config", "check", str(p))
    assert code == 0 and "valid" in out and "strategy mse" in out and "metric toy_accuracy" in out


@pytest.mark.parametrize("conf", [
    {"tuning": {"accuracy_criterion": {"relative": 0.01, "absolute": 0.1}}},
    {"tuning": {"strategy": "nonexistent"}},
    {"tuning": {"metric": {"topk_typo": 1}}},
    {"calibration": {"iterations": [0]}},
    {"framework": {"name": "not_installed_fw"}},
    {"tunning": {}},
])
def test_config_check_gives_the_same_config_error_as_tuner(capsys, tmp_path, conf):
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(conf))
    with pytest.raises(ilit.ConfigError) as exc:
        ilit.Tuner(str(p))
    code, out, err = run(capsys, "config", "check", str(p))
    assert code == 1 and out == ""
    assert err.strip() == f"ilit config: {exc.value}"


def test_config_check_of_a_yaml_syntax_error(capsys, tmp_path):
    p = tmp_path / "broken.yaml"
    p.write_text("tuning:\n  strategy: [basic\n")
    code, _, err = run(capsys, "config", "check", str(p))
    assert code == 1 and "not valid YAML at line" in err


def test_config_template_prints_the_annotated_template(capsys):
    code, out, _ = run(capsys, "config", "template")
    template = files("ilit").joinpath("template.yaml").read_text(encoding="utf-8")
    assert code == 0 and out == template
    cfg = ilit.load_config(yaml.safe_load(out))  # the printed template is a valid config
    assert cfg.tuning.strategy == "basic"


def test_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main([])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        main(["config"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        main(["report", "x", "--format", "pdf"])
    assert exc.value.code == 2
    capsys.readouterr()


def test_help_of_every_subcommand(capsys):
    for argv in ([], ["report"], ["history"], ["config"], ["config", "check"], ["config", "template"]):
        with pytest.raises(SystemExit) as exc:
            main([*argv, "--help"])
        assert exc.value.code == 0
        out = capsys.readouterr().out
        assert out.startswith("usage: ilit") and " ".join(["ilit", *argv]) in out


def test_python_m_ilit_and_the_console_script_entry_point():
    proc = subprocess.run([sys.executable, "-m", "ilit", "--version"], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == f"ilit {ilit.__version__}"
    from importlib.metadata import entry_points

    scripts = [ep for ep in entry_points(group="console_scripts") if ep.name == "ilit"]
    assert [ep.value for ep in scripts] == ["ilit.cli:main"]


def test_import_ilit_loads_neither_the_cli_nor_the_report_nor_matplotlib():
    code = ("import sys, ilit; bad = [m for m in sys.modules if m.split('.')[0] == 'matplotlib' or m in "
            "('ilit.cli', 'ilit.report', 'ilit.report.charts', 'ilit.progress', 'argparse')]; print(bad)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "[]"
