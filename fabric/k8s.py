"""KubeRay from Python: the RayJob that runs one DAG, and RayJob/RayCluster objects through the Kubernetes API."""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shlex
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from fabric.errors import ConflictError, ErrorCode, FabricError, NotFoundError, Problem, SpecError
from fabric.settings import DEFAULT_IMAGE, ENV, GPU_IMAGE, IMAGE_REPO  # noqa: F401 - re-exported
from fabric.spec import DagSpec, load_spec, parse_runtime_params

GROUP, VERSION = "ray.io", "v1"
API_VERSION = f"{GROUP}/{VERSION}"
RAY_VERSION = "2.60.0"
# The images are DEFAULT_IMAGE and GPU_IMAGE (fabric/settings.py); FABRIC_IMAGE overrides the first.
MAX_RAYJOB_NAME = 47  # KubeRay appends a suffix for the RayJob's RayCluster and its pods
MAX_INLINE_SPEC = 256 * 1024  # the whole RayJob must stay far below etcd's 1.5 MiB object limit
MANAGED_BY = {"app.kubernetes.io/managed-by": "fabric"}
MANAGED_SELECTOR = "app.kubernetes.io/managed-by=fabric"
DEPLOYMENT_DONE = frozenset({"Complete", "Failed", "ValidationFailed"})

_DNS1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_PLURALS = {"RayJob": "rayjobs", "RayCluster": "rayclusters"}


def is_dns1035(name: str, limit: int = MAX_RAYJOB_NAME) -> bool:
    return len(name) <= limit and _DNS1035.fullmatch(name) is not None


def rayjob_name(pipeline_id: str, key: str | None = None) -> str:
    """A DNS-1035 RayJob name from a pipeline id, at most 47 characters, with a 6-hex suffix: derived from
    `key` (the submission id, so a resubmission collides with 409 instead of running twice), else random."""
    base = re.sub(r"[^a-z0-9]+", "-", pipeline_id.lower()).strip("-")
    if not base or not base[0].isalpha():
        base = f"dag-{base}".rstrip("-")
    suffix = hashlib.sha256(key.encode()).hexdigest()[:6] if key else secrets.token_hex(3)
    return f"{base[:MAX_RAYJOB_NAME - 7].rstrip('-')}-{suffix}"


