"""The TensorFlow Serving backend: `PredictionService.Predict` over gRPC, asking for a label.

The scorer names a version *label* (`stable`, `canary`), never a number, so `headbits model
promote` and `rollback` reach a running scorer without a restart: every response says which
version answered, and when that changes the backend re-reads the model's N and classes.

Heads travel packed: `head_bytes` uint8 [batch, 2N] in `tensor_content`, so a row costs 2N bytes
plus 8 bytes of lengths on the wire instead of 16N float32 bits (64x more). TensorProtos are built
from numpy buffers here, never with `tf.make_tensor_proto`, to keep the hot path cheap.

Readiness comes from `ModelService.GetModelStatus`, the version and N from `GetModelMetadata` (the
signature's input shape) and the classes from the model's own `classes` output: nothing is
guessed. Transient failures (server down, deadline, model not loaded, label not yet assigned)
raise `BackendUnavailable`, so the scorer stops consuming without storing offsets and retries.

Importing `tensorflow_serving.apis` imports TensorFlow's package (the protos live inside it): a
one-off start-up cost of the scorer, not a per-request one.
"""

from __future__ import annotations

import threading
import time

import grpc
import numpy as np
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from headbits.common.serving_tls import TLSFiles
from headbits.common.serving_tls import open_channel as serving_channel
from headbits.featurizer.bits import HeadBatch
from headbits.scorer.backend import (
    INPUT_HEAD_BYTES,
    INPUT_HEAD_LENGTHS,
    MODEL_NAME,
    OUTPUT_CLASSES,
    SCORE_OUTPUTS,
    SIGNATURE_NAME,
    BackendUnavailable,
    ModelChanged,
    ModelInfo,
    Scores,
    ScoringBackend,
)

AVAILABLE = get_model_status_pb2.ModelVersionStatus.AVAILABLE

# Codes after which the same request may succeed later: the server is down or busy, the model or
# the label's version is not loaded yet (NOT_FOUND), a label is not assigned yet (INVALID_ARGUMENT
# "Unrecognized servable version label", handled below) or batching refused the fetch.
RETRYABLE_CODES = frozenset({
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.CANCELLED,
})
NOT_SERVABLE_CODES = frozenset({
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.UNIMPLEMENTED,
})
UNKNOWN_LABEL_MESSAGE = "Unrecognized servable version label"

NUMPY_DTYPES = {
    types_pb2.DT_FLOAT: np.float32,
    types_pb2.DT_DOUBLE: np.float64,
    types_pb2.DT_INT32: np.int32,
    types_pb2.DT_INT64: np.int64,
    types_pb2.DT_UINT8: np.uint8,
    types_pb2.DT_INT8: np.int8,
    types_pb2.DT_INT16: np.int16,
    types_pb2.DT_BOOL: np.bool_,
}
DATA_TYPES = {np.dtype(kind): data_type for data_type, kind in NUMPY_DTYPES.items()}
# Where TensorProto keeps each dtype's values when they are sent as fields, not tensor_content.
VALUE_FIELDS = {
    types_pb2.DT_FLOAT: "float_val",
    types_pb2.DT_DOUBLE: "double_val",
    types_pb2.DT_INT32: "int_val",
    types_pb2.DT_UINT8: "int_val",
    types_pb2.DT_INT8: "int_val",
    types_pb2.DT_INT16: "int_val",
    types_pb2.DT_INT64: "int64_val",
    types_pb2.DT_BOOL: "bool_val",
}


def tensor_proto(array: np.ndarray) -> tensor_pb2.TensorProto:
    """A TensorProto holding `array`'s bytes in tensor_content (one copy, no per-value work)."""
    array = np.ascontiguousarray(array)
    data_type = DATA_TYPES.get(array.dtype)
    if data_type is None:
        raise ValueError(f"no TensorProto dtype for numpy {array.dtype}")
    dims = [tensor_shape_pb2.TensorShapeProto.Dim(size=size) for size in array.shape]
    return tensor_pb2.TensorProto(
        dtype=data_type,
        tensor_shape=tensor_shape_pb2.TensorShapeProto(dim=dims),
        tensor_content=array.tobytes(),
    )


def tensor_array(proto: tensor_pb2.TensorProto) -> np.ndarray:
    """A numpy array from a TensorProto, whichever way the server filled it.

    TF Serving answers with typed value fields (`float_val`, its default) and accepts
    `tensor_content`; both are read here, including a single value broadcast to the shape.
    """
    shape = tuple(dim.size for dim in proto.tensor_shape.dim)
    if proto.dtype == types_pb2.DT_STRING:
        return np.array(list(proto.string_val), dtype=object).reshape(shape)
    kind = NUMPY_DTYPES.get(proto.dtype)
    if kind is None:
        raise ValueError(f"unsupported TensorProto dtype {types_pb2.DataType.Name(proto.dtype)}")
    if proto.tensor_content:
        return np.frombuffer(proto.tensor_content, dtype=kind).reshape(shape)
    values = np.asarray(getattr(proto, VALUE_FIELDS[proto.dtype]), dtype=kind)
    size = int(np.prod(shape, dtype=np.int64))
    if values.size == 1 and size != 1:
        return np.full(shape, values[0], dtype=kind)
    return values.reshape(shape)


