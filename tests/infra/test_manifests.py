"""The Kubernetes manifests (infra/k8s): what can be checked without a cluster.

Every overlay is rendered with ``kubectl kustomize`` from a copy of infra/k8s in which the
committed ``*.env.example`` templates stand in for the Secrets' env files (a developer's real
``*.env`` files are left out of the copy), and every rendered document is validated, strictly
(no unknown fields), against the Kubernetes API's JSON schemas that the kubernetes-validate
package bundles (offline). Then the properties that make the stack start and keep credentials
out of it: resources, security contexts and probes on every container, references that
resolve, MLflow's flags as the installed mlflow knows them, settings that Settings accepts,
Secrets only from the generator, set-up Jobs that wait for their services.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "infra" / "k8s"
SECRETS_DIR = K8S / "components" / "secrets"
OVERLAYS = sorted(p.parent.name for p in (K8S / "overlays").glob("*/kustomization.yaml"))
# The oldest Kubernetes minor still commonly run, and the newest the schemas cover.
SCHEMA_VERSIONS = ("1.30.0", "1.37.0")
WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob", "Pod")
LONG_RUNNING = ("Deployment", "StatefulSet", "DaemonSet")
CREDENTIAL_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY|CREDENTIAL|PRIVATE", re.I)
URL_PASSWORD = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]+:([^@\s/]*)@")
VAR_REF = re.compile(r"\$\((\w+)\)")


# ---- rendering --------------------------------------------------------------------------------------


def _kubectl() -> str:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail(
            "kubectl is not installed: it renders the manifests (`kubectl kustomize`, offline). "
            "Install kubectl >= 1.27 (it bundles kustomize v5) and run the tests again."
        )
    return kubectl


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    kubectl = _kubectl()
    tree = tmp_path_factory.mktemp("k8s") / "k8s"
    shutil.copytree(K8S, tree, ignore=shutil.ignore_patterns("*.env"))
    for example in tree.rglob("*.env.example"):
        shutil.copyfile(example, example.with_suffix(""))
    out = {}
    for overlay in OVERLAYS:
        proc = subprocess.run(
            [kubectl, "kustomize", str(tree / "overlays" / overlay)], capture_output=True, text=True, timeout=300
        )
        assert proc.returncode == 0, f"kubectl kustomize overlays/{overlay} failed:\n{proc.stderr}"
        out[overlay] = [d for d in yaml.safe_load_all(proc.stdout) if d]
    return out


def _docs(rendered: dict[str, list[dict[str, Any]]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for overlay, docs in rendered.items():
        for doc in docs:
            yield overlay, doc


def _name(overlay: str, doc: dict[str, Any]) -> str:
    return f"{overlay}: {doc['kind']}/{doc['metadata']['name']}"


def _pod_spec(doc: dict[str, Any]) -> dict[str, Any] | None:
    if doc["kind"] not in WORKLOADS:
        return None
    if doc["kind"] == "Pod":
        return doc["spec"]
    spec = doc["spec"]["jobTemplate"]["spec"] if doc["kind"] == "CronJob" else doc["spec"]
    return spec["template"]["spec"]


def _containers(pod: dict[str, Any], init: bool = True) -> list[dict[str, Any]]:
    return list(pod.get("containers", [])) + (list(pod.get("initContainers", [])) if init else [])


def _by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def test_every_overlay_renders(rendered):
    assert {"local", "gpu"} <= set(OVERLAYS)
    for overlay, docs in rendered.items():
        kinds = {d["kind"] for d in docs}
        assert {"Namespace", "ConfigMap", "Secret", "Service", "Deployment", "StatefulSet", "Job"} <= kinds, overlay
        assert "CronJob" not in kinds, "scheduling is a KFP recurring run (`unlearn schedule create`), not a CronJob"
        names = [(d["kind"], d["metadata"]["name"]) for d in docs]
        assert len(names) == len(set(names)), f"{overlay}: duplicate objects"
        for doc in docs:
            if doc["kind"] != "Namespace":
                assert doc["metadata"].get("namespace") == "unlearn", _name(overlay, doc)


# ---- schemas ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", SCHEMA_VERSIONS)
def test_every_document_validates_against_the_kubernetes_schemas(rendered, version):
    import kubernetes_validate

    errors = []
    for overlay, doc in _docs(rendered):
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as err:
            where = "/".join(str(p) for p in err.path)
            errors.append(f"{_name(overlay, doc)} at {where or '/'}: {err.message}")
        except kubernetes_validate.SchemaNotFoundError as err:  # a CRD: no bundled schema
            errors.append(f"{_name(overlay, doc)}: {err.message}")
    assert not errors, f"invalid against Kubernetes {version}:\n" + "\n".join(errors)


# ---- pods -------------------------------------------------------------------------------------------


def test_every_container_has_requests_limits_and_a_restricted_security_context(rendered):
    problems = []
    for overlay, doc in _docs(rendered):
        pod = _pod_spec(doc)
        if pod is None:
            continue
        where = _name(overlay, doc)
        pod_sc = pod.get("securityContext", {})
        if pod.get("automountServiceAccountToken") is not False:
            problems.append(f"{where}: mounts a service account token it does not need")
        for c in _containers(pod):
            at = f"{where} container {c['name']}"
            res = c.get("resources", {})
            for kind in ("requests", "limits"):
                missing = {"cpu", "memory"} - set(res.get(kind, {}))
                if missing:
                    problems.append(f"{at}: no {kind} for {', '.join(sorted(missing))}")
            sc = c.get("securityContext", {})
            if sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is not True:
                problems.append(f"{at}: runAsNonRoot is not true")
            uid = sc.get("runAsUser", pod_sc.get("runAsUser"))
            if not isinstance(uid, int) or uid == 0:
                problems.append(f"{at}: no non-zero runAsUser (images may default to root)")
            if sc.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{at}: allowPrivilegeEscalation is not false")
            if sc.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{at}: readOnlyRootFilesystem is not true")
            if "ALL" not in sc.get("capabilities", {}).get("drop", []) or sc.get("capabilities", {}).get("add"):
                problems.append(f"{at}: capabilities are not drop [ALL]")
            seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile", {}))
            if seccomp.get("type") != "RuntimeDefault":
                problems.append(f"{at}: seccompProfile is not RuntimeDefault")
            if sc.get("privileged"):
                problems.append(f"{at}: privileged")
    assert not problems, "\n".join(problems)


def test_long_running_containers_have_probes(rendered):
    problems = []
    for overlay, doc in _docs(rendered):
        if doc["kind"] not in LONG_RUNNING:
            continue
        for c in _containers(_pod_spec(doc), init=False):
            for probe in ("readinessProbe", "livenessProbe"):
                if probe not in c:
                    problems.append(f"{_name(overlay, doc)} container {c['name']}: no {probe}")
            ports = {p.get("name") for p in c.get("ports", [])}
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                port = c.get(probe, {}).get("httpGet", {}).get("port")
                if isinstance(port, str) and port not in ports:
                    problems.append(f"{_name(overlay, doc)} {probe}: no container port named {port}")
    assert not problems, "\n".join(problems)


def test_images_are_pinned_and_the_project_image_is_this_version(rendered):
    from importlib.metadata import version

    from unlearn_lib.settings import IMAGE_REPOSITORY

    for overlay, doc in _docs(rendered):
        pod = _pod_spec(doc)
        for c in _containers(pod) if pod else []:
            image = c["image"]
            repo, _, tag = image.rpartition(":")
            assert repo and tag and tag != "latest" and "/" not in tag, f"{_name(overlay, doc)}: unpinned image {image}"
            if repo == IMAGE_REPOSITORY:
                assert tag.startswith(version("unlearn-lib")), f"{overlay}: {image} is not this version's image"
    settings = _by_kind(rendered["gpu"], "ConfigMap")["unlearn-settings"]["data"]
    assert settings["UNLEARN_PIPELINE_IMAGE"].startswith(f"{IMAGE_REPOSITORY}:{version('unlearn-lib')}-cu")


def test_references_resolve(rendered):
    """Every ConfigMap, Secret, key, ServiceAccount, $(VAR) and Service selector names something
    that the overlay renders: a dangling one keeps a pod from starting (or, for $(VAR), passes
    the text through unexpanded)."""
    problems = []
    for overlay, docs in rendered.items():
        config_maps = {n: d.get("data", {}) for n, d in _by_kind(docs, "ConfigMap").items()}
        secrets = {n: d.get("data", {}) for n, d in _by_kind(docs, "Secret").items()}
        accounts = set(_by_kind(docs, "ServiceAccount"))
        pod_labels = []
        for doc in docs:
            pod = _pod_spec(doc)
            if pod is None:
                continue
            where = _name(overlay, doc)
            pod_labels.append((doc, doc["spec"].get("template", {}).get("metadata", {}).get("labels", {})))
            if pod.get("serviceAccountName", "default") not in accounts | {"default"}:
                problems.append(f"{where}: ServiceAccount {pod['serviceAccountName']} not rendered")
            for vol in pod.get("volumes", []):
                if "configMap" in vol and vol["configMap"]["name"] not in config_maps:
                    problems.append(f"{where}: volume {vol['name']}: no ConfigMap {vol['configMap']['name']}")
                if "secret" in vol and vol["secret"]["secretName"] not in secrets:
                    problems.append(f"{where}: volume {vol['name']}: no Secret {vol['secret']['secretName']}")
            mounts_ok = {v["name"] for v in pod.get("volumes", [])} | {
                t["metadata"]["name"] for t in doc["spec"].get("volumeClaimTemplates", [])
            }
            for c in _containers(pod):
                at = f"{where} container {c['name']}"
                for m in c.get("volumeMounts", []):
                    if m["name"] not in mounts_ok:
                        problems.append(f"{at}: mounts unknown volume {m['name']}")
                names: set[str] = set()
                for src in c.get("envFrom", []):
                    for kind, pool in (("configMapRef", config_maps), ("secretRef", secrets)):
                        if kind in src:
                            if src[kind]["name"] not in pool:
                                problems.append(f"{at}: envFrom {kind} {src[kind]['name']} not rendered")
                            names |= set(pool.get(src[kind]["name"], {}))
                for env in c.get("env", []):
                    for ref in VAR_REF.findall(env.get("value", "")):
                        if ref not in names:  # only variables defined earlier in the list expand
                            problems.append(f"{at}: env {env['name']} uses $({ref}) before it is defined")
                    names.add(env["name"])
                    source = env.get("valueFrom", {})
                    for kind, pool in (("configMapKeyRef", config_maps), ("secretKeyRef", secrets)):
                        if kind in source:
                            ref = source[kind]
                            if ref["key"] not in pool.get(ref["name"], {}):
                                problems.append(f"{at}: env {env['name']}: no key {ref['key']} in {ref['name']}")
                for arg in c.get("command", []) + c.get("args", []):
                    for ref in VAR_REF.findall(arg):
                        if ref not in names:
                            problems.append(f"{at}: $({ref}) in its command line is no environment variable")
        for name, svc in _by_kind(docs, "Service").items():
            selector = svc["spec"].get("selector", {})
            matches = [d for d, labels in pod_labels if selector and selector.items() <= labels.items()]
            if len(matches) != 1:
                problems.append(f"{overlay}: Service {name} selects {len(matches)} workloads")
                continue
            ports = {p.get("name") for c in _containers(_pod_spec(matches[0]), init=False) for p in c.get("ports", [])}
            for p in svc["spec"]["ports"]:
                if isinstance(p.get("targetPort"), str) and p["targetPort"] not in ports:
                    problems.append(f"{overlay}: Service {name}: no container port named {p['targetPort']}")
    assert not problems, "\n".join(problems)


# ---- credentials ------------------------------------------------------------------------------------


def test_no_literal_credentials_in_the_rendered_manifests(rendered):
    problems = []
    for overlay, doc in _docs(rendered):
        where = _name(overlay, doc)
        if doc["kind"] == "Secret":
            continue  # test_secrets_come_only_from_the_generator
        for text in _strings(doc):
            for password in URL_PASSWORD.findall(text):
                if not re.fullmatch(r"\$\(\w+\)", password):
                    problems.append(f"{where}: a URL with a literal password: {URL_PASSWORD.sub('…@', text)[:120]}")
        if doc["kind"] == "ConfigMap":
            for key in doc.get("data", {}):
                if CREDENTIAL_NAME.search(key):
                    problems.append(f"{where}: credential-like key {key} in a ConfigMap")
        pod = _pod_spec(doc)
        for c in _containers(pod) if pod else []:
            for env in c.get("env", []):
                if CREDENTIAL_NAME.search(env["name"]) or env["name"] == "AWS_ACCESS_KEY_ID":
                    if "secretKeyRef" not in env.get("valueFrom", {}):
                        problems.append(f"{where} container {c['name']}: {env['name']} is not from a Secret")
    assert not problems, "\n".join(problems)


def _generator() -> dict[str, Any]:
    return yaml.safe_load((SECRETS_DIR / "kustomization.yaml").read_text())


def _env_file(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            out[key.strip()] = value
    return out


def test_secrets_come_only_from_the_generator_fed_by_gitignored_env_files(rendered):
    import base64

    generated = {}
    for gen in _generator()["secretGenerator"]:
        assert set(gen) <= {"name", "envs", "options", "type"}, f"{gen['name']}: literals or files in the generator"
        (env,) = gen["envs"]
        example = SECRETS_DIR / f"{env}.example"
        assert example.is_file(), f"no template {example.name} for {env}"
        values = _env_file(example)
        assert all(v == "" for v in values.values()), f"{example.name} must not hold values, only names"
        generated[gen["name"]] = values
        ignored = subprocess.run(
            ["git", "-C", str(ROOT), "check-ignore", "-q", str((SECRETS_DIR / env).relative_to(ROOT))]
        )
        assert ignored.returncode == 0, f"{SECRETS_DIR.relative_to(ROOT) / env} is not gitignored"
    assert _generator()["generatorOptions"]["disableNameSuffixHash"] is True, "the steps name the Secrets exactly"
    for overlay, docs in rendered.items():
        secrets = _by_kind(docs, "Secret")
        assert set(secrets) == set(generated), overlay
        for name, secret in secrets.items():
            data = {k: base64.b64decode(v).decode() for k, v in secret.get("data", {}).items()}
            assert data == generated[name], f"{overlay}: Secret {name} is not what its template generates"
            assert not secret.get("stringData")
    # No Secret is written out anywhere else in the manifests.
    for path in K8S.rglob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            assert not (doc and doc.get("kind") == "Secret"), f"{path.relative_to(ROOT)} holds a Secret"
    for path in K8S.rglob("kustomization.yaml"):
        for gen in yaml.safe_load(path.read_text()).get("secretGenerator", []):
            assert path.parent == SECRETS_DIR, f"{path.relative_to(ROOT)}: secrets belong in components/secrets"
            assert "literals" not in gen and "files" not in gen


def test_the_secrets_are_the_ones_the_pipeline_reads(rendered):
    """Names and keys the pipeline's steps read (infra/README.md lists them)."""
    expected = {
        "unlearn-s3": {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"},
        "unlearn-state-db": {"UNLEARN_STATE_DB_PASSWORD"},
        "unlearn-mlflow-auth": {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"},
    }
    from pipelines import compliance

    declared = getattr(compliance, "SECRETS", None)
    if declared is not None:  # the pipeline's own list, where it has one
        expected = {name: set(keys) for name, (keys, _optional) in declared.items()}
    for overlay, docs in rendered.items():
        secrets = _by_kind(docs, "Secret")
        for name, keys in expected.items():
            assert name in secrets, f"{overlay}: no Secret {name}"
            missing = keys - set(secrets[name]["data"])
            assert not missing, f"{overlay}: Secret {name} lacks {missing}"


# ---- settings ---------------------------------------------------------------------------------------


def test_settings_config_map_holds_known_settings_without_credentials(rendered):
    from unlearn_lib.redact import split_url_password
    from unlearn_lib.settings import ENV_PREFIX, Settings

    known = {f"{ENV_PREFIX}{field.upper()}" for field in Settings.model_fields}
    from pipelines import compliance

    read_by_steps = set(getattr(compliance, "SETTINGS_KEYS", ()))
    for overlay, docs in rendered.items():
        data = _by_kind(docs, "ConfigMap")["unlearn-settings"]["data"]
        assert set(data) <= known, f"{overlay}: not settings fields: {sorted(set(data) - known)}"
        # kfp-kubernetes maps each key on its own: a key missing here keeps the step's pod from starting.
        assert read_by_steps <= set(data), f"{overlay}: keys the steps read are missing: {read_by_steps - set(data)}"
        settings = Settings.load(path=None, env=data)  # valid values; empty ones mean "not set"
        assert settings.state_db_url and split_url_password(settings.state_db_url)[1] is None
        assert settings.state_db_url.startswith("postgresql+psycopg://")  # the driver the image has
        assert settings.s3_bucket and settings.mlflow_tracking_uri


# ---- the services -----------------------------------------------------------------------------------


def _container(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return _containers(_pod_spec(_by_kind(docs, kind)[name]), init=False)[0]


def _flags(args: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for arg in args:
        if arg.startswith("--"):
            key, eq, value = arg.partition("=")
            out[key] = value if eq else ""
    return out


def test_mlflow_server_uses_postgresql_s3_basic_auth_and_host_checks(rendered):
    from mlflow.cli import server

    known = {opt: p for p in server.params for opt in p.opts}
    for docs in rendered.values():
        c = _container(docs, "Deployment", "mlflow")
        assert c["command"] == ["mlflow"] and c["args"][0] == "server"
        flags = _flags(c["args"][1:])
        assert set(flags) <= set(known), f"flags the installed mlflow does not know: {set(flags) - set(known)}"
        backend = flags["--backend-store-uri"]
        assert backend.startswith("postgresql+psycopg://"), backend
        assert URL_PASSWORD.findall(backend) == ["$(MLFLOW_DB_PASSWORD)"]
        hosts = flags["--allowed-hosts"].split(",")
        assert hosts and "*" not in hosts and "mlflow:*" in hosts
        assert flags["--artifacts-destination"].startswith("s3://")
        assert "--serve-artifacts" in flags
        assert flags["--app-name"] == "basic-auth" and "basic-auth" in known["--app-name"].type.choices
        env = {e["name"]: e for e in c["env"]}
        for name in ("MLFLOW_AUTH_ADMIN_USERNAME", "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"):
            assert env[name]["valueFrom"]["secretKeyRef"]["name"] == "unlearn-mlflow-admin"
        assert "MLFLOW_AUTH_CONFIG_PATH" in env
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert c[probe]["httpGet"]["path"] == "/health"  # exempt from auth and host checks
        # The init container writes the auth config where the server reads it, after the databases exist.
        (init,) = _pod_spec(_by_kind(docs, "Deployment")["mlflow"])["initContainers"]
        assert "mlflow-init" in init["args"] and env["MLFLOW_AUTH_CONFIG_PATH"]["value"] in init["args"]


def test_postgres_takes_its_password_from_a_secret_and_is_probed_with_pg_isready(rendered):
    for docs in rendered.values():
        c = _container(docs, "StatefulSet", "postgres")
        env = {e["name"]: e for e in c["env"]}
        assert env["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "unlearn-postgres"
        for probe in ("readinessProbe", "livenessProbe"):
            assert c[probe]["exec"]["command"][0] == "pg_isready"
        assert _by_kind(docs, "StatefulSet")["postgres"]["spec"]["volumeClaimTemplates"]


def _job(docs: list[dict[str, Any]], task: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The Job whose main container runs bootstrap.py's ``task``, and its pod spec."""
    for job in _by_kind(docs, "Job").values():
        pod = _pod_spec(job)
        if any(task in c.get("args", []) for c in pod["containers"]):
            return job, pod
    raise AssertionError(f"no Job runs bootstrap.py {task}")


@pytest.mark.parametrize(
    ("task", "waits_for"),
    [
        ("bucket", "http://minio:9000/minio/health/ready"),
        ("db-setup", "postgres"),
        ("mlflow-user", "http://mlflow:5000/health"),
    ],
)
def test_set_up_jobs_wait_for_their_service_and_retry(rendered, task, waits_for):
    for overlay, docs in rendered.items():
        job, pod = _job(docs, task)
        assert job["spec"]["backoffLimit"] >= 3, f"{overlay}: {task} is not retried"
        assert pod["restartPolicy"] in ("Never", "OnFailure")
        inits = pod.get("initContainers", [])
        assert any(waits_for in c.get("args", []) and c["args"][0].startswith("wait-") for c in inits), (
            f"{overlay}: the {task} Job does not wait for {waits_for} first"
        )
        annotations = job["spec"]["template"]["metadata"].get("annotations", {})
        assert annotations.get("sidecar.istio.io/inject") == "false", "an Istio sidecar never lets a Job finish"


def test_bucket_job_creates_the_settings_bucket_with_the_s3_secret(rendered):
    for docs in rendered.values():
        _, pod = _job(docs, "bucket")
        (c,) = pod["containers"]
        assert {"configMapRef": {"name": "unlearn-settings"}} in c["envFrom"]
        refs = {e["name"]: e["valueFrom"]["secretKeyRef"]["name"] for e in c["env"] if "valueFrom" in e}
        assert refs == {"AWS_ACCESS_KEY_ID": "unlearn-s3", "AWS_SECRET_ACCESS_KEY": "unlearn-s3"}


def test_the_bootstrap_script_is_the_one_in_the_config_map(rendered):
    script = (K8S / "base" / "bootstrap.py").read_text()
    for overlay, docs in rendered.items():
        maps = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("unlearn-bootstrap")]
        assert len(maps) == 1 and maps[0]["data"]["bootstrap.py"] == script, overlay


def test_no_reference_to_the_removed_cron_job():
    for path in [ROOT / "README.md", ROOT / "infra" / "README.md", *K8S.rglob("*.yaml")]:
        assert "batched-deletions" not in path.read_text(), f"{path.relative_to(ROOT)} names the removed CronJob"


def test_the_project_image_can_run_mlflow_with_basic_auth():
    # `mlflow server --app-name basic-auth` needs Flask-WTF: mlflow[auth] in the image.
    import tomllib
    from packaging.requirements import Requirement

    deps = [Requirement(d) for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]]
    assert any(r.name == "mlflow" and "auth" in r.extras for r in deps) or any(r.name == "flask-wtf" for r in deps)
