"""Development stand-in for TensorFlow Serving (tests and development only, never production).

TensorFlow Serving's `tensorflow_model_server` binary cannot be installed on our development
machines, so this small gRPC server takes its place there. It speaks TF Serving's real wire
protocol (the `tensorflow-serving-api` protos) and follows its behaviour where the scorer can
see it: the same `<base_path>/<int version>/` layout, the same `--model_config_file` text proto
(version policies and version labels), polling for new versions and config changes,
`PredictionService.Predict` and `GetModelMetadata`, `ModelService.GetModelStatus` and
`HandleReloadConfigRequest`, with TF Serving's status codes and messages. Production runs the
real `tensorflow/serving` image (see docs/serving.md and the Helm chart).

The verb takes `tensorflow_model_server`'s own flags (`--model_config_file=...`, `--port`,
`--rest_api_port`, `--enable_batching`, `--batching_parameters_file`, `--monitoring_config_file`,
`--allow_version_labels_for_unavailable_models`, the poll and thread flags), so the arguments a
Helm chart renders for the real server can be started here, and refuses what the real server
refuses at start-up (model_servers/server.cc, server_core.cc): a config or batching or monitoring
file that does not parse as its proto, a batching file without `--enable_batching`, all three
parallelism flags at once, labels on versions not loaded yet without the labels flag. With
`--rest_api_port` it serves the REST API's model status and metadata
(`/v1/models/<name>[/versions/<n>|/labels/<label>][/metadata]`, TF Serving's HTTP codes) and,
when the monitoring config enables it, Prometheus metrics of its own requests.

TLS follows TF Serving's `--ssl_config_file` (SSLConfig: server_key, server_cert, custom_ca,
client_verify), given here as files; `max_batch_size` refuses a larger request as TF Serving's
batching does (INVALID_ARGUMENT), without merging requests.

Known differences: no request batching (the batching file is parsed and checked, then unused),
no REST predict, no warm-up, and versions load synchronously during a config reload (TF Serving
loads them in the background and reports LOADING meanwhile, which is why `headbits model
promote` waits on GetModelStatus rather than on the reload RPC). It binds `--host` (loopback by
default) where TF Serving binds every address, and `--port=0` picks a free port.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import re
import signal
import threading
from concurrent import futures
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format
from google.protobuf import wrappers_pb2 as _wrappers

from headbits.common import model_repository
from headbits.common.metrics import reply
from headbits.common.settings import add_settings_arguments, setting, settings_from_args

log = logging.getLogger("headbits.serving_standin")


@dataclass(frozen=True)
class StandinSettings:
    """The stand-in's settings; every field but `host`, `max_workers` and `max_message_bytes` is
    a `tensorflow_model_server` flag of the same name and meaning."""

    model_config_file: Path = setting(
        Path("models/models.config"), "TF Serving model_config_file (text proto) to serve"
    )
    host: str = setting("127.0.0.1", "address to listen on")
    port: int = setting(8500, "gRPC port, TF Serving's default (0 picks a free port)")
    rest_api_port: int = setting(0, "REST port, as TF Serving's flag (0: no REST API)")
    enable_batching: bool = setting(False, "as TF Serving's flag (the file is checked, unused)")
    batching_parameters_file: str = setting(
        "", "BatchingParameters text proto; refused without enable_batching, as TF Serving does"
    )
    monitoring_config_file: str = setting(
        "", "MonitoringConfig text proto (Prometheus metrics on the REST port)"
    )
    tensorflow_intra_op_parallelism: int = setting(0, "as TF Serving's flag (checked, unused)")
    tensorflow_inter_op_parallelism: int = setting(0, "as TF Serving's flag (checked, unused)")
    tensorflow_session_parallelism: int = setting(0, "as TF Serving's flag (checked, unused)")
    rest_api_num_threads: int = setting(4, "as TF Serving's flag (accepted, unused)")
    file_system_poll_wait_seconds: float = setting(
        1.0, "seconds between scans for new versions, as TF Serving's flag (<= 0: never)"
    )
    model_config_file_poll_wait_seconds: float = setting(
        1.0, "seconds between re-reads of the config file (TF Serving's default is 0: never)"
    )
    allow_version_labels_for_unavailable_models: bool = setting(
        False, "as TF Serving's flag: new labels may name versions that are not loaded yet"
    )
    max_batch_size: int = setting(
        0, "refuse a Predict of more rows, as TF Serving's batching does (0: no limit)")
    ssl_server_cert_file: Path | None = setting(
        None, "TLS: server certificate chain (PEM), SSLConfig.server_cert")
    ssl_server_key_file: Path | None = setting(
        None, "TLS: server private key, SSLConfig.server_key")
    ssl_custom_ca_file: Path | None = setting(
        None, "TLS: CA of client certificates, SSLConfig.custom_ca")
    ssl_client_verify: bool = setting(
        False, "TLS: require a client certificate signed by the custom CA (mutual TLS)")
    max_workers: int = setting(8, "gRPC worker threads")
    max_message_bytes: int = setting(256 << 20, "largest request or response in bytes")


# tensorflow_model_server's flags that the verb accepts under their own names (`--name=value`).
MODEL_SERVER_FLAGS = (
    "port", "rest_api_port", "model_config_file", "model_config_file_poll_wait_seconds",
    "file_system_poll_wait_seconds", "allow_version_labels_for_unavailable_models",
    "enable_batching", "batching_parameters_file", "monitoring_config_file",
    "tensorflow_intra_op_parallelism", "tensorflow_inter_op_parallelism",
    "tensorflow_session_parallelism", "rest_api_num_threads",
)


class ServingError(Exception):
    """A request TF Serving would refuse, with its gRPC status code."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _message_classes(package: str, messages: dict[str, list[tuple]]) -> dict[str, type]:
    """Message classes made from field lists (name, number, type, label, type name): the protos
    of TF Serving's start-up files that the `tensorflow-serving-api` package does not ship."""
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(_wrappers.DESCRIPTOR.serialized_pb)
    file = descriptor_pb2.FileDescriptorProto(
        name=f"headbits_standin_{package.replace('.', '_')}.proto", package=package,
        syntax="proto3", dependency=["google/protobuf/wrappers.proto"],
    )
    for name, fields in messages.items():
        message = file.message_type.add(name=name)
        for field_name, number, kind, label, type_name in fields:
            message.field.add(name=field_name, number=number, type=kind, label=label,
                              type_name=type_name or None)
    pool.Add(file)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{package}.{name}"))
            for name in messages}