def _label_value(text: str) -> str:
    value = re.sub(r"[^A-Za-z0-9_.-]+", "-", text)[:63]
    return re.sub(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$", "", value)


def _pod(container: str, image: str, cpu: str, memory: str, env: dict[str, str],
         mounts: list[dict[str, Any]] | None = None, volumes: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [{
        "name": container, "image": image,
        "env": [{"name": k, "value": v} for k, v in env.items()],
        "resources": {"requests": {"cpu": cpu, "memory": memory}, "limits": {"cpu": cpu, "memory": memory}},
    }]}
    if mounts:
        spec["containers"][0]["volumeMounts"] = mounts
    if volumes:
        spec["volumes"] = volumes
    return {"spec": spec}


def job_cluster_spec(image: str = DEFAULT_IMAGE, *, max_workers: int = 4, worker_cpu: str = "2",
                     worker_memory: str = "8Gi", head_cpu: str = "1", head_memory: str = "4Gi") -> dict[str, Any]:
    """A small autoscaling cluster for one run: a head that takes no work and a `cpu` pool that starts empty."""
    # The workers start at zero, so the registry must accept nodes that no *current* Ray node can hold:
    # KubeRay's autoscaler adds the worker once Ray reports the demand.
    env = {ENV["skip_feasibility"]: "1"}
    head = _pod("ray-head", image, head_cpu, head_memory, {ENV["home"]: "/data/fabric", **env},
                mounts=[{"name": "fabric-home", "mountPath": "/data/fabric"}],
                volumes=[{"name": "fabric-home", "emptyDir": {}}])
    head["spec"]["containers"][0]["ports"] = [
        {"containerPort": 6379, "name": "gcs-server"}, {"containerPort": 8265, "name": "dashboard"},
        {"containerPort": 10001, "name": "client"}]
    return {
        "rayVersion": RAY_VERSION,
        "enableInTreeAutoscaling": True,
        "autoscalerOptions": {"upscalingMode": "Default", "idleTimeoutSeconds": 60},
        "headGroupSpec": {"rayStartParams": {"num-cpus": "0"}, "template": head},
        "workerGroupSpecs": [{
            "groupName": "cpu", "replicas": 0, "minReplicas": 0, "maxReplicas": max_workers,
            # A JSON string inside quotes: the format ray start and the autoscaler both read.
            "rayStartParams": {"resources": json.dumps(json.dumps({"pool:cpu": 1000}))},
            "labels": {"fabric.io/pool": "cpu"},
            "template": _pod("ray-worker", image, worker_cpu, worker_memory, env),
        }],
    }


def rayjob_for_dag(spec: Mapping[str, Any] | DagSpec | Path | str, *, name: str | None = None,
                   image: str = DEFAULT_IMAGE, runtime_params: Mapping[str, Any] | None = None,
                   namespace: str = "default", cluster: str | None = None, ttl_seconds_after_finished: int = 600,
                   active_deadline_seconds: int | None = None, max_workers: int = 4) -> dict[str, Any]:
    """The RayJob manifest that runs one DAG with `python -m jobs.run_dag`, the DAG inlined as JSON.

    Pure: it validates the spec and params here (every problem at once) and contacts nothing. With `cluster`,
    the job runs on that existing RayCluster (clusterSelector) instead of a cluster of its own.
    """
    dag = load_spec(spec)
    params = parse_runtime_params(dict(runtime_params) if runtime_params else None)
    spec_json = json.dumps(dag.to_dict(), separators=(",", ":"), sort_keys=True)
    if len(spec_json) > MAX_INLINE_SPEC:
        raise FabricError(f"the DAG is {len(spec_json)} bytes as JSON, more than {MAX_INLINE_SPEC} for a RayJob",
                          code=ErrorCode.SPEC_TOO_LARGE, where="spec",
                          fix="bake the DAG file into the image and run `python -m jobs.run_dag PATH` in a RayJob")
    entrypoint = f"python -m jobs.run_dag {shlex.quote(spec_json)}"
    params_dict = params.model_dump(mode="json", exclude_none=True, exclude_defaults=True)
    if params_dict:
        entrypoint += f" --params {shlex.quote(json.dumps(params_dict, separators=(',', ':'), sort_keys=True))}"
    if name is None:
        name = rayjob_name(dag.pipeline_id, params.submission_id)
    elif not is_dns1035(name):
        raise FabricError(f"{name!r} is not a valid RayJob name", code=ErrorCode.SPEC_FIELD, where="name",
                          fix="at most 47 lowercase letters, digits and '-', starting with a letter")
    labels = {**MANAGED_BY, "app.kubernetes.io/name": "fabric", "app.kubernetes.io/component": "dag"}
    if pipeline_label := _label_value(dag.pipeline_id):
        labels["fabric.io/pipeline-id"] = pipeline_label
    job: dict[str, Any] = {
        "entrypoint": entrypoint,
        "submissionMode": "K8sJobMode",
        # fabric retries nodes itself; a second attempt of the whole job would run the DAG twice.
        "backoffLimit": 0,
    }
    if active_deadline_seconds is not None:
        job["activeDeadlineSeconds"] = active_deadline_seconds
    if cluster:
        job["clusterSelector"] = {"ray.io/cluster": cluster}
    else:
        job.update(shutdownAfterJobFinishes=True, ttlSecondsAfterFinished=ttl_seconds_after_finished,
                   rayClusterSpec=job_cluster_spec(image, max_workers=max_workers))
    return {
        "apiVersion": API_VERSION, "kind": "RayJob",
        "metadata": {"name": name, "namespace": namespace, "labels": labels,
                     "annotations": {"fabric.io/pipeline-id": dag.pipeline_id}},
        "spec": job,
    }


def job_finished(status: Mapping[str, Any]) -> bool:
    # jobStatus turns SUCCEEDED before KubeRay is done with the job (shutdown, TTL): the deployment status decides.
    return status.get("jobDeploymentStatus") in DEPLOYMENT_DONE


def _error(exc: Exception, what: str) -> FabricError:
    """A FabricError from the API server's answer, with its message and every cause it names."""
    status = getattr(exc, "status", None)
    if status is None:  # no answer at all: refused, DNS, TLS
        return FabricError(f"the Kubernetes API server is unreachable: {exc}", code=ErrorCode.GATEWAY_UNREACHABLE,
                           where=what, fix="check --kubeconfig / KUBECONFIG and `kubectl cluster-info`")
    try:
        body = json.loads(getattr(exc, "body", None) or "{}")
    except (TypeError, ValueError):
        body = {}
    body = body if isinstance(body, dict) else {}
    message = body.get("message") or getattr(exc, "reason", None) or f"HTTP {status}"
    causes = (body.get("details") or {}).get("causes") or []
    problems = tuple(Problem(ErrorCode.SPEC_FIELD, str(c.get("field", "")), str(c.get("message", "")))
                     for c in causes if isinstance(c, dict))
    if status == 404:
        return NotFoundError(message, code=ErrorCode.NOT_FOUND, where=what,
                             fix="is KubeRay installed, and is this the right namespace?")
    if status == 409:
        return ConflictError(message, code=ErrorCode.IDEMPOTENCY_CONFLICT, where=what,
                             fix="pick another --name, or delete the existing object first")
    if status in (400, 422):
        return SpecError(message, code=ErrorCode.SPEC_INVALID, where=what, problems=problems,
                         fix="check the manifest against the KubeRay CRD: python -m fabric.k8s_validate FILE")
    if status == 401:
        return FabricError(message, code=ErrorCode.UNAUTHORIZED, where=what, fix="refresh your kubeconfig credentials")
    if status == 403:
        return FabricError(message, code=ErrorCode.FORBIDDEN, where=what,
                           fix=f"ask for RBAC on {GROUP} rayjobs/rayclusters in this namespace")
    return FabricError(f"the Kubernetes API answered {status}: {message}", code=ErrorCode.GATEWAY_UNREACHABLE,
                       where=what, fix="retry; if it persists, check the API server and the KubeRay operator")


def _config_file(kubeconfig: str | Path | None) -> str | None:
    # KUBECONFIG may list several files; the kubernetes client merges them like kubectl when given the whole value.
    return str(kubeconfig) if kubeconfig else os.environ.get("KUBECONFIG") or None


def context_namespace(kubeconfig: str | Path | None = None, context: str | None = None) -> str | None:
    """The namespace of the kubeconfig context (or of this pod's service account), like kubectl; None if unset."""
    try:
        from kubernetes import config
    except ImportError:
        return None
    try:
        contexts, active = config.list_kube_config_contexts(_config_file(kubeconfig))
        chosen = next((c for c in contexts if c.get("name") == context), None) if context else active
        return ((chosen or {}).get("context") or {}).get("namespace") or None
    except (config.ConfigException, OSError, TypeError, ValueError):
        try:
            return Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace").read_text().strip() or None
        except OSError:
            return None


def _api_client(kubeconfig: str | Path | None, context: str | None) -> Any:
    from kubernetes import client, config

    config_file = _config_file(kubeconfig)
    try:
        if config_file or context or Path("~/.kube/config").expanduser().exists() \
                or not os.environ.get("KUBERNETES_SERVICE_HOST"):
            return config.new_client_from_config(config_file=config_file, context=context)
        configuration = client.Configuration()
        config.load_incluster_config(client_configuration=configuration)
        return client.ApiClient(configuration)
    except (config.ConfigException, OSError) as exc:
        raise FabricError(f"no usable Kubernetes configuration: {exc}", code=ErrorCode.NOT_FOUND,
                          where="kubeconfig", fix="pass --kubeconfig, set KUBECONFIG, or run inside a cluster") from exc


class KubeRay:
    """RayJob and RayCluster objects of one namespace through the Kubernetes API (group ray.io, version v1)."""

    def __init__(self, namespace: str | None = None, *, api_client: Any = None,
                 kubeconfig: str | Path | None = None, context: str | None = None,
                 request_timeout_s: float = 30.0) -> None:
        try:
            from kubernetes import client
        except ImportError as exc:
            raise FabricError("the kubernetes client is not installed", code=ErrorCode.NOT_FOUND, where="kubernetes",
                              fix="pip install -e '.[k8s]' (the fabric-ray distribution)") from exc

        if namespace is None:
            namespace = (None if api_client is not None else context_namespace(kubeconfig, context)) or "default"
        self.namespace = namespace
        self.timeout = request_timeout_s
        self.api_client = api_client if api_client is not None else _api_client(kubeconfig, context)
        self.api = client.CustomObjectsApi(self.api_client)

    def _call(self, what: str, method: str, *args: Any, **kwargs: Any) -> Any:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            return getattr(self.api, method)(GROUP, VERSION, *args, _request_timeout=self.timeout, **kwargs)
        except (ApiException, HTTPError, OSError) as exc:
            raise _error(exc, what) from None

    def _create(self, kind: str, manifest: Mapping[str, Any]) -> dict[str, Any]:
        if manifest.get("kind") != kind:
            raise FabricError(f"expected a {kind} manifest, got kind {manifest.get('kind')!r}",
                              code=ErrorCode.SPEC_FIELD, where="kind")
        name = (manifest.get("metadata") or {}).get("name", "")
        namespace = (manifest.get("metadata") or {}).get("namespace") or self.namespace
        # Strict: a real API server rejects unknown fields instead of silently pruning a typo.
        created = self._call(f"{kind}/{name}", "create_namespaced_custom_object", namespace, _PLURALS[kind],
                             dict(manifest), field_validation="Strict")
        if not isinstance(created, dict):
            raise FabricError(f"the API server did not confirm creating {kind}/{name}",
                              code=ErrorCode.GATEWAY_UNREACHABLE, where=f"{kind}/{name}")
        return created

    def _get(self, kind: str, name: str) -> dict[str, Any]:
        return self._call(f"{kind}/{name}", "get_namespaced_custom_object", self.namespace, _PLURALS[kind], name)

    def _list(self, kind: str, label_selector: str | None) -> list[dict[str, Any]]:
        answer = self._call(kind, "list_namespaced_custom_object", self.namespace, _PLURALS[kind],
                            label_selector=label_selector)
        return list(answer.get("items") or [])

    def _delete(self, kind: str, name: str) -> None:
        # Background: the API answers at once; Kubernetes then removes the RayJob's cluster and pods.
        self._call(f"{kind}/{name}", "delete_namespaced_custom_object", self.namespace, _PLURALS[kind], name,
                   propagation_policy="Background")

    def create_rayjob(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        return self._create("RayJob", manifest)

    def get_rayjob(self, name: str) -> dict[str, Any]:
        return self._get("RayJob", name)

    def list_rayjobs(self, label_selector: str | None = None) -> list[dict[str, Any]]:
        return self._list("RayJob", label_selector)

    def delete_rayjob(self, name: str) -> None:
        self._delete("RayJob", name)

    def create_raycluster(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        return self._create("RayCluster", manifest)

    def get_raycluster(self, name: str) -> dict[str, Any]:
        return self._get("RayCluster", name)

    def list_rayclusters(self, label_selector: str | None = None) -> list[dict[str, Any]]:
        return self._list("RayCluster", label_selector)

    def delete_raycluster(self, name: str) -> None:
        self._delete("RayCluster", name)

    def watch_rayjob(self, name: str, timeout_s: float = 3600.0) -> Iterator[dict[str, Any]]:
        """Each new status of the RayJob until it finishes, is deleted, or `timeout_s` passes."""
        from kubernetes import watch
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        self.get_rayjob(name)  # a missing job is NOT_FOUND now, not a silent wait until the timeout
        deadline = time.monotonic() + timeout_s
        last: dict[str, Any] | None = None
        rewatch = False
        while (left := deadline - time.monotonic()) > 0:
            if rewatch:
                time.sleep(min(0.5, left))  # the server closed the watch early: do not spin on reconnects
                left = deadline - time.monotonic()
                if left <= 0:
                    return
            rewatch = True
            watcher = watch.Watch()
            try:
                # The server ends a watch after timeout_seconds; a new one starts with ADDED (the current state).
                for event in watcher.stream(self.api.list_namespaced_custom_object, GROUP, VERSION, self.namespace,
                                            "rayjobs", field_selector=f"metadata.name={name}",
                                            timeout_seconds=max(1, int(left)), _request_timeout=left + self.timeout):
                    if not event:
                        continue
                    if event["type"] == "DELETED":
                        return
                    status = dict((event.get("raw_object") or {}).get("status") or {})
                    if status != last:
                        last = status
                        yield status
                    if job_finished(status):
                        return
            except (ApiException, HTTPError, OSError) as exc:
                raise _error(exc, f"RayJob/{name}") from None
            finally:
                watcher.stop()
