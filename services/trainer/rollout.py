"""List model versions, write TF Serving's model_config_file, promote and roll back labels.

The repository is TF Serving's layout: <models>/headbits/<version>/ holds a SavedModel and
assets.extra/headbits.json (N, classes, metrics), in models_dir or in model_store's bucket
(common/model_store); the config and state files are local files either way. Scorers ask for a
version *label* (`stable`, `canary`); this command owns which version each label names, in the
model_config_file TF Serving reads (model_config_list, a `specific` version policy,
version_labels).

TF Serving only lets a label name a version that is already loaded, so a promotion is two config
writes: first the same labels with the new version added to the loaded set, then (once the server
reports it AVAILABLE) the label moved. Rollback moves a label back to the version it named before,
which stays loaded for that purpose. Labels, the loaded set and the history live in a small JSON
file beside the config (<config>.labels.json).

  headbits model list
  headbits model promote 7 --label canary --server tfserving:8500
  headbits model promote 7 --server tfserving:8500          (canary -> stable)
  headbits model rollback --server tfserving:8500
  headbits model config        (re-write the config and batching file from the state)
  headbits model status --server tfserving:8500
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path

from headbits.common.model_repository import (
    LABEL_PATTERN,
    LABELS,
    ModelVersion,
    RepositoryError,
    RepositoryLocation,
    config_text,
    model_server_config,
    read_state,
    state_path,
    write_atomically,
)
from headbits.common.model_store import open_store
from headbits.common.serving_tls import ServingTLS, TLSFiles, open_channel
from headbits.common.settings import add_settings_arguments, setting, settings_from_args

BATCHING_FILE = resources.files("headbits.scorer") / "batching.config"


@dataclass(frozen=True)
class ModelSettings(RepositoryLocation, ServingTLS):
    model_name: str = setting("headbits", "model name in TF Serving")
    config_file: Path = setting(
        Path("models/models.config"), "TF Serving model_config_file this command writes"
    )
    serving_base_path: str = setting(
        "", "the model's base_path as TF Serving sees it (e.g. /models/headbits in the "
        "container); empty: the local path"
    )
    server: str = setting(
        "", "TF Serving gRPC address (host:port) to wait on between the two writes of a "
        "promotion, and to query for `status`; empty: wait settle_seconds instead"
    )
    reload_via_rpc: bool = setting(
        False, "also push each config with ModelService.HandleReloadConfigRequest (needs server)"
    )
    wait_seconds: float = setting(300.0, "how long a new version may take to become AVAILABLE")
    settle_seconds: float = setting(
        90.0, "without a server: seconds between the two writes (longer than TF Serving's "
        "--model_config_file_poll_wait_seconds plus a version's load time)"
    )


class Repository:
    """The model repository plus the config and state files that say what TF Serving serves."""

    def __init__(self, settings: ModelSettings, out=None) -> None:
        self.settings = settings
        self.out = out or sys.stdout
        self.state = read_state(settings.config_file)
        self.store = open_store(settings, settings.model_name)

    @property
    def base_path(self) -> str:
        return self.settings.serving_base_path or self.store.base_path

    def versions(self) -> list[ModelVersion]:
        """The versions in the model store (models_dir, or model_store's bucket)."""
        return self.store.list_versions()

    def write_config(self, versions: list[int], labels: dict[str, int]) -> None:
        config = model_server_config(self.settings.model_name, self.base_path, versions, labels)
        write_atomically(self.settings.config_file, config_text(config))
        if self.settings.reload_via_rpc:
            reload_config(self._server(), config, self.settings.serving_tls_files())

    def save_state(self) -> None:
        text = json.dumps(self.state.to_dict(), indent=2) + "\n"
        write_atomically(state_path(self.settings.config_file), text)

    def write_batching_file(self) -> Path:
        target = self.settings.config_file.with_name("batching.config")
        write_atomically(target, BATCHING_FILE.read_text())
        return target

    def move_label(
        self, label: str, version: int, action: str, why: dict | None = None
    ) -> None:
        """Point `label` at `version`: load it first, move the label in a second write.

        `why` (the figures behind an automatic decision) is kept in the history entry.
        """
        if not LABEL_PATTERN.fullmatch(label):
            raise RepositoryError(f"label {label!r} must match [a-zA-Z0-9_]+ (TF Serving's rule)")
        if version not in {v.version for v in self.versions()}:
            raise RepositoryError(
                f"no SavedModel at {self.store.location(version)}; `headbits model list` shows "
                "the versions there"
            )
        before = self.state.labels.get(label)
        if before == version:
            print(f"{label} already names version {version}", file=self.out)
            return
        loaded = self.state.loaded()
        if version not in loaded:
            self.write_config([*loaded, version], self.state.labels)
            print(f"step 1/2: loading version {version} beside {loaded}", file=self.out)
            self.wait_available(version)
        self.state.labels[label] = version
        stack = self.state.previous.setdefault(label, [])
        if action == "rollback":
            stack.pop()
        elif before is not None:
            stack.append(before)
        self.state.history.append({
            "time": datetime.now(UTC).isoformat(timespec="seconds"),
            "action": action,
            "label": label,
            "from": before,
            "to": version,
            **({"why": why} if why else {}),
        })
        self.write_config(self.state.loaded(), self.state.labels)
        self.save_state()
        print(f"step 2/2: {label} {before} -> {version}; loaded {self.state.loaded()}",
              file=self.out)

    def promote(self, version: int, label: str, why: dict | None = None) -> None:
        self.move_label(label, version, "promote", why)

    def rollback(self, label: str, why: dict | None = None) -> None:
        stack = self.state.previous.get(label)
        if not stack:
            raise RepositoryError(f"{label} has no earlier version to roll back to")
        self.move_label(label, stack[-1], "rollback", why)

    def note(self, action: str, label: str, version: int, why: dict) -> None:
        """Record a decision that moved no label (e.g. a canary held back) in the history."""
        self.state.history.append({
            "time": datetime.now(UTC).isoformat(timespec="seconds"),
            "action": action, "label": label, "from": version, "to": version, "why": why,
        })
        self.save_state()

    def wait_available(self, version: int) -> None:
        if not self.settings.server:
            print(f"no --server: waiting {self.settings.settle_seconds:g} s for TF Serving to "
                  "load it", file=self.out)
            time.sleep(self.settings.settle_seconds)
            return
        deadline = time.monotonic() + self.settings.wait_seconds
        while time.monotonic() < deadline:
            if version_state(self._server(), self.settings.model_name, version,
                             self.settings.serving_tls_files()) == "AVAILABLE":
                return
            time.sleep(0.2)
        raise RepositoryError(
            f"version {version} did not become AVAILABLE on {self.settings.server} within "
            f"{self.settings.wait_seconds:g} s; the labels were not moved (check the server log)"
        )

    def _server(self) -> str:
        if not self.settings.server:
            raise RepositoryError("reload_via_rpc needs --server")
        return self.settings.server


def version_state(target: str, model_name: str, version: int,
                  tls: TLSFiles | None = None) -> str | None:
    """The version's state name from GetModelStatus, or None if the server does not know it."""
    import grpc
    from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = model_name
    request.model_spec.version.value = version
    with open_channel(target, tls) as channel:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        try:
            response = stub.GetModelStatus(request, timeout=10)
        except grpc.RpcError as error:
            if error.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAVAILABLE):
                return None
            raise
    states = get_model_status_pb2.ModelVersionStatus.State
    return states.Name(response.model_version_status[0].state)


