"""The SIEM forms of an alert (ECS, OCSF Detection Finding, JSON, table), Community ID, evidence
and severity: golden files per form, each JSON form validated against a schema of the published
field definitions (tests/data/siem, see each schema's description for its source)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import jsonschema
import pytest

from headbits import __version__
from headbits.common.alert_forms import FORMS, ecs, ocsf, plain, table
from headbits.scorer.community_id import community_id
from headbits.scorer.emit import enrich
from headbits.scorer.evidence import (
    DEFAULT_SEVERITY_TABLE,
    evidence,
    parse_severity_table,
    severity,
)

DATA = Path(__file__).parent / "data"
GOLDEN = DATA / "alert_forms"
TABLE = parse_severity_table(DEFAULT_SEVERITY_TABLE)


def ssh_on_443() -> dict:
    """An alert as the scorer writes it (all Alert fields), before enrichment."""
    return {
        "uid": "CHhAvVGS1DHFjwGM9", "ts": 1764633600.25, "sensor": "dmz-1",
        "orig_h": "10.1.2.3", "orig_p": 51234, "resp_h": "192.0.2.10", "resp_p": 443,
        "transport": "tcp", "reason": "protocol-mismatch", "direction": "resp",
        "score": 0.125, "threshold": 0.25, "orig_error": 0.0625, "resp_error": 0.125,
        "model_name": "headbits", "model_version": 7, "model_n": 16,
        "predicted_protocol": "ssh", "predicted_probability": 0.96875,
        "expected_protocol": "tls", "expected_source": "port",
        "orig_head": b"SSH-2.0-OpenSSH_9", "resp_head": b"SSH-2.0-OpenSSH_8\r\n",
        "novelty_score": 0.5, "tail_probability": 0.0625, "midstream": False,
        "deviating_offsets": [0, 1, 2], "learning": False, "count": 3,
        "first_seen": 1764633600.25, "last_seen": 1764633660.5,
        "uids": ["CHhAvVGS1DHFjwGM9", "C2", "C3"],
    }


def binary_on_80() -> dict:
    return {**ssh_on_443(), "uid": "Cbin", "resp_p": 80, "reason": "novel-protocol",
            "direction": "orig", "predicted_protocol": "unknown", "expected_protocol": "http",
            "orig_head": bytes.fromhex("0000002c0a0b0c0d0e0f"), "resp_head": b""}


# Community ID v1: the spec's published vectors (corelight/community-id-spec baseline; the same
# values Zeek's community_id_v1 btests and the spec's reference implementations check).
@pytest.mark.parametrize(("transport", "seed", "expected"), [
    ("tcp", 0, "1:wCb3OG7yAFWelaUydu0D+125CLM="),
    ("udp", 0, "1:0Mu9InQx6z4ZiCZM/7HXi2WMhOg="),
    ("tcp", 1, "1:HhA1B+6CoLbiKPEs5nhNYN4XWfk="),
    ("udp", 1, "1:OShq+iKDAMVouh/4bMxB9Sz4amw="),
])
def test_community_id_matches_the_published_vectors(transport, seed, expected):
    assert community_id("1.2.3.4", 1122, "5.6.7.8", 3344, transport, seed) == expected
    assert community_id("5.6.7.8", 3344, "1.2.3.4", 1122, transport, seed) == expected


def test_community_id_logs_nothing_at_the_services_log_level(caplog):
    """The package traces each hash at INFO; at a service's level that would be seven log lines
    per alert."""
    with caplog.at_level(logging.INFO):
        assert community_id("10.0.0.1", 5844, "10.0.0.2", 8443, "tcp").startswith("1:")
    assert [r for r in caplog.records if r.name.startswith("communityid")] == []


def test_community_id_of_what_it_cannot_hash_is_empty():
    assert community_id("not-an-address", 1, "5.6.7.8", 2, "tcp") == ""
    assert community_id("1.2.3.4", 1, "5.6.7.8", 2, "icmp") == ""


def test_evidence_says_what_was_seen():
    assert evidence(ssh_on_443()) == "SSH on 443/tcp (expected tls by port)"
    assert evidence(binary_on_80()) == (
        "unknown binary protocol on 80/tcp, first bytes 00 00 00 2c 0a 0b 0c 0d ...")
    text = {**binary_on_80(), "orig_head": b"HELO there\r\n"}
    assert evidence(text).startswith("unknown text protocol on 80/tcp, first bytes 'HELO")
    both = {**ssh_on_443(), "reason": "anomalous-bytes,protocol-mismatch"}
    assert evidence(both) == ("SSH on 443/tcp (expected tls by port); ssh on 443/tcp with "
                              "unusual bytes in the resp head (offsets 0, 1, 2)")


def test_severity_comes_from_the_per_protocol_table():
    assert severity(ssh_on_443(), TABLE) == "high"
    assert severity({**ssh_on_443(), "predicted_protocol": "http"}, TABLE) == "medium"
    assert severity({**ssh_on_443(), "reason": "anomalous-bytes"}, TABLE) == "low"
    assert severity(binary_on_80(), TABLE) == "high"
    custom = parse_severity_table("http=critical,*=low")
    assert severity({**ssh_on_443(), "predicted_protocol": "http"}, custom) == "critical"
    assert severity(ssh_on_443(), custom) == "low"
    with pytest.raises(ValueError, match="severe"):
        parse_severity_table("ssh=severe")


def enriched() -> dict:
    return enrich(ssh_on_443(), TABLE)


def test_enrichment_adds_community_id_evidence_and_severity():
    alert = enriched()
    assert alert["community_id"] == community_id("10.1.2.3", 51234, "192.0.2.10", 443, "tcp")
    assert alert["community_id"].startswith("1:")
    assert (alert["evidence"], alert["severity"]) == (
        "SSH on 443/tcp (expected tls by port)", "high")


@pytest.mark.parametrize("form", sorted(FORMS))
def test_json_forms_match_their_golden_files(form):
    rendered = json.loads(json.dumps(FORMS[form](enriched())))
    if form == "ocsf":  # the package's version is not part of the form
        assert rendered["metadata"]["product"].pop("version") == __version__
        rendered["metadata"]["product"]["version"] = "<headbits version>"
    assert rendered == json.loads((GOLDEN / f"{form}.json").read_text())


def test_table_form_matches_its_golden_file():
    assert table(enriched()) + "\n" == (GOLDEN / "table.txt").read_text()


def validator(name: str) -> jsonschema.Draft202012Validator:
    schema = json.loads((DATA / "siem" / name).read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())


@pytest.mark.parametrize("alert", [ssh_on_443(), binary_on_80()], ids=["ssh", "binary"])
def test_ecs_form_fits_the_ecs_field_set(alert):
    document = ecs(enrich(alert, TABLE))
    validator("ecs-8.11-subset.schema.json").validate(document)
    assert document["event"]["kind"] == "alert"
    assert document["observer"]["name"] == "dmz-1"
    assert document["zeek"]["session_id"] == alert["uid"]
    assert document["network"]["community_id"].startswith("1:")
    assert document["headbits"]["model"]["version"] == 7
    assert document["headbits"]["tail_probability"] == 0.0625
    assert document["headbits"]["orig_head"]["hex"] == alert["orig_head"].hex()


@pytest.mark.parametrize("alert", [ssh_on_443(), binary_on_80()], ids=["ssh", "binary"])
def test_ocsf_form_is_a_detection_finding(alert):
    document = ocsf(enrich(alert, TABLE))
    validator("ocsf-1.1.0-detection-finding-subset.schema.json").validate(document)
    assert document["type_uid"] == document["class_uid"] * 100 + document["activity_id"]
    assert document["device"]["name"] == "dmz-1"
    assert document["evidences"][0]["connection_info"]["community_uid"].startswith("1:")
    assert document["unmapped"]["zeek_uid"] == alert["uid"]
    assert document["severity_id"] == 4 and document["severity"] == "High"


def test_the_schemas_refuse_what_breaks_them():
    """The validation can fail: a wrong kind, a stray top-level field, a wrong class."""
    ecs_check = validator("ecs-8.11-subset.schema.json")
    document = ecs(enriched())
    for broken in ({**document, "event": {**document["event"], "kind": "finding"}},
                   {**document, "severity": "high"},
                   {**document, "source": {"ip": "10.1.2", "port": 1}}):
        with pytest.raises(jsonschema.ValidationError):
            ecs_check.validate(broken)
    ocsf_check = validator("ocsf-1.1.0-detection-finding-subset.schema.json")
    finding = ocsf(enriched())
    for broken in ({**finding, "class_uid": 2001}, {k: v for k, v in finding.items()
                                                   if k != "finding_info"}):
        with pytest.raises(jsonschema.ValidationError):
            ocsf_check.validate(broken)


def test_plain_form_has_both_heads_in_hex_and_printable():
    record = plain(enriched())
    assert record["resp_head"] == b"SSH-2.0-OpenSSH_8\r\n".hex()
    assert record["resp_head_printable"] == "SSH-2.0-OpenSSH_8.."


def test_old_alerts_without_the_new_fields_still_render():
    """Alerts written before these fields (read back with the schema's defaults) render."""
    old = {**ssh_on_443(), "count": 1, "first_seen": 0.0, "last_seen": 0.0, "uids": [],
           "evidence": "", "community_id": "", "severity": "medium"}
    assert ocsf(old)["start_time"] == round(old["ts"] * 1000)
    assert ecs(old)["headbits"]["uids"] == [old["uid"]]
