"""Suppression rules, benign feedback as rules, aggregation windows (with restore) and learning
mode: the emit-time step's pure parts, and the emitter that chains them."""

from __future__ import annotations

import pytest

from headbits.scorer.aggregation import AlertWindows, decode_alert, group_of
from headbits.scorer.emit import AlertEmitter, EmitSettings, load_rules_file
from headbits.scorer.learning import LearningMode, start_record
from headbits.scorer.rules import InvalidRule, Rule, RuleSet, feedback_rule
from tests.test_alert_forms import binary_on_80, ssh_on_443


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def alert(uid: str, **changes) -> dict:
    base = {k: v for k, v in ssh_on_443().items()
            if k not in ("count", "first_seen", "last_seen", "uids", "learning")}
    return {**base, "uid": uid, **changes}


def test_a_rule_matches_when_every_set_field_matches():
    assert Rule("any").matches(alert("A"))
    assert Rule("net", dst_cidr="192.0.2.0/24", resp_p=443, transport="tcp").matches(alert("A"))
    assert Rule("src", src_cidr="10.0.0.0/8", sensor="dmz-1").matches(alert("A"))
    assert Rule("reason", reason="protocol-mismatch", predicted_protocol="ssh",
                expected_protocol="tls").matches(alert("A"))
    for miss in (Rule("a", dst_cidr="192.0.3.0/24"), Rule("b", resp_p=22),
                 Rule("c", transport="udp"), Rule("d", sensor="other"),
                 Rule("e", reason="novel-protocol"), Rule("f", predicted_protocol="http"),
                 Rule("g", src_cidr="2001:db8::/32")):
        assert not miss.matches(alert("A")), miss.id
    assert Rule("v6", dst_cidr="2001:db8::/32").matches(alert("A", resp_h="2001:db8::5"))


def test_invalid_rules_are_refused_with_the_field():
    for fields, word in (({"dst_cidr": "10.0.0.300/8"}, "dst_cidr"), ({"resp_p": 70000}, "resp_p"),
                         ({"reason": "scary"}, "reason"), ({"transport": "icmp"}, "transport"),
                         ({"kind": "allow"}, "kind")):
        with pytest.raises(InvalidRule, match=word):
            Rule("x", **fields)
    with pytest.raises(InvalidRule, match="id"):
        Rule("")


def test_expired_rules_and_removed_rules_stop_matching():
    rules = RuleSet([Rule("old", resp_p=443, expires=100.0), Rule("keep", resp_p=80)])
    assert rules.match(alert("A"), now=99.0).id == "old"
    assert rules.match(alert("A"), now=100.0) is None
    rules.put(Rule("new", resp_p=443))
    assert rules.match(alert("A"), now=200.0).id == "new"
    rules.remove("new")
    assert rules.match(alert("A"), now=200.0) is None


def test_benign_feedback_becomes_an_expiring_rule_for_the_flow_pattern():
    feedback = {"uid": "A", "verdict": "benign", "ts": 1000.0, "author": "ana",
                "comment": "backup job", "sensor": "dmz-1", "resp_h": "192.0.2.10",
                "resp_p": 443, "transport": "tcp", "expected_protocol": "tls",
                "predicted_protocol": "ssh", "protocol": "ssh", "suppress_days": 2.0}
    rule = feedback_rule(feedback)
    assert (rule.id, rule.origin, rule.author) == ("feedback/A", "feedback", "ana")
    assert rule.expires == 1000.0 + 2 * 86400
    assert "backup job" in rule.comment
    assert rule.matches(alert("B", orig_h="10.9.9.9"))  # same pattern, another client
    assert not rule.matches(alert("C", resp_p=22))
    assert feedback_rule({**feedback, "verdict": "malicious"}) is None
    assert feedback_rule({**feedback, "suppress_days": 0.0}) is None


def test_windows_collapse_one_pattern_and_emit_at_the_end_or_the_count():
    clock = Clock()
    windows = AlertWindows("s1", window_seconds=60, count_threshold=4, clock=clock)
    first = windows.add([alert("A", ts=10.0), alert("B", ts=12.0), alert("X", resp_p=22)])
    assert first.alerts == [] and len(windows) == 2
    assert {s["group"] for s in first.states} == {group_of(alert("A")),
                                                 group_of(alert("X", resp_p=22))}
    counted = windows.add([alert("C", ts=11.0), alert("D", ts=13.0)])
    assert [a["uid"] for a in counted.alerts] == ["A"]
    only = counted.alerts[0]
    assert (only["count"], only["first_seen"], only["last_seen"]) == (4, 10.0, 13.0)
    assert only["uids"] == ["A", "B", "C", "D"]
    assert [s["open"] for s in counted.states] == [False]
    clock.now += 61
    ended = windows.add([])
    assert [(a["uid"], a["count"]) for a in ended.alerts] == [("X", 1)]
    assert len(windows) == 0


def test_state_is_bounded_and_nothing_is_dropped():
    windows = AlertWindows("s1", window_seconds=60, max_open=2, clock=Clock())
    out = windows.add([alert(f"U{port}", resp_p=port) for port in (1, 2, 3, 4)])
    assert len(windows) == 2 and out.early == 2
    assert sorted(a["uid"] for a in out.alerts) == ["U1", "U2"]


