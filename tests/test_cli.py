"""The `headbits` command line end to end on generated traffic: generate, train, score, eval, demo.

Verbs run in this process through `headbits.cli.main` (as the console script does), except the
demo, which runs exactly as the README's first command runs it.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from headbits.cli import VERBS, main
from headbits.common.avro import read_heads_file

CAPTURES = (
    "zeek-traces/ssh/ssh_kex_curve25519.pcap",
    "zeek-traces/http/basic-auth-with-colon.pcap",
)


@pytest.fixture(scope="module")
def heads_file(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("generated") / "heads.avro"
    code = main(["generate", "--out", str(out), "--sessions-per-protocol", "14",
                 "--anomalies", "4", "--seed", "5", "--quiet"])
    assert code == 0
    return out


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory, heads_file) -> Path:
    models = tmp_path_factory.mktemp("models")
    code = main(["train", "--heads", str(heads_file), "--models-dir", str(models), "--n", "16",
                 "--min-class-rows", "5", "--max-epochs", "15", "--target-fpr", "0.05"])
    assert code == 0
    return models


def test_generate_writes_labelled_heads_of_every_protocol(heads_file):
    heads = list(read_heads_file(heads_file))
    services = {head.services[0] for head in heads if head.services}
    assert {"ssl", "http", "dns", "ssh", "smtp", "ftp"} <= services
    assert sum(1 for head in heads if not head.services) == 4  # the anomalies


def test_train_exports_a_servable_version_with_its_metadata(models_dir):
    version = models_dir / "headbits" / "1"
    assert (version / "saved_model.pb").is_file()
    metadata = json.loads((version / "assets.extra" / "headbits.json").read_text())
    assert metadata["n"] == 16
    assert {"tls", "http", "ssh", "dns"} <= set(metadata["classes"])
    assert metadata["training"]["train"]["rows"] > 0
    assert metadata["training"]["validation"]["rows"] > 0


def _capture_paths(shared_pcaps: Path) -> list[Path]:
    paths = [shared_pcaps / name for name in CAPTURES]
    missing = [str(p) for p in paths if not p.is_file()]
    assert not missing, f"corpus files moved: {missing}"
    return paths


def test_score_ranks_every_connection_of_the_captures(models_dir, shared_pcaps, capsys):
    from headbits.collector.pcap import read_capture

    paths = _capture_paths(shared_pcaps)
    expected_uids = {head.uid for path in paths for head in read_capture(path).heads}
    assert main(["score", *map(str, paths), "--model", str(models_dir), "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {row["uid"] for row in rows} == expected_uids
    # Most novel first (calibrated tail), ties by error relative to the row's threshold.
    ranks = [(row["tail_probability"], -row["score"] / row["threshold"]) for row in rows]
    assert ranks == sorted(ranks)
    predicted = {row["predicted_protocol"] for row in rows}
    assert {"ssh", "http"} <= predicted, "the model trained on generated traffic misses real ones"

    assert main(["score", *map(str, paths), "--model", str(models_dir), "--top", "1"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith(f"model headbits v1 (N=16): {len(expected_uids)} connections")
    assert len(table) == 2 + 1 + 1  # summary, header, rule, the top row
    assert table[3].split()[0] == rows[0]["uid"]


def test_score_without_a_model_says_how_to_get_one(tmp_path, shared_pcaps, capsys):
    paths = _capture_paths(shared_pcaps)
    assert main(["score", str(paths[0]), "--model", str(tmp_path)]) == 1
    assert "headbits train" in capsys.readouterr().err


def test_eval_writes_tables_plots_and_json(heads_file, shared_pcaps, tmp_path, capsys):
    captures = [shared_pcaps / name for name in _corpus_files(shared_pcaps, ("tls", "http"), 6)]
    out = tmp_path / "report"
    code = main(["eval", "--captures", *map(str, captures), "--heads", str(heads_file),
                 "--labels", str(shared_pcaps / "LABELS.tsv"),
                 "--n-values", "8", "--folds", "2", "--max-epochs", "5", "--bootstrap", "10",
                 "--min-class-rows", "5", "--out-dir", str(out), "--leave-protocol-out", "1",
                 "--json"])
    assert code == 0
    results = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    rates = results["by_n"]["8"]["alert_rates"]
    assert [row["target"] for row in rates["targets"]] == [0.001, 0.01]
    assert rates["normal_rows"] > 0
    for row in rates["targets"]:
        assert 0.0 <= row["measured"] <= 1.0 and row["low"] <= row["high"]
    (left_out,) = results["leave_protocol_out"]["protocols"]
    assert left_out["protocol"] in ("tls", "http") and left_out["novel_rows"] > 0
    assert 0.0 <= left_out["recall_at_0.01"] <= 1.0
    assert (out / "rates_n8.png").read_bytes().startswith(b"\x89PNG")
    assert "Leave-protocol-out" in (out / "report.md").read_text()
    pairs = {pair["protocol"]: pair for pair in results["by_n"]["8"]["pairs"]}
    assert "http" in pairs
    assert 0.0 <= pairs["http"]["auroc"] <= 1.0
    assert pairs["http"]["auroc_low"] <= pairs["http"]["auroc_high"]
    classifier = results["by_n"]["8"]["classifier"]
    assert 0.0 <= classifier["macro_f1"] <= 1.0
    for name in ("errors_n8.png", "roc_n8.png", "confusion_n8.png"):
        assert (out / name).read_bytes().startswith(b"\x89PNG")
    assert "| tls vs |" in (out / "report.md").read_text()


def test_eval_trains_on_one_corpus_and_tests_on_another(heads_file, shared_pcaps, tmp_path,
                                                        capsys):
    import csv

    names = _corpus_files(shared_pcaps, ("tls", "http"), 8)
    test_names = set(names[::4])
    corpus = tmp_path / "other-corpus"
    for name in test_names:
        (corpus / name).parent.mkdir(parents=True, exist_ok=True)
        (corpus / name).symlink_to(shared_pcaps / name)
    for table in ("MANIFEST.tsv", "LABELS.tsv"):
        with (shared_pcaps / table).open(newline="") as source, \
                (corpus / table).open("w", newline="") as target:
            rows = csv.DictReader(source, delimiter="\t")
            writer = csv.DictWriter(target, rows.fieldnames, delimiter="\t")
            writer.writeheader()
            writer.writerows(row for row in rows if row["file"] in test_names)
    train = [shared_pcaps / name for name in names if name not in test_names]
    code = main(["eval", "--captures", *map(str, train), "--heads", str(heads_file),
                 "--labels", str(shared_pcaps / "LABELS.tsv"), "--test-corpus", str(corpus),
                 "--n-values", "8", "--folds", "2", "--max-epochs", "5", "--bootstrap", "10",
                 "--min-class-rows", "5", "--out-dir", str(tmp_path / "report"), "--json"])
    assert code == 0
    results = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert results["test_corpus_rows"] > 0
    classifier = results["by_n"]["8"]["classifier"]
    # Only the other corpus's flows are graded: the held-out rows are exactly its rows.
    assert classifier["rows"] <= results["test_corpus_rows"]
    assert results["by_n"]["8"]["alert_rates"]["normal_rows"] <= results["test_corpus_rows"]


def _corpus_files(corpus: Path, protocols: tuple[str, ...], per_protocol: int) -> list[str]:
    import csv

    with (corpus / "MANIFEST.tsv").open(newline="") as manifest:
        rows = list(csv.DictReader(manifest, delimiter="\t"))
    return [row["file"] for protocol in protocols for row in [
        r for r in rows if r["primary"] == protocol and r["file"].startswith("ndpi/")
    ][:per_protocol]]


def test_eval_refuses_too_few_captures(tmp_path, capsys):
    assert main(["eval", "--captures", str(tmp_path), "--out-dir", str(tmp_path)]) == 2
    assert "port guesses never grade" in capsys.readouterr().err


@pytest.mark.kafka
def test_demo_runs_the_whole_pipeline_and_reports(tmp_path):
    """The README's first command, smaller: real traffic, a real model, a real Kafka."""
    out = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, "-m", "headbits.cli", "demo", "--out-dir", str(out), "--sessions", "25",
         "--live-sessions", "5", "--anomalies", "4", "--kafka", "yes"],
        capture_output=True, text=True, timeout=600, check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "replaying through Kafka" in result.stdout
    assert "connections scored by the scorer service" in result.stdout
    report = (out / "report.md").read_text()
    caught = re.search(r"anomalous sessions: 4, alerted: (\d+)", report)
    assert caught, report
    # SSH on 443, HTTP on 53, TLS on 22 and random bytes on 80 are blatant: nearly all alert.
    assert int(caught.group(1)) >= 3, report
    assert (out / "errors.png").read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_every_verb_explains_itself(verb, capsys):
    """`--help` on every verb exits 0 and names the environment variable of each setting."""
    with pytest.raises(SystemExit) as exit_info:
        main([verb, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith(f"usage: headbits {verb}")
    if "settings (" in text:  # verbs with a settings class show each option's variable
        assert "env: HEADBITS_CONFIG" in text
        assert text.count("env: HEADBITS_") >= 2


@pytest.mark.parametrize("verb", ["train", "eval", "trainer"])
def test_help_of_tensorflow_verbs_prints_no_tensorflow_noise(verb):
    """A fresh process (TensorFlow not imported yet): --help says only the help."""
    result = subprocess.run([sys.executable, "-m", "headbits.cli", verb, "--help"],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0 and result.stdout.startswith(f"usage: headbits {verb}")
    assert result.stderr == "", result.stderr


def test_quiet_import_still_shows_what_is_not_tensorflow_noise(tmp_path, monkeypatch, capfd):
    from headbits.cli import import_quietly

    (tmp_path / "noisy_module.py").write_text(
        "import os\n"
        "os.write(2, b'I0000 00:00:1.5 1 port.cc:153] oneDNN custom operations are on.\\n')\n"
        "os.write(2, b'a real warning\\n')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "tensorflow", raising=False)
    import_quietly("noisy_module")
    err = capfd.readouterr().err
    assert "a real warning" in err and "oneDNN" not in err


def test_unknown_verb_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["no-such-verb"])
    assert exit_info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