_F = descriptor_pb2.FieldDescriptorProto
_OPTIONAL, _REPEATED = _F.LABEL_OPTIONAL, _F.LABEL_REPEATED
_INT64_VALUE = (_F.TYPE_MESSAGE, _OPTIONAL, ".google.protobuf.Int64Value")
# servables/tensorflow/session_bundle_config.proto and config/monitoring_config.proto.
_STARTUP_PROTOS = _message_classes("tensorflow.serving", {
    "BatchingParameters": [
        ("max_batch_size", 1, *_INT64_VALUE),
        ("batch_timeout_micros", 2, *_INT64_VALUE),
        ("max_enqueued_batches", 3, *_INT64_VALUE),
        ("num_batch_threads", 4, *_INT64_VALUE),
        ("thread_pool_name", 5, _F.TYPE_MESSAGE, _OPTIONAL, ".google.protobuf.StringValue"),
        ("allowed_batch_sizes", 6, _F.TYPE_INT64, _REPEATED, ""),
        ("pad_variable_length_inputs", 7, _F.TYPE_BOOL, _OPTIONAL, ""),
    ],
    "PrometheusConfig": [
        ("enable", 1, _F.TYPE_BOOL, _OPTIONAL, ""),
        ("path", 2, _F.TYPE_STRING, _OPTIONAL, ""),
    ],
    "MonitoringConfig": [
        ("prometheus_config", 1, _F.TYPE_MESSAGE, _OPTIONAL,
         ".tensorflow.serving.PrometheusConfig"),
    ],
})
BatchingParameters = _STARTUP_PROTOS["BatchingParameters"]
MonitoringConfig = _STARTUP_PROTOS["MonitoringConfig"]
PROMETHEUS_PATH = "/monitoring/prometheus/metrics"  # TF Serving's kPrometheusPath


