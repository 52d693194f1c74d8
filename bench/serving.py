"""Rows per second through gRPC Predict against in-process inference, packed bytes vs float bits.

Trains a small model of the default shape (N=16) on synthetic heads, exports it, and serves it
from the development stand-in for TF Serving in a child process (TF Serving's binary cannot be
installed here; the real server's C++ path is faster than this Python one, so the gRPC figures are
a floor). A second model name serves the same network behind a float32 `bits` [batch, 16N]
input, which is what a scorer sending unpacked bits would pay on the wire.

For each batch size: in-process rows/s (SavedModelBackend), gRPC rows/s with packed uint8 inputs
(TFServingBackend, `--clients` requests in flight) and with float32 bits, p50/p99 request latency
and request bytes per row. The last line is one JSON object of all figures.

    .venv/bin/python bench/serving.py [--seconds 2] [--clients 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

from headbits.devtools.loopback_server import free_port
from headbits.featurizer.bits import HeadBatch, pack_heads, unpack_bits

BATCH_SIZES = (64, 256, 1024, 4096, 8192)
BITS_MODEL = "headbits_bits"


def synthetic_heads(rows: int, seed: int) -> tuple[HeadBatch, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, rows)
    openings = (b"GET / HTTP/1.1\r\n", b"SSH-2.0-OpenSSH_9\r\n", b"\x16\x03\x01\x02\x00\x01")
    orig = [openings[label] + rng.bytes(48) for label in labels]
    resp = [rng.bytes(int(rng.integers(0, 64))) for _ in labels]
    return pack_heads(orig, resp, 64), labels


def export_models(base: Path) -> tuple[Path, int]:
    import tensorflow as tf

    from headbits.trainer.export import export_model
    from headbits.trainer.model import TrainingConfig, train

    config = TrainingConfig(n=16, max_epochs=1, target_fpr=0.01, min_threshold_rows=50)
    heads, labels = synthetic_heads(4000, 0)
    validation, validation_labels = synthetic_heads(1000, 1)
    trained = train(heads, labels, ("http", "ssh", "tls"), validation, validation_labels, config,
                    progress=False)
    version_dir = export_model(trained, base, version=1)

    # The same network behind float32 bits: pack them back to bytes inside the graph.
    n = config.n
    weights = tf.constant([128, 64, 32, 16, 8, 4, 2, 1], tf.float32)
    serve = trained.graph.serve

    @tf.function(input_signature=[tf.TensorSpec([None, 16 * n], tf.float32, name="bits"),
                                  tf.TensorSpec([None, 2], tf.int32, name="head_lengths")])
    def serve_bits(bits, head_lengths):
        packed = tf.reshape(bits, [-1, 2 * n, 8]) @ weights[:, None]
        outputs = serve(tf.cast(tf.reshape(packed, [-1, 2 * n]), tf.uint8), head_lengths)
        return {k: v for k, v in outputs.items() if k != "classes"}

    module = tf.Module()
    module.graph = trained.graph
    module.serve_bits = serve_bits
    tf.saved_model.save(module, str(base / BITS_MODEL / "1"),
                        signatures={"serving_default": serve_bits})
    return version_dir, n


def start_standin(base: Path) -> tuple[subprocess.Popen, str]:
    from headbits.common.model_repository import (
        config_text,
        model_server_config,
        write_atomically,
    )

    config = model_server_config("headbits", str(base / "headbits"), [1], {"stable": 1})
    bits_config = model_server_config(BITS_MODEL, str(base / BITS_MODEL), [1], {})
    config.model_config_list.config.extend(bits_config.model_config_list.config)
    write_atomically(base / "models.config", config_text(config))
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "headbits.cli", "serving-standin", "--model-config-file",
         str(base / "models.config"), "--port", str(port),
         "--allow-version-labels-for-unavailable-models", "true"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    process.stdout.readline()
    return process, f"127.0.0.1:{port}"


def run_for(seconds: float, clients: int, call) -> tuple[int, list[float]]:
    """Call `call()` from `clients` threads for `seconds`; return calls made and latencies."""
    latencies: list[float] = []
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def client():
        own = []
        while time.monotonic() < stop:
            started = time.perf_counter()
            call()
            own.append(time.perf_counter() - started)
        with lock:
            latencies.extend(own)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return len(latencies), latencies


def figures(rows: int, seconds: float, calls: int, latencies: list[float]) -> dict:
    return {
        "rows_per_s": round(rows * calls / seconds),
        "p50_ms": round(float(np.percentile(latencies, 50)) * 1000, 2),
        "p99_ms": round(float(np.percentile(latencies, 99)) * 1000, 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="per measurement")
    parser.add_argument("--clients", type=int, default=2, help="requests in flight")
    args = parser.parse_args()

    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    from headbits.scorer.inprocess import SavedModelBackend
    from headbits.scorer.tfserving import TFServingBackend, open_channel, tensor_proto

    base = Path(tempfile.mkdtemp(prefix="headbits-bench-serving-"))
    process = None
    try:
        version_dir, n = export_models(base)
        process, target = start_standin(base)
        local = SavedModelBackend(version_dir)
        remote = TFServingBackend(target, max_in_flight=args.clients)
        remote.info()
        bits_stub = prediction_service_pb2_grpc.PredictionServiceStub(open_channel(target))
        heads, _ = synthetic_heads(max(BATCH_SIZES), 2)
        results: dict = {"n": n, "clients": args.clients, "seconds": args.seconds,
                         "batches": {}}
        for size in BATCH_SIZES:
            batch = heads.select(slice(0, size))
            at_n = batch.truncate(n)
            bits_request = predict_pb2.PredictRequest(output_filter=[
                "reconstruction_error", "direction_error", "protocol_probs", "threshold"])
            bits_request.model_spec.name = BITS_MODEL
            bits_request.inputs["bits"].CopyFrom(
                tensor_proto(unpack_bits(at_n.head_bytes).astype(np.float32)))
            bits_request.inputs["head_lengths"].CopyFrom(tensor_proto(at_n.head_lengths))
            packed_request = remote.predict_request(at_n, ("reconstruction_error",))
            row = {
                "request_bytes_per_row_packed": round(packed_request.ByteSize() / size, 1),
                "request_bytes_per_row_float32_bits": round(bits_request.ByteSize() / size, 1),
            }
            calls, latencies = run_for(args.seconds, 1, lambda b=batch: local.score(b))
            row["in_process"] = figures(size, args.seconds, calls, latencies)
            calls, latencies = run_for(args.seconds, args.clients,
                                       lambda b=batch: remote.score(b))
            row["grpc_packed_uint8"] = figures(size, args.seconds, calls, latencies)
            calls, latencies = run_for(
                args.seconds, args.clients,
                lambda r=bits_request: bits_stub.Predict(r, timeout=60))
            row["grpc_float32_bits"] = figures(size, args.seconds, calls, latencies)
            results["batches"][str(size)] = row
            print(f"batch {size:5d}: in-process {row['in_process']['rows_per_s']:>9,} rows/s | "
                  f"gRPC packed {row['grpc_packed_uint8']['rows_per_s']:>9,} rows/s "
                  f"(p50 {row['grpc_packed_uint8']['p50_ms']} ms, p99 "
                  f"{row['grpc_packed_uint8']['p99_ms']} ms, "
                  f"{row['request_bytes_per_row_packed']} B/row) | "
                  f"gRPC float32 bits {row['grpc_float32_bits']['rows_per_s']:>9,} rows/s "
                  f"({row['request_bytes_per_row_float32_bits']} B/row)", flush=True)
        best = max(r["grpc_packed_uint8"]["rows_per_s"] for r in results["batches"].values())
        results["best_grpc_packed_rows_per_s"] = best
        results["target_rows_per_s"] = 200_000
        results["target_met"] = best >= 200_000
        remote.close()
        local.close()
    finally:
        if process is not None:
            process.terminate()
            process.wait(timeout=30)
        shutil.rmtree(base, ignore_errors=True)
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