def server_status(target: str, model_name: str, labels: list[str],
                  tls: TLSFiles | None = None) -> dict:
    """Every version's state and the version each label answers with, as the server sees it."""
    import grpc
    from tensorflow_serving.apis import (
        get_model_metadata_pb2,
        get_model_status_pb2,
        model_service_pb2_grpc,
        prediction_service_pb2_grpc,
    )

    status_request = get_model_status_pb2.GetModelStatusRequest()
    status_request.model_spec.name = model_name
    states = get_model_status_pb2.ModelVersionStatus.State
    report: dict = {"versions": {}, "labels": {}}
    with open_channel(target, tls) as channel:
        models = model_service_pb2_grpc.ModelServiceStub(channel)
        predictions = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        try:
            response = models.GetModelStatus(status_request, timeout=10)
        except grpc.RpcError as error:
            return {"error": f"{error.code().name}: {error.details()}"}
        for status in response.model_version_status:
            report["versions"][status.version] = states.Name(status.state)
        for label in labels:
            request = get_model_metadata_pb2.GetModelMetadataRequest(
                metadata_field=["signature_def"]
            )
            request.model_spec.name = model_name
            request.model_spec.version_label = label
            try:
                answer = predictions.GetModelMetadata(request, timeout=10)
                report["labels"][label] = answer.model_spec.version.value
            except grpc.RpcError as error:
                report["labels"][label] = f"{error.code().name}: {error.details()}"
    return report