def parse_text_proto(path: str | Path, message_class: type):
    """server.cc's ParseProtoTextFile: an unreadable or unparsable file is INVALID_ARGUMENT."""
    try:
        text = Path(path).read_text()
    except OSError as error:
        raise ServingError(grpc.StatusCode.NOT_FOUND, f"{path}; {error.strerror}") from error
    message = message_class()
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as error:
        log.error("%s: %s", path, error)
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"Invalid protobuf file: '{path}'") from error
    return message


def check_startup_flags(settings: StandinSettings):
    """Server::BuildAndStart's checks, in its order; returns the parsed monitoring config."""
    if settings.enable_batching and settings.batching_parameters_file:
        batching = parse_text_proto(settings.batching_parameters_file, BatchingParameters)
        sizes = list(batching.allowed_batch_sizes)
        # batching_session.cc refuses these when the model loads, which fails start-up.
        if sizes and (sizes != sorted(set(sizes))
                      or sizes[-1] != batching.max_batch_size.value):
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                "allowed_batch_sizes entries must be monotonically increasing and the final "
                "entry must equal max_batch_size",
            )
    elif settings.batching_parameters_file:
        raise ServingError(
            grpc.StatusCode.INVALID_ARGUMENT,
            "server_options.batching_parameters_file is set without setting "
            "server_options.enable_batching to true.",
        )
    if min(settings.tensorflow_intra_op_parallelism, settings.tensorflow_inter_op_parallelism,
           settings.tensorflow_session_parallelism) > 0:
        raise ServingError(
            grpc.StatusCode.INVALID_ARGUMENT,
            "Either configure server_options.tensorflow_session_parallelism or "
            "(server_options.tensorflow_intra_op_parallelism, "
            "server_options.tensorflow_inter_op_parallelism) separately. You cannot configure all.",
        )
    monitoring = MonitoringConfig()
    if settings.rest_api_port and settings.monitoring_config_file:
        monitoring = parse_text_proto(settings.monitoring_config_file, MonitoringConfig)
    return monitoring


@dataclass
class LoadedVersion:
    version: int
    path: Path
    signatures: dict  # signature name -> concrete function
    signature_defs: dict  # signature name -> SignatureDef proto (what GetModelMetadata returns)


def read_model_server_config(path: Path):
    """The model_config_file as the real server parses it; an unparsable file is refused."""
    try:
        return model_repository.read_model_server_config(path)
    except model_repository.RepositoryError as error:
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, str(error)) from error


def aspired_versions(model_config, on_disk: set[int]) -> set[int]:
    """Which versions the model's version policy wants loaded (default: the latest one)."""
    policy = model_config.model_version_policy
    choice = policy.WhichOneof("policy_choice")
    if choice == "all":
        return set(on_disk)
    if choice == "specific":
        return set(policy.specific.versions) & on_disk
    count = policy.latest.num_versions if choice == "latest" and policy.latest.num_versions else 1
    return set(sorted(on_disk)[-count:])


def load_version(version: int, path: Path) -> LoadedVersion:
    import tensorflow as tf
    from tensorflow.core.protobuf import saved_model_pb2

    saved_model = saved_model_pb2.SavedModel()
    saved_model.ParseFromString((path / "saved_model.pb").read_bytes())
    signature_defs = dict(saved_model.meta_graphs[0].signature_def)
    loaded = tf.saved_model.load(str(path))
    return LoadedVersion(version, path, dict(loaded.signatures), signature_defs)


