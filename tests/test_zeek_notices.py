"""Scorer alerts back into the real Zeek: ZeekAlertPublisher -> WebSocket -> HeadBits notices.

Zeek runs live (no capture) with the package and its WebSocket server; the alerts are the
records the scorer writes (schemas/alert.avsc fields). What counts is notice.log: one notice per
alert reason, with the connection's uid and endpoints.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

from headbits.devtools.loopback_server import free_port
from headbits.scorer.zeek_notices import ZeekAlertPublisher
from tests.zeek_support import require_zeek, wait_listening


def alert(uid: str, reason: str) -> dict:
    return {"uid": uid, "orig_h": "192.0.2.7", "orig_p": 40001, "resp_h": "198.51.100.9",
            "resp_p": 80, "transport": "tcp", "reason": reason, "score": 0.91,
            "threshold": 0.25, "predicted_protocol": "ssh", "expected_protocol": "http",
            "model_name": "heads", "model_version": 7}


def notices(log: Path) -> list[dict]:
    lines = log.read_text().splitlines()
    names = next(line for line in lines if line.startswith("#fields")).split("\t")[1:]
    return [dict(zip(names, line.split("\t"), strict=True)) for line in lines
            if not line.startswith("#")]


def test_alerts_become_notices_in_the_real_zeek(tmp_path: Path) -> None:
    zeek = require_zeek()
    port = free_port()
    process = zeek.start(["-e", "redef exit_only_after_terminate = T;",
                          str(Path(__file__).resolve().parents[1] / "zeek" / "scripts"),
                          f"HeadBits::websocket_port={port}/tcp"], tmp_path)
    publisher = ZeekAlertPublisher(f"ws://127.0.0.1:{port}/v1/messages/json")
    try:
        wait_listening(port, process)
        sent = publisher.publish([alert("CAnomalous0000001", "anomalous-bytes"),
                                  alert("CBoth000000000002", "anomalous-bytes,protocol-mismatch")])
        assert sent == 2
        time.sleep(2)
    finally:
        publisher.close()
        process.send_signal(signal.SIGTERM)
        process.wait(30)
    found = sorted((n["uid"], n["note"]) for n in notices(tmp_path / "notice.log"))
    assert found == [("CAnomalous0000001", "HeadBits::Anomalous_Protocol"),
                     ("CBoth000000000002", "HeadBits::Anomalous_Protocol"),
                     ("CBoth000000000002", "HeadBits::Novel_Protocol")]
    first = notices(tmp_path / "notice.log")[0]
    assert (first["id.orig_h"], first["id.resp_p"]) == ("192.0.2.7", "80")
    assert "predicted ssh, expected http" in first["msg"]
    assert publisher.counts == {"sent": 2, "failed": 0}


def test_unreachable_sensor_costs_a_count_not_the_scorer() -> None:
    publisher = ZeekAlertPublisher(f"ws://127.0.0.1:{free_port()}/v1/messages/json", timeout=2)
    assert publisher.publish([alert("CNobody0000000003", "anomalous-bytes")]) == 0
    assert publisher.counts == {"sent": 0, "failed": 1}
