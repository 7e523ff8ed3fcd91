"""The MLflow model registry, by aliases: `challenger` for a candidate, `champion` for what serves.

Registry stages are not used (they are deprecated and absent from Unity Catalog); promotion moves
the `champion` alias, as in databricks/mlops-stacks.
"""

from __future__ import annotations

import json
import time

from mlflow import MlflowClient
from mlflow.entities.model_registry.model_version_status import ModelVersionStatus
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, RESOURCE_DOES_NOT_EXIST, ErrorCode
from mlflow.store.artifact.runs_artifact_repo import RunsArtifactRepository
from mlflow.store.artifact.utils.models import _parse_model_uri
from mlflow.utils.mlflow_tags import MLFLOW_MODEL_VERSIONS
from mlflow.utils.uri import is_models_uri

CHAMPION = "champion"
CHALLENGER = "challenger"
REGISTRATION_TIMEOUT_S = 300
MODEL_NAME_PREFIX = "cv_pipeline_"


def registered_model_name(task: str, prefix: str = MODEL_NAME_PREFIX) -> str:
    """One registered model per task: `cv_pipeline_<task>` (a Unity Catalog prefix there)."""
    return f"{prefix}{task}"

_NOT_FOUND_CODES = {ErrorCode.Name(RESOURCE_DOES_NOT_EXIST), "NOT_FOUND"}
_ALREADY_EXISTS_CODES = {ErrorCode.Name(RESOURCE_ALREADY_EXISTS), "ALREADY_EXISTS"}
_READY = ModelVersionStatus.to_string(ModelVersionStatus.READY)
_FAILED = ModelVersionStatus.to_string(ModelVersionStatus.FAILED_REGISTRATION)


class ModelRegistry:
    """Registered models and their aliases on one tracking server / registry.

    The tracking and registry URIs are given explicitly, so nothing here reads or changes
    MLflow's process-wide tracking URI.
    """

    def __init__(self, tracking_uri: str, registry_uri: str | None = None):
        self.tracking_uri = tracking_uri
        self.registry_uri = registry_uri or tracking_uri
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=self.registry_uri)

    def register(self, model_uri: str, name: str, tags: dict[str, str] | None = None) -> str:
        """Register `model_uri` (`models:/<model_id>`, `runs:/<run_id>/<name>` or a storage URI) as
        a new version of `name`, creating the registered model if needed; returns the version once
        it is READY. Raises RuntimeError if registration fails or is not READY within
        `REGISTRATION_TIMEOUT_S`.
        """
        try:
            self.client.create_registered_model(name)
        except MlflowException as error:
            if error.error_code not in _ALREADY_EXISTS_CODES:
                raise
        source, run_id, model_id = self._resolve_source(model_uri)
        version = self.client.create_model_version(
            name=name,
            source=source,
            run_id=run_id,
            tags=tags,
            model_id=model_id,
            await_creation_for=REGISTRATION_TIMEOUT_S,
        )
        ready = self._wait_until_ready(name, str(version.version), REGISTRATION_TIMEOUT_S)
        if model_id is not None:
            self._link_logged_model(model_id, name, ready)
        return ready

    def _resolve_source(self, model_uri: str) -> tuple[str, str | None, str | None]:
        """`(source, run_id, model_id)` for `create_model_version`.

        Logged models (`models:/<model_id>`, and `runs:/<run_id>/<name>`, which mlflow 3 stores as
        a logged model) are registered from their artifact location: the SQL registry store would
        otherwise look the logged model up through the process-wide tracking URI, not this one.
        """
        if is_models_uri(model_uri):
            parsed = _parse_model_uri(model_uri)
            if parsed.model_id is not None:
                return self._logged_model_source(parsed.model_id)
            if parsed.name is not None and parsed.version is not None:
                existing = self.client.get_model_version(parsed.name, parsed.version)
                source = self.client.get_model_version_download_uri(parsed.name, parsed.version)
                return source, existing.run_id, getattr(existing, "model_id", None)
            raise ValueError(
                f"model_uri {model_uri!r} must name a logged model (models:/<model_id>) or a version "
                "(models:/<name>/<version>)"
            )
        if RunsArtifactRepository.is_runs_uri(model_uri):
            run_id, artifact_path = RunsArtifactRepository.parse_runs_uri(model_uri)
            run = self.client.get_run(run_id)
            logged = [
                model
                for model in self.client.search_logged_models(
                    experiment_ids=[run.info.experiment_id], filter_string=f"name = '{artifact_path}'"
                )
                if model.source_run_id == run_id
            ]
            if logged:
                newest = max(logged, key=lambda model: model.creation_timestamp)
                return self._logged_model_source(newest.model_id)
            # A model saved among the run's own artifacts (MLflow 2 style).
            return RunsArtifactRepository.get_underlying_uri(model_uri), run_id, None
        return model_uri, None, None

    def _logged_model_source(self, model_id: str) -> tuple[str, str | None, str]:
        logged_model = self.client.get_logged_model(model_id)
        return logged_model.artifact_location, logged_model.source_run_id, logged_model.model_id

    def _link_logged_model(self, model_id: str, name: str, version: str) -> None:
        """Record the new version on the logged model (`mlflow.modelVersions`), as
        `mlflow.register_model` does, so the UI links the two."""
        try:
            logged_model = self.client.get_logged_model(model_id)
        except MlflowException as error:
            if error.error_code in _NOT_FOUND_CODES:
                return  # a logged model in another workspace: nothing to link
            raise
        linked = json.loads(logged_model.tags.get(MLFLOW_MODEL_VERSIONS) or "[]")
        linked.append({"name": name, "version": version})
        self.client.set_logged_model_tags(model_id, {MLFLOW_MODEL_VERSIONS: json.dumps(linked)})

    def _wait_until_ready(self, name: str, version: str, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        while True:
            model_version = self.client.get_model_version(name, version)
            if model_version.status == _READY:
                return version
            if model_version.status == _FAILED:
                raise RuntimeError(
                    f"Registering {name} version {version} failed: {model_version.status_message}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{name} version {version} is not READY after {timeout_s:.0f}s "
                    f"(status {model_version.status})"
                )
            time.sleep(1.0)

    def set_alias(self, name: str, alias: str, version: str) -> None:
        self.client.set_registered_model_alias(name, alias, str(version))

    def version_for_alias(self, name: str, alias: str) -> str | None:
        """The version `alias` points at; None when the model or the alias does not exist."""
        # Read the alias map rather than get_model_version_by_alias: stores disagree on the error
        # code of a missing alias (the SQL store answers INVALID_PARAMETER_VALUE).
        try:
            registered = self.client.get_registered_model(name)
        except MlflowException as error:
            if error.error_code in _NOT_FOUND_CODES:
                return None
            raise
        version = (registered.aliases or {}).get(alias)
        return None if version is None else str(version)

    def promote(self, name: str, version: str) -> None:
        """Make `version` the champion; clear `challenger` if it pointed at that same version."""
        version = str(version)
        self.client.set_registered_model_alias(name, CHAMPION, version)
        if self.version_for_alias(name, CHALLENGER) == version:
            self.client.delete_registered_model_alias(name, CHALLENGER)

    @staticmethod
    def model_uri(name: str, version: str) -> str:
        return f"models:/{name}/{version}"