class ServingCore:
    """Models, versions and labels, changed by config reloads and file-system polls.

    Mirrors TF Serving's ServerCore (model_servers/server_core.cc): a reload validates the
    config, then the label map against the versions available *now*, then loads and unloads.
    """

    def __init__(
        self, allow_version_labels_for_unavailable_models: bool = False, max_batch_size: int = 0
    ) -> None:
        from tensorflow_serving.apis import get_model_status_pb2

        self.max_batch_size = max_batch_size
        self._state = get_model_status_pb2.ModelVersionStatus
        self._allow_unavailable_labels = allow_version_labels_for_unavailable_models
        self._lock = threading.RLock()
        self.config = None
        self._loaded: dict[str, dict[int, LoadedVersion]] = {}
        self._states: dict[str, dict[int, tuple[int, str]]] = {}  # state, error message
        self._labels: dict[str, dict[str, int]] = {}

    def reload_config(self, config) -> None:
        """Apply a ModelServerConfig, or raise ServingError and keep serving the old one."""
        if config.WhichOneof("config") != "model_config_list":
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                "ServerModelConfig type not supported by HandleReloadConfigRequest. Only "
                "ModelConfigList is currently supported",
            )
        models = config.model_config_list.config
        names = [model.name for model in models]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"Illegal to list model {duplicates[0]} multiple times in config list",
            )
        for model in models:
            if model.model_platform not in ("", "tensorflow"):
                raise ServingError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"Model {model.name} requests unsupported platform {model.model_platform}",
                )
        with self._lock:
            labels = self._label_map(models)
            self.config = config
            self._labels = labels
            self._apply_policies()

    def _label_map(self, models) -> dict[str, dict[str, int]]:
        """TF Serving's ServerCore::UpdateModelVersionLabelMap, in order and wording."""
        label_map: dict[str, dict[str, int]] = {}
        for model in models:
            states = self._states.get(model.name, {})
            for label, version in sorted(model.version_labels.items()):
                existing = self._labels.get(model.name, {}).get(label)
                allow = self._allow_unavailable_labels and existing in (None, version)
                available = states.get(version, (None, ""))[0] == self._state.AVAILABLE
                if not allow and not available:
                    raise ServingError(
                        grpc.StatusCode.FAILED_PRECONDITION,
                        f"Request to assign label to version {version} of model {model.name}, "
                        "which is not currently available for inference",
                    )
                label_map.setdefault(model.name, {})[label] = version
        return label_map

    def poll_file_system(self) -> None:
        with self._lock:
            if self.config is not None:
                self._apply_policies()

    def _apply_policies(self) -> None:
        configured = {model.name: model for model in self.config.model_config_list.config}
        for name in list(self._loaded):
            if name not in configured:
                self._unload(name, set(self._loaded[name]))
        for name, model in configured.items():
            on_disk = model_repository.version_dirs(Path(model.base_path))
            wanted = aspired_versions(model, set(on_disk))
            loaded = self._loaded.setdefault(name, {})
            self._unload(name, set(loaded) - wanted)
            for version in sorted(wanted - set(loaded)):
                self._load(name, version, on_disk[version])

    def _load(self, name: str, version: int, path: Path) -> None:
        states = self._states.setdefault(name, {})
        states[version] = (self._state.LOADING, "")
        try:
            self._loaded[name][version] = load_version(version, path)
        except Exception as error:  # a broken version must not take the server down
            log.error("loading %s version %d from %s failed: %s", name, version, path, error)
            states[version] = (self._state.END, f"{type(error).__name__}: {error}")
            return
        states[version] = (self._state.AVAILABLE, "")
        log.info("loaded %s version %d from %s", name, version, path)

    def _unload(self, name: str, versions: set[int]) -> None:
        for version in versions:
            del self._loaded[name][version]
            self._states[name][version] = (self._state.END, "")
            log.info("unloaded %s version %d", name, version)

    def label_version(self, name: str, label: str) -> int:
        """The version a label names; INVALID_ARGUMENT for a label the config does not define."""
        with self._lock:
            version = self._labels.get(name, {}).get(label)
        if version is None:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"Unrecognized servable version label: {label}")
        return version

    def resolve(self, model_spec) -> LoadedVersion:
        """ServerCore::ServableRequestFromModelSpec + GetServableHandle: NOT_FOUND for a model or
        version that is not loaded, INVALID_ARGUMENT for a label the config does not define."""
        name = model_spec.name
        if not name:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "ModelSpec has no name specified.")
        with self._lock:
            choice = model_spec.WhichOneof("version_choice")
            if choice == "version_label":
                version = self._labels.get(name, {}).get(model_spec.version_label)
                if version is None:
                    raise ServingError(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        f"Unrecognized servable version label: {model_spec.version_label}",
                    )
                request = f"Specific({name}, {version})"
            elif choice == "version":
                version = model_spec.version.value
                request = f"Specific({name}, {version})"
            else:
                loaded = self._loaded.get(name, {})
                version = max(loaded) if loaded else None
                request = f"Latest({name})"
            servable = self._loaded.get(name, {}).get(version)
        if servable is None:
            raise ServingError(
                grpc.StatusCode.NOT_FOUND, f"Servable not found for request: {request}"
            )
        return servable

    def version_states(self, model_spec) -> list[tuple[int, int, str]]:
        """GetModelStatusImpl (model_servers/get_model_status_impl.cc): a named version, or every
        version the server has seen (labels are not consulted there either)."""
        with self._lock:
            states = dict(self._states.get(model_spec.name, {}))
        if model_spec.WhichOneof("version_choice") == "version":
            version = model_spec.version.value
            if version not in states:
                raise ServingError(
                    grpc.StatusCode.NOT_FOUND,
                    f"Could not find version {version} of model {model_spec.name}",
                )
            return [(version, *states[version])]
        if not states:
            raise ServingError(
                grpc.StatusCode.NOT_FOUND, f"Could not find any versions of model {model_spec.name}"
            )
        return [(version, *states[version]) for version in sorted(states)]