def open_channel(
    target: str, tls: TLSFiles | None = None, max_message_bytes: int = 256 << 20
) -> grpc.Channel:
    """A channel sized for large batches (gRPC's default 4 MB limit is 2048 float32-bit rows)."""
    options = [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", 30_000),
        # Reconnect within seconds of a restarted server, not gRPC's default of up to 2 minutes.
        ("grpc.initial_reconnect_backoff_ms", 200),
        ("grpc.max_reconnect_backoff_ms", 5_000),
        ("grpc.enable_retries", 0),  # retries are ours, with backoff and a bounded count
        # Spread requests over every address the target resolves to (a headless Service names
        # each TF Serving pod); gRPC's default, pick_first, pins a scorer to one pod.
        ("grpc.lb_policy_name", "round_robin"),
    ]
    return serving_channel(target, tls, options)


class TFServingBackend(ScoringBackend):
    """Scores through TF Serving's `Predict`, for one model and one version label.

    At most `max_in_flight` requests are outstanding at once (callers beyond that wait); each
    attempt has `deadline_seconds`; transient failures are retried `retries` times with
    exponential backoff from `backoff_seconds`, then surface as `BackendUnavailable`.
    """

    def __init__(
        self,
        target: str,
        model_name: str = MODEL_NAME,
        version_label: str = "stable",
        *,
        deadline_seconds: float = 10.0,
        retries: int = 2,
        backoff_seconds: float = 0.1,
        max_in_flight: int = 4,
        tls: TLSFiles | None = None,
        max_message_bytes: int = 256 << 20,
        channel: grpc.Channel | None = None,
    ) -> None:
        self.target = target
        self.model_name = model_name
        self.version_label = version_label
        self.deadline_seconds = deadline_seconds
        self.retries = retries
        self.backoff_seconds = backoff_seconds
        self.max_in_flight = max_in_flight
        self._tls = tls
        self._max_message_bytes = max_message_bytes
        self._owns_channel = channel is None
        self._channel = channel or open_channel(target, tls, max_message_bytes)
        self._predictions = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        self._models = model_service_pb2_grpc.ModelServiceStub(self._channel)
        self._in_flight = threading.BoundedSemaphore(max_in_flight)
        self._info_lock = threading.Lock()
        self._info: ModelInfo | None = None

    def for_label(self, version_label: str) -> TFServingBackend:
        """A backend on another label over the same channel (e.g. `canary` for shadow scoring).

        The caller closes both; the channel is closed by the backend that opened it.
        """
        return TFServingBackend(
            self.target,
            self.model_name,
            version_label,
            deadline_seconds=self.deadline_seconds,
            retries=self.retries,
            backoff_seconds=self.backoff_seconds,
            max_in_flight=self.max_in_flight,
            tls=self._tls,
            max_message_bytes=self._max_message_bytes,
            channel=self._channel,
        )

    def info(self) -> ModelInfo:
        """The model the label named when last asked: learnt from the server on the first call
        and again only when a Predict response names another version (the label moved)."""
        with self._info_lock:
            info = self._info
        return info if info is not None else self._learn_info()

    def _learn_info(self) -> ModelInfo:
        """Ask the server now: is the model available, which version has the label, N, classes."""
        status_request = get_model_status_pb2.GetModelStatusRequest()
        status_request.model_spec.name = self.model_name
        status = self._call(self._models.GetModelStatus, status_request)
        if not any(v.state == AVAILABLE for v in status.model_version_status):
            states = {v.version: v.state for v in status.model_version_status}
            raise BackendUnavailable(f"no version of {self.model_name} is available: {states}")

        metadata_request = get_model_metadata_pb2.GetModelMetadataRequest(
            metadata_field=["signature_def"]
        )
        self._set_spec(metadata_request.model_spec)
        metadata = self._call(self._predictions.GetModelMetadata, metadata_request)
        version = metadata.model_spec.version.value
        n = self._signature_n(metadata, version)

        # The classes of *that* version, asked for by number so a label moving now cannot mix
        # one version's classes with another's N. `classes` is [batch, C] with the same names in
        # every row: a one-row request, row 0.
        classes_request = self.predict_request(
            HeadBatch(np.zeros((1, 2 * n), np.uint8), np.zeros((1, 2), np.int32)),
            outputs=(OUTPUT_CLASSES,),
        )
        classes_request.model_spec.ClearField("version_label")
        classes_request.model_spec.version.value = version
        response = self._call(self._predictions.Predict, classes_request)
        names = tensor_array(response.outputs[OUTPUT_CLASSES])
        if names.ndim != 2 or len(names) != 1:
            raise BackendUnavailable(
                f"{self.model_name} version {version}: {OUTPUT_CLASSES} must be string "
                f"[batch, C], one row was asked for and {list(names.shape)} came back"
            )
        classes = tuple(c.decode() for c in names[0])
        info = ModelInfo(self.model_name, version, n, classes)
        with self._info_lock:
            self._info = info
        return info

    def score(self, batch: HeadBatch) -> Scores:
        first = self.info()
        for _ in range(3):
            info = self.info()
            if batch.n < info.n:
                if info != first:
                    raise ModelChanged(f"{self.version_label} moved to version {info.version} "
                                       f"of N={info.n}; these heads were cut to N={batch.n}")
                raise ValueError(f"heads of N={batch.n} cannot feed a model of N={info.n}")
            request = self.predict_request(batch.truncate(info.n), SCORE_OUTPUTS)
            try:
                response = self._call(self._predictions.Predict, request)
            except grpc.RpcError as error:
                if self._learn_info() == info:
                    refusal = f"{self.target} refused the batch: {error.details()}"
                    raise ValueError(refusal) from error
                continue  # the label moved to a version of another N: score with that N
            if response.model_spec.version.value == info.version:
                return self._scores(response, info, len(batch))
            self._learn_info()  # the label moved: learn the new version's classes, score again
        raise BackendUnavailable(f"label {self.version_label} kept moving while scoring")

    def close(self) -> None:
        if self._owns_channel:
            self._channel.close()

    def _set_spec(self, spec) -> None:
        spec.name = self.model_name
        spec.version_label = self.version_label
        spec.signature_name = SIGNATURE_NAME

    def predict_request(
        self, batch: HeadBatch, outputs: tuple[str, ...]
    ) -> predict_pb2.PredictRequest:
        request = predict_pb2.PredictRequest(output_filter=outputs)
        self._set_spec(request.model_spec)
        request.inputs[INPUT_HEAD_BYTES].CopyFrom(tensor_proto(batch.head_bytes))
        request.inputs[INPUT_HEAD_LENGTHS].CopyFrom(
            tensor_proto(batch.head_lengths.astype(np.int32, copy=False))
        )
        return request

    def _signature_n(self, metadata, version: int) -> int:
        """N from the head_bytes input [batch, 2N]."""
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        metadata.metadata["signature_def"].Unpack(signature_map)
        signature = signature_map.signature_def.get(SIGNATURE_NAME)
        if signature is None or INPUT_HEAD_BYTES not in signature.inputs:
            raise BackendUnavailable(
                f"{self.model_name} version {version} has no {SIGNATURE_NAME} signature with "
                f"input {INPUT_HEAD_BYTES}: it does not follow the model contract"
            )
        head_bytes = signature.inputs[INPUT_HEAD_BYTES]
        dims = [dim.size for dim in head_bytes.tensor_shape.dim]
        if head_bytes.dtype != types_pb2.DT_UINT8 or len(dims) != 2 or dims[1] <= 0:
            raise BackendUnavailable(
                f"{self.model_name} version {version}: {INPUT_HEAD_BYTES} must be uint8 "
                f"[batch, 2N], the signature says {types_pb2.DataType.Name(head_bytes.dtype)} "
                f"{dims}"
            )
        return dims[1] // 2

    def _scores(self, response, info: ModelInfo, rows: int) -> Scores:
        outputs = {name: tensor_array(response.outputs[name]) for name in SCORE_OUTPUTS}
        if any(len(values) != rows for values in outputs.values()):
            raise BackendUnavailable(
                f"{self.target} answered {[len(v) for v in outputs.values()]} rows for {rows}"
            )
        return Scores.from_outputs(outputs, info)

    def _call(self, method, request):
        """One RPC under the in-flight bound, with deadline and backoff.

        Raises BackendUnavailable when the server cannot answer now, and lets other RpcErrors
        (a request the server refuses) through to the caller.
        """
        delay = self.backoff_seconds
        for attempt in range(self.retries + 1):
            try:
                with self._in_flight:
                    return method(request, timeout=self.deadline_seconds)
            except grpc.RpcError as error:
                code = error.code()
                unknown_label = (
                    code == grpc.StatusCode.INVALID_ARGUMENT
                    and UNKNOWN_LABEL_MESSAGE in (error.details() or "")
                )
                if code in NOT_SERVABLE_CODES or unknown_label:
                    raise BackendUnavailable(
                        f"{self.target} {self.model_name}@{self.version_label}: "
                        f"{code.name}: {error.details()}"
                    ) from error
                if code not in RETRYABLE_CODES:
                    raise
                if attempt == self.retries:
                    raise BackendUnavailable(
                        f"{self.target} unreachable after {attempt + 1} attempts: "
                        f"{code.name}: {error.details()}"
                    ) from error
            time.sleep(delay)
            delay *= 2
        raise AssertionError("unreachable")