def test_a_restarted_scorer_resumes_its_open_windows():
    clock = Clock()
    before = AlertWindows("s1", window_seconds=60, clock=clock)
    states = before.add([alert("A", ts=1.0), alert("B", ts=2.0)]).states
    after = AlertWindows("s1", window_seconds=60, clock=clock)
    after.restore(states)
    resumed = after.add([alert("C", ts=3.0)])
    assert resumed.alerts == []
    clock.now += 61
    (alert_out,) = after.add([]).alerts
    assert (alert_out["count"], alert_out["uids"]) == (3, ["A", "B", "C"])
    closed = AlertWindows("s1", window_seconds=60, clock=clock)
    closed.restore([*states, *after.add([]).states, {**states[0], "open": False}])
    assert len(closed) == 0


def test_an_orphaned_window_is_adopted_once_well_past_its_end():
    clock = Clock()
    gone = AlertWindows("old-pod", window_seconds=60, clock=clock)
    states = gone.add([alert("A")]).states
    heir = AlertWindows("new-pod", window_seconds=60, clock=clock)
    heir.restore(states)
    clock.now += 61
    assert heir.add([]).alerts == []  # its owner may still close it
    clock.now += 60
    adopted = heir.add([])
    assert [a["uid"] for a in adopted.alerts] == ["A"]
    assert [(s["scorer_id"], s["open"]) for s in adopted.states] == [("old-pod", False)]
    assert decode_alert(adopted.states[0]["alert"])["uid"] == "A"
    assert heir.add([]).alerts == []


def test_learning_mode_ends_after_its_period_or_rows_and_resets():
    clock = Clock(1000.0)
    rules = RuleSet()
    mode = LearningMode(hours=1.0, rows=3, clock=clock)
    started = mode.observe(["new"], rules)
    assert [r.id for r in started] == ["learning/new"]
    assert mode.learning("new", rules)
    assert mode.observe(["new", "new"], rules) == []
    assert not mode.learning("new", rules)  # 3 rows
    assert mode.progress() == {"new": 0.0}
    rules.put(start_record("new", clock.now + 1, "ana", "reset"))
    assert mode.learning("new", rules)
    clock.now += 3601
    assert not mode.learning("new", rules)
    assert not LearningMode(0, 0).learning("any", rules)


def test_the_emitter_suppresses_counts_marks_scores_and_tags_learning():
    clock = Clock(500.0)
    rules = RuleSet([Rule("r1", resp_p=443, predicted_protocol="ssh")])
    emitter = AlertEmitter(EmitSettings(follow_rules=False, learning_rows=10), rules, clock)
    scores = [{"uid": "A", "model_version": 7}, {"uid": "N", "model_version": 7},
              {"uid": "A", "model_version": 8}]
    emitted = emitter.emit(["dmz-1", "dmz-1"], [alert("A"), binary_on_80() | {"uid": "N"}],
                           scores)
    assert [a["uid"] for a in emitted.alerts] == ["N"] and emitted.suppressed == 1
    assert [s["suppressed_by"] for s in scores] == ["r1", "", ""]
    clean = [{"uid": "Z", "model_version": 7}]
    emitter.emit([], [binary_on_80() | {"uid": "Z"}], clean)
    assert "suppressed_by" not in clean[0]  # nothing suppressed: the schema's default
    assert emitted.alerts[0]["learning"] is True
    assert emitted.alerts[0]["evidence"].startswith("unknown binary protocol on 80/tcp")
    assert emitted.alerts[0]["count"] == 1
    assert [o.records[0]["id"] for o in emitted.outputs] == ["learning/dmz-1"]
    rules.remove("r1")
    again = emitter.emit([], [alert("A2")], [])
    assert [a["uid"] for a in again.alerts] == ["A2"]


def test_json_topic_output_and_static_rules_file(tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text("- {resp_p: 5228, predicted_protocol: tls, comment: Google services}\n"
                    "- {id: zoom, transport: udp, resp_p: 3479, author: chart}\n")
    rules = load_rules_file(path)
    assert [(r.id, r.origin) for r in rules] == [("chart/0", "chart"), ("zoom", "chart")]
    settings = EmitSettings(follow_rules=False, rules_file=path, alerts_json_topic="t.json",
                            alerts_json_format="ocsf")
    emitter = AlertEmitter(settings, clock=Clock())
    emitted = emitter.emit([], [alert("A"), alert("G", resp_p=5228, predicted_protocol="tls")], [])
    assert [a["uid"] for a in emitted.alerts] == ["A"]
    (json_output,) = emitted.outputs
    assert json_output.topic == "t.json" and json_output.records[0]["class_uid"] == 2004
    assert emitter.output_schemas() == {"t.json": "json"}
    bad = tmp_path / "bad.yaml"
    bad.write_text("- {resp_p: 99999}\n")
    with pytest.raises(InvalidRule, match="resp_p"):
        load_rules_file(bad)