def _as_proto_field(array):
    """Like TF Serving's default (Tensor::AsProtoField): values in typed fields, not bytes."""
    import numpy as np
    from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

    proto = tensor_pb2.TensorProto(
        tensor_shape=tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=size) for size in array.shape]
        )
    )
    flat = array.ravel()
    if array.dtype == object or array.dtype.kind in "SU":
        proto.dtype = types_pb2.DT_STRING
        proto.string_val.extend(v if isinstance(v, bytes) else str(v).encode() for v in flat)
    elif array.dtype == np.float32:
        proto.dtype = types_pb2.DT_FLOAT
        proto.float_val.extend(flat.tolist())
    elif array.dtype == np.float64:
        proto.dtype = types_pb2.DT_DOUBLE
        proto.double_val.extend(flat.tolist())
    elif array.dtype == np.int64:
        proto.dtype = types_pb2.DT_INT64
        proto.int64_val.extend(flat.tolist())
    elif array.dtype == np.bool_:
        proto.dtype = types_pb2.DT_BOOL
        proto.bool_val.extend(flat.tolist())
    else:
        import tensorflow as tf

        proto.dtype = tf.as_dtype(array.dtype).as_datatype_enum
        proto.int_val.extend(flat.tolist())
    return proto


def _check_inputs(signature_def, function, inputs) -> dict:
    """predict_util.cc's checks (VerifyRequestInputsSize, the alias lookup), then the dtype and
    shape checks Session::Run makes: all INVALID_ARGUMENT, as in TF Serving."""
    import tensorflow as tf

    expected = set(signature_def.inputs)
    sent = set(inputs)
    if sent != expected:
        if len(sent) == len(expected):
            alias = sorted(sent - expected)[0]
            message = (
                f"input tensor alias not found in signature: {alias}. Inputs expected to be in "
                f"the set {{{','.join(sorted(expected))}}}."
            )
        else:
            message = (
                f"input size does not match signature: {len(sent)}!={len(expected)} "
                f"len({{{','.join(sorted(sent))}}}) != len({{{','.join(sorted(expected))}}}). "
                f"Sent extra: {{{','.join(sorted(sent - expected))}}}. "
                f"Missing but required: {{{','.join(sorted(expected - sent))}}}."
            )
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, message)
    specs = function.structured_input_signature[1]
    tensors = {}
    for position, alias in enumerate(sorted(inputs)):
        try:
            array = tf.make_ndarray(inputs[alias])
        except (TypeError, ValueError) as error:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT, f"tensor parsing error: {alias}"
            ) from error
        spec = specs[alias]
        if tf.as_dtype(array.dtype) != spec.dtype:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"Expects arg[{position}] to be {spec.dtype.name} but "
                f"{tf.as_dtype(array.dtype).name} is provided",
            )
        if not spec.shape.is_compatible_with(array.shape):
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"input {alias} has shape {list(array.shape)} but the signature expects "
                f"{spec.shape.as_list()}",
            )
        tensors[alias] = array
    return tensors