def reload_config(target: str, config, tls: TLSFiles | None = None) -> None:
    """Push a config with ModelService.HandleReloadConfigRequest; raise if the server refuses."""
    import grpc
    from tensorflow_serving.apis import model_management_pb2, model_service_pb2_grpc

    request = model_management_pb2.ReloadConfigRequest(config=config)
    with open_channel(target, tls) as channel:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        try:
            stub.HandleReloadConfigRequest(request, timeout=600)
        except grpc.RpcError as error:
            raise RepositoryError(
                f"{target} refused the config: {error.code().name}: {error.details()}"
            ) from error


def version_rows(repository: Repository) -> list[list[str]]:
    named = {}
    for label, version in repository.state.labels.items():
        named.setdefault(version, []).append(label)
    loaded = set(repository.state.loaded())
    rows = []
    for version in repository.versions():
        metadata = version.metadata
        metrics = metadata.get("metrics", {})
        shown = " ".join(
            f"{k}={v:.4g}" for k, v in sorted(metrics.items()) if isinstance(v, (int, float))
        )
        rows.append([
            str(version.version),
            ",".join(sorted(named.get(version.version, []))) or "-",
            "yes" if version.version in loaded else "no",
            str(metadata.get("n", "?")),
            str(len(metadata.get("classes", []))),
            str(metadata.get("created", metadata.get("exported_at", "?"))),
            metadata.get("error", shown) or "-",
        ])
    return rows


def print_table(rows: list[list[str]], header: list[str], out) -> None:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)),
              file=out)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("list", "config", "promote", "rollback", "status"))
    parser.add_argument("version", type=int, nargs="?", help="version to promote")
    parser.add_argument("--label", default="stable", help="label to move (default: stable)")
    add_settings_arguments(parser, ModelSettings)


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(ModelSettings, args)
    tls = settings.serving_tls_files()  # refuses TLS files without the switch, before any write
    try:
        repository = Repository(settings)
        if args.action == "list":
            header = ["version", "labels", "loaded", "N", "classes", "created", "metrics"]
            print_table(version_rows(repository), header, sys.stdout)
        elif args.action == "config":
            state = repository.state
            repository.write_config(state.loaded(), state.labels)
            batching = repository.write_batching_file()
            print(f"wrote {settings.config_file} and {batching}")
        elif args.action == "promote":
            if args.version is None:
                canary = repository.state.labels.get("canary")
                if canary is None:
                    raise RepositoryError("promote needs a VERSION (or a canary to promote)")
                args.version = canary
            repository.promote(args.version, args.label)
        elif args.action == "rollback":
            repository.rollback(args.label)
        else:
            print(json.dumps({"state": repository.state.to_dict(), "loaded":
                              repository.state.loaded()}, indent=2))
            if settings.server:
                report = server_status(settings.server, settings.model_name, list(LABELS), tls)
                print(json.dumps({"server": report}, indent=2))
    except RepositoryError as error:
        print(f"headbits model {args.action}: {error}", file=sys.stderr)
        return 1
    return 0