def predict(core: ServingCore, request):
    """PredictionService.Predict as servables/tensorflow/predict_util.cc runs it."""
    from tensorflow_serving.apis import predict_pb2

    servable = core.resolve(request.model_spec)
    signature_name = request.model_spec.signature_name or "serving_default"
    function = servable.signatures.get(signature_name)
    if function is None:
        raise ServingError(
            grpc.StatusCode.FAILED_PRECONDITION,
            f'Serving signature key "{signature_name}" not found.',
        )
    signature_def = servable.signature_defs[signature_name]
    outputs = list(request.output_filter) or sorted(signature_def.outputs)
    for alias in outputs:
        if alias not in signature_def.outputs:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"output tensor alias not found in signature: {alias} Outputs expected to be "
                f"in the set {{{','.join(sorted(signature_def.outputs))}}}.",
            )
    if len(set(outputs)) != len(outputs):
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "duplicate output tensor alias")
    tensors = _check_inputs(signature_def, function, request.inputs)
    rows = max((len(array) for array in tensors.values() if array.ndim), default=0)
    if core.max_batch_size and rows > core.max_batch_size:
        raise ServingError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"Task size {rows} is larger than maximum batch size {core.max_batch_size}",
        )
    try:
        results = function(**tensors)
    except Exception as error:  # the graph refused the values: TF Serving passes it on
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, str(error)) from error
    response = predict_pb2.PredictResponse()
    response.model_spec.name = request.model_spec.name
    response.model_spec.version.value = servable.version
    response.model_spec.signature_name = signature_name
    for alias in outputs:
        response.outputs[alias].CopyFrom(_as_proto_field(results[alias].numpy()))
    return response


def model_metadata(core: ServingCore, request):
    """get_model_metadata_impl.cc: only the `signature_def` field exists."""
    from tensorflow_serving.apis import get_model_metadata_pb2

    if not request.HasField("model_spec"):
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec")
    if not request.metadata_field:
        raise ServingError(
            grpc.StatusCode.INVALID_ARGUMENT,
            "GetModelMetadataRequest must specify at least one metadata_field",
        )
    for field in request.metadata_field:
        if field != "signature_def":
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT, f"Metadata field {field} is not supported"
            )
    servable = core.resolve(request.model_spec)
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    for name, signature_def in servable.signature_defs.items():
        signature_map.signature_def[name].CopyFrom(signature_def)
    response = get_model_metadata_pb2.GetModelMetadataResponse()
    response.model_spec.name = request.model_spec.name
    response.model_spec.version.value = servable.version
    response.metadata["signature_def"].Pack(signature_map)
    return response


def model_status(core: ServingCore, request):
    from tensorflow_serving.apis import get_model_status_pb2

    if not request.HasField("model_spec"):
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec")
    response = get_model_status_pb2.GetModelStatusResponse()
    for version, state, error in core.version_states(request.model_spec):
        status = response.model_version_status.add(version=version, state=state)
        if error:
            status.status.error_code = grpc.StatusCode.UNKNOWN.value[0]
            status.status.error_message = error
    return response


class RequestCounts:
    """Requests by model and status, exported as TF Serving names its counter."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, str], int] = {}

    def count(self, model_name: str, status: str) -> None:
        with self._lock:
            key = (model_name, status)
            self._counts[key] = self._counts.get(key, 0) + 1

    def prometheus_text(self) -> str:
        name = ":tensorflow:serving:request_count"
        with self._lock:
            counts = sorted(self._counts.items())
        lines = [f"# TYPE {name} counter"]
        lines += [f'{name}{{model_name="{model}",status="{status}"}} {count}'
                  for (model, status), count in counts]
        return "\n".join(lines) + "\n"


def _servicers(core: ServingCore, counts: RequestCounts):
    from tensorflow_serving.apis import (
        model_management_pb2,
        model_service_pb2_grpc,
        prediction_service_pb2_grpc,
    )

    def answer(handler, request, context):
        try:
            response = handler(core, request)
        except ServingError as error:
            counts.count(request.model_spec.name, error.code.name)
            context.abort(error.code, error.message)
        counts.count(request.model_spec.name, "OK")
        return response

    class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
        def Predict(self, request, context):  # noqa: N802 - gRPC's name
            return answer(predict, request, context)

        def GetModelMetadata(self, request, context):  # noqa: N802 - gRPC's name
            return answer(model_metadata, request, context)

    class ModelService(model_service_pb2_grpc.ModelServiceServicer):
        def GetModelStatus(self, request, context):  # noqa: N802 - gRPC's name
            return answer(model_status, request, context)

        def HandleReloadConfigRequest(self, request, context):  # noqa: N802 - gRPC's name
            # model_service_impl.cc: the status goes both in the response and on the call.
            response = model_management_pb2.ReloadConfigResponse()
            try:
                core.reload_config(request.config)
            except ServingError as error:
                response.status.error_code = error.code.value[0]
                response.status.error_message = error.message
                context.set_code(error.code)
                context.set_details(error.message)
            return response

    return (
        (prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server, PredictionService()),
        (model_service_pb2_grpc.add_ModelServiceServicer_to_server, ModelService()),
    )


# http_server.cc's ToHTTPStatusCode.
HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400, grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409, grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNAUTHENTICATED: 401, grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.UNIMPLEMENTED: 501, grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}
MODEL_PATH = re.compile(
    r"/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>\d+)|/labels/(?P<label>[^/:]+))?"
    r"(?P<metadata>/metadata)?"
)


def rest_get(core: ServingCore, path: str) -> dict:
    """GET of the REST API's model status or metadata, as the gRPC calls answer them."""
    from google.protobuf import json_format
    from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2

    match = MODEL_PATH.fullmatch(path)
    if match is None:
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"Malformed request: GET {path}")
    if match["metadata"]:
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    else:
        request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = match["name"]
    if match["version"]:
        request.model_spec.version.value = int(match["version"])
    elif match["label"]:
        if match["metadata"]:
            request.model_spec.version_label = match["label"]
        else:  # the status of the version the label names
            version = core.label_version(match["name"], match["label"])
            request.model_spec.version.value = version
    response = (model_metadata if match["metadata"] else model_status)(core, request)
    return json_format.MessageToDict(response, preserving_proto_field_name=True,
                                     always_print_fields_with_no_presence=True)


def rest_server(core: ServingCore, counts: RequestCounts, monitoring, host: str,
                port: int) -> ThreadingHTTPServer:
    """The REST API's read-only part, and Prometheus metrics when the monitoring config says so."""
    prometheus = monitoring.prometheus_config
    metrics_path = (prometheus.path or PROMETHEUS_PATH) if prometheus.enable else None

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if metrics_path and path == metrics_path:
                self._reply(200, counts.prometheus_text().encode(), "text/plain; version=0.0.4")
                return
            try:
                status, body = 200, rest_get(core, path)
            except ServingError as error:
                status, body = HTTP_STATUS.get(error.code, 500), {"error": error.message}
            self._reply(status, json.dumps(body, indent=1).encode(), "application/json")

        def _reply(self, status: int, body: bytes, kind: str) -> None:
            reply(self, status, body, kind)

        def log_message(self, *args: object) -> None:
            """Probes call every few seconds: not logged."""

    return ThreadingHTTPServer((host, port), Handler)


def server_credentials(settings: StandinSettings) -> grpc.ServerCredentials | None:
    """TLS credentials as TF Serving builds them from its SSLConfig, or None (plaintext)."""
    if settings.ssl_server_cert_file is None:
        return None
    if settings.ssl_server_key_file is None:
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                           "ssl_server_cert_file needs ssl_server_key_file")
    custom_ca = (settings.ssl_custom_ca_file.read_bytes()
                 if settings.ssl_custom_ca_file is not None else None)
    if settings.ssl_client_verify and custom_ca is None:
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                           "ssl_client_verify needs ssl_custom_ca_file")
    pair = (settings.ssl_server_key_file.read_bytes(), settings.ssl_server_cert_file.read_bytes())
    return grpc.ssl_server_credentials(
        [pair], root_certificates=custom_ca, require_client_auth=settings.ssl_client_verify)


class StandinServer:
    """A running stand-in: the gRPC server plus the threads that poll files and the config."""

    def __init__(self, settings: StandinSettings) -> None:
        self.settings = settings
        self.core = ServingCore(settings.allow_version_labels_for_unavailable_models,
                                settings.max_batch_size)
        self._config_text = settings.model_config_file.read_text()
        config = read_model_server_config(settings.model_config_file)
        # server.cc's order: the start-up files and flags, then ServerCore::Create (labels).
        monitoring = check_startup_flags(settings)
        self.core.reload_config(config)
        self.counts = RequestCounts()
        self.rest = None
        if settings.rest_api_port:
            if settings.rest_api_port == settings.port:
                log.error("server_options.http_port cannot be same as grpc_port. Skipped "
                          "exporting HTTP/REST API.")
            else:
                self.rest = rest_server(self.core, self.counts, monitoring, settings.host,
                                        settings.rest_api_port)
        options = [
            ("grpc.max_send_message_length", settings.max_message_bytes),
            ("grpc.max_receive_message_length", settings.max_message_bytes),
        ]
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=settings.max_workers), options=options
        )
        for add, servicer in _servicers(self.core, self.counts):
            add(servicer, self._server)
        address = f"{settings.host}:{settings.port}"
        credentials = server_credentials(settings)
        self.port = (self._server.add_insecure_port(address) if credentials is None
                     else self._server.add_secure_port(address, credentials))
        if self.port == 0:
            raise OSError(f"cannot listen on {settings.host}:{settings.port}")
        self._stopping = threading.Event()
        self._pollers = [
            threading.Thread(target=self._poll, args=(wait, job), daemon=True)
            for wait, job in (
                (settings.file_system_poll_wait_seconds, self.core.poll_file_system),
                (settings.model_config_file_poll_wait_seconds, self._reread_config),
            )
            if wait > 0
        ]

    @property
    def target(self) -> str:
        return f"{self.settings.host}:{self.port}"

    @property
    def rest_port(self) -> int | None:
        return self.rest.server_address[1] if self.rest else None

    def start(self) -> StandinServer:
        self._server.start()
        if self.rest is not None:
            threading.Thread(target=self.rest.serve_forever, name="standin-rest",
                             daemon=True).start()
        for poller in self._pollers:
            poller.start()
        return self

    def stop(self, grace: float | None = 0.5) -> None:
        self._stopping.set()
        self._server.stop(grace).wait()
        if self.rest is not None:
            self.rest.shutdown()
            self.rest.server_close()
        for poller in self._pollers:
            poller.join()

    def _poll(self, wait: float, job) -> None:
        while not self._stopping.wait(wait):
            try:
                job()
            except ServingError as error:
                log.error("%s", error.message)

    def _reread_config(self) -> None:
        """Like TF Serving's config poll: a changed file is reloaded; a bad one is logged."""
        path = self.settings.model_config_file
        try:
            text = path.read_text()
        except OSError as error:
            log.error("cannot read %s: %s", path, error)
            return
        if text != self._config_text:
            self._config_text = text
            self.core.reload_config(read_model_server_config(path))


def configure(parser: argparse.ArgumentParser) -> None:
    add_settings_arguments(parser, StandinSettings)
    flags = parser.add_argument_group(
        "tensorflow_model_server's flags (the same settings under the real server's names)")
    bools = {f.name for f in dataclasses.fields(StandinSettings) if f.type in (bool, "bool")}
    for name in MODEL_SERVER_FLAGS:
        if "_" not in name:  # --port is already the settings option
            continue
        # TF Serving's bool flags may stand alone: --enable_batching means true.
        lone = {"nargs": "?", "const": "true"} if name in bools else {}
        flags.add_argument(f"--{name}", dest=name, default=None, metavar="VALUE",
                           help=f"as tensorflow_model_server --{name}=VALUE", **lone)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    settings = settings_from_args(StandinSettings, args)
    try:
        server = StandinServer(settings).start()
    except (ServingError, OSError) as error:
        code = f"{error.code.name}: " if isinstance(error, ServingError) else ""
        print(f"Failed to start server. Error: {code}{getattr(error, 'message', error)}",
              flush=True)
        return 1
    rest = f", REST on {settings.host}:{server.rest_port}" if server.rest_port else ""
    print(f"headbits serving-standin (development stand-in for TF Serving) on {server.target}"
          f"{rest}", flush=True)
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    try:
        stopping.wait()
    finally:
        server.stop()
    return 0


def standin_settings(config_file: Path, **overrides) -> StandinSettings:
    """Settings for an in-process stand-in (tests, benches): a free loopback port by default."""
    overrides.setdefault("port", 0)
    return dataclasses.replace(StandinSettings(), model_config_file=config_file, **overrides)

