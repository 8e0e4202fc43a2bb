"""Offline checks of the cluster definitions in this folder: each returns a list of problems ([] = fine).

A cluster config is only read for real when someone pays for machines, so mistakes surface late and
expensively. These checks run in the test suite instead: launcher YAMLs against the schema shipped in
the ray wheel, KubeRay manifests against the rules the operator's CRDs and webhook enforce, both for
our security stance (no public dashboard / jobs port, token auth on), that each cluster publishes the
limits `alexnet train` judges requests by (`cluster/limits.py`), and every `alexnet ...` command, project
file and Dockerfile source they mention against this checkout.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shlex
from pathlib import Path

import yaml

CLUSTER_DIR = Path(__file__).resolve().parent
PROJECT_ROOT = CLUSTER_DIR.parent
RAY_PORTS = {6379, 8265, 10001}  # GCS, dashboard + jobs API, Ray Client
MIN_AUTH_RAY = (2, 52)  # first Ray with token authentication
# An `alexnet` or `python -m jobs.cli` command at the start of a (comment) line, after a YAML key or a
# shell separator, up to the next separator or the end of the line; not `alexnet train: ...` (its output).
COMMAND = re.compile(r"(?m)(?:^[ \t#-]*(?:\w+:[ \t]*)?|[;&][ \t]*)(?:alexnet|python -m jobs\.cli)[ \t]+"
                     r"(?![\w-]+:)([^;&|#\n]*)")
PROJECT_PATH = re.compile(r"(?<![\w/~.$-])((?:cluster|jobs|pipeline|trainer|configs|benchmarks)/[\w./-]*\w)")


def launcher_configs() -> list[Path]:
    return sorted(CLUSTER_DIR.glob("*.yaml"))


def kuberay_manifests() -> list[Path]:
    return sorted((CLUSTER_DIR / "kuberay").glob("*.yaml"))


def check_launcher_config(path: Path) -> list[str]:
    import jsonschema
    import ray

    config = yaml.safe_load(path.read_text())
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    problems = [f"schema: {'/'.join(map(str, e.path))}: {e.message}"
                for e in jsonschema.Draft7Validator(schema).iter_errors(config)]
    types = config.get("available_node_types", {})
    if config.get("head_node_type") not in types:
        problems.append(f"head_node_type {config.get('head_node_type')!r} is not in available_node_types")
    workers = {name: t for name, t in types.items() if name != config.get("head_node_type")}
    gpu_types = [t for t in workers.values() if t.get("resources", {}).get("GPU", 0)]
    if not gpu_types or any(t["resources"]["GPU"] < 2 or t["resources"]["GPU"] % 2 for t in gpu_types):
        problems.append("GPU worker types must exist and have an even number (>= 2) of GPUs: one replica per pair")
    if not any(not t.get("resources", {}).get("GPU") and t.get("resources", {}).get("CPU") for t in workers.values()):
        problems.append("no CPU-only worker type for sharding")
    for name, t in workers.items():
        if not 0 <= t.get("min_workers", 0) <= t.get("max_workers", -1):
            problems.append(f"node type {name}: needs 0 <= min_workers <= max_workers")
    starts = {"head": config.get("head_start_ray_commands", []), "worker": config.get("worker_start_ray_commands", [])}
    for role, commands in starts.items():
        ray_start = [c for c in commands if "ray start" in c]
        if not ray_start or not all("RAY_AUTH_MODE=token" in c for c in ray_start):
            problems.append(f"{role}_start_ray_commands: `ray start` must run with RAY_AUTH_MODE=token")
    if any("--dashboard-host" in c and "--dashboard-host=127.0.0.1" not in c for c in starts["head"]) or not any(
            "--dashboard-host=127.0.0.1" in c for c in starts["head"]):
        problems.append("the head must bind the dashboard / jobs API to 127.0.0.1 (reach it with `ray dashboard`)")
    for rule in config.get("provider", {}).get("security_group", {}).get("IpPermissions", []):
        exposed = [p for p in RAY_PORTS if rule.get("FromPort", 0) <= p <= rule.get("ToPort", 65535)]
        if exposed and any(r.get("CidrIp") == "0.0.0.0/0" for r in rule.get("IpRanges", [])):
            problems.append(f"security group opens Ray ports {exposed} to the internet")
    installs = [c for c in config.get("head_setup_commands", []) + config.get("worker_setup_commands", [])
                if "pip install" in c and "alexnet-ray" in c]
    if not installs:
        problems.append("no setup command installs this project")
    for remote, local in config.get("file_mounts", {}).items():
        if not str(local).startswith("~") and not (PROJECT_ROOT / local).exists():
            problems.append(f"file_mounts {remote}: {local} does not exist in the project")
    return problems + check_references(path)


def check_kuberay_manifest(path: Path) -> list[str]:
    problems = []
    for doc in yaml.safe_load_all(path.read_text()):
        kind = doc.get("kind")
        where = f"{kind} {doc.get('metadata', {}).get('name')}"
        if doc.get("apiVersion") != "ray.io/v1" or kind not in ("RayCluster", "RayJob"):
            problems.append(f"{where}: expected apiVersion ray.io/v1 and kind RayCluster or RayJob")
            continue
        name = doc.get("metadata", {}).get("name", "")
        if not re.fullmatch(r"[a-z]([-a-z0-9]{0,45}[a-z0-9])?", name):
            problems.append(f"{where}: metadata.name must be a lowercase DNS label of at most 47 characters")
        spec = doc.get("spec") or {}
        if kind == "RayJob":
            if not spec.get("entrypoint"):
                problems.append(f"{where}: spec.entrypoint is required")
            if ("rayClusterSpec" in spec) == ("clusterSelector" in spec):
                problems.append(f"{where}: exactly one of rayClusterSpec and clusterSelector")
            if spec.get("submissionMode", "K8sJobMode") not in ("K8sJobMode", "HTTPMode", "SidecarMode",
                                                                 "InteractiveMode"):
                problems.append(f"{where}: unknown submissionMode {spec.get('submissionMode')!r}")
            if "rayClusterSpec" in spec and not spec.get("shutdownAfterJobFinishes"):
                problems.append(f"{where}: set shutdownAfterJobFinishes so its GPUs are released")
            spec = spec.get("rayClusterSpec") or {}
        problems += [f"{where}: {p}" for p in _check_ray_cluster_spec(spec)]
    return problems + check_references(path)


def _check_ray_cluster_spec(spec: dict) -> list[str]:
    problems = []
    version = tuple(int(x) for x in re.findall(r"\d+", str(spec.get("rayVersion", "0")))[:2])
    if (spec.get("authOptions") or {}).get("mode") != "token":
        problems.append("authOptions.mode must be token")
    elif version < MIN_AUTH_RAY:
        problems.append(f"rayVersion {spec.get('rayVersion')!r}: token auth needs Ray >= 2.52")
    head = spec.get("headGroupSpec")
    if not head:
        return problems + ["spec.headGroupSpec is required"]
    if head.get("serviceType", "ClusterIP") != "ClusterIP" or spec.get("headServiceAnnotations"):
        problems.append("the head Service must stay ClusterIP (reach it with kubectl port-forward)")
    groups = spec.get("workerGroupSpecs") or []
    for label, group in [("headGroupSpec", head)] + [(f"worker group {g.get('groupName')}", g) for g in groups]:
        problems += [f"{label}: {p}" for p in _check_group(group)]
    names = [g.get("groupName") for g in groups]
    if not all(names) or len(set(names)) != len(names):
        problems.append("every workerGroupSpec needs a unique groupName")
    gpus = [int(_limits(g).get("nvidia.com/gpu", 0)) for g in groups]
    if any(n % 2 for n in gpus) or not any(gpus):
        problems.append("GPU worker groups must exist and request an even number of GPUs (one replica per pair)")
    return problems + _check_published_limits(spec)


def _check_published_limits(spec: dict) -> list[str]:
    """The head publishes its own RayCluster's limits, and those match what its pods really have."""
    from cluster.limits import autoscaler_config_from_manifest

    problems = []
    head = spec["headGroupSpec"]
    container = ((head.get("template") or {}).get("spec", {}).get("containers") or [{}])[0]
    hook = " ".join(((container.get("lifecycle") or {}).get("postStart") or {}).get("exec", {}).get("command") or [])
    if "python -m cluster.limits --kuberay" not in hook:
        problems.append("the head must publish the cluster's limits: a lifecycle.postStart hook running "
                        "`python -m cluster.limits --kuberay CLUSTER --namespace NS`")
    else:
        env = {e.get("name"): ((e.get("valueFrom") or {}).get("fieldRef") or {}).get("fieldPath")
               for e in container.get("env") or []}
        for flag, field in (("--kuberay", "metadata.labels['ray.io/cluster']"), ("--namespace", "metadata.namespace")):
            var = re.search(flag + r"""\s+["']?\$\{?(\w+)""", hook)
            if not var or env.get(var.group(1)) != field:
                problems.append(f"the limits publisher's {flag} must come from the head pod's own {field} "
                                f"(an env var with valueFrom.fieldRef), or it publishes another cluster's limits")
    for group in spec.get("workerGroupSpecs") or []:
        params, limits = group.get("rayStartParams") or {}, _limits(group)
        for param, limit in (("num-gpus", "nvidia.com/gpu"), ("num-cpus", "cpu")):
            if param in params and limit in limits and str(params[param]) != str(limits[limit]):
                problems.append(f"worker group {group.get('groupName')}: rayStartParams {param} {params[param]!r} "
                                f"disagrees with its container's {limit} limit {limits[limit]!r}: "
                                f"the published limits would not be what the pods have")
    try:
        autoscaler_config_from_manifest({"kind": "RayCluster", "metadata": {"name": "check"}, "spec": spec})
    except Exception as e:  # Ray's own reading of the worker groups, the one the publisher and autoscaler use
        problems.append(f"KubeRay's autoscaler cannot read the worker groups' limits: {e}")
    return problems


def _check_group(group: dict) -> list[str]:
    problems = []
    params = group.get("rayStartParams")
    if not isinstance(params, dict) or any(not isinstance(v, str) for v in params.values()):
        problems.append("rayStartParams must be a map of strings (the CRD rejects numbers and booleans)")
    containers = (((group.get("template") or {}).get("spec") or {}).get("containers")) or []
    if not containers or not all(c.get("name") and c.get("image") for c in containers):
        problems.append("template.spec.containers needs at least one container with name and image")
    if "groupName" in group:
        low, high = group.get("minReplicas", 0), group.get("maxReplicas", 2**31)
        if not low <= group.get("replicas", low) <= high:
            problems.append("needs minReplicas <= replicas <= maxReplicas")
    return problems


def _limits(group: dict) -> dict:
    containers = group.get("template", {}).get("spec", {}).get("containers", [{}])
    return (containers[0].get("resources") or {}).get("limits") or {}


def check_references(path: Path) -> list[str]:
    """Every `alexnet` command parses with the real CLI; every project path and Dockerfile source exists."""
    text = path.read_text()
    problems = check_commands(text)
    for rel in PROJECT_PATH.findall(text):
        if not (PROJECT_ROOT / rel).exists():
            problems.append(f"names {rel}, which this project does not have")
    for dockerfile in re.findall(r"-f\s+(\S*Dockerfile)", text):
        problems += check_dockerfile(PROJECT_ROOT / dockerfile)
    return problems


def check_commands(text: str) -> list[str]:
    """Every `alexnet ...` / `python -m jobs.cli ...` command in text parses with the real CLI parser."""
    from jobs.parser import build_parser

    problems = []
    for match in COMMAND.finditer(text):
        argv = shlex.split(match.group(1))
        try:
            with contextlib.redirect_stderr(io.StringIO()):  # argparse's usage text; the problem says it
                args = build_parser().parse_args(argv)
            if args.command == "submit":  # the job's own command, after `--`
                    build_parser().parse_args([a for a in args.job if a != "--"][:1] + args.job[2:])
        except SystemExit:
            problems.append(f"`alexnet {' '.join(argv)}` is not a valid command of this project")
    return problems


def check_dockerfile(path: Path) -> list[str]:
    if not path.is_file():
        return [f"{path.relative_to(PROJECT_ROOT)} does not exist"]
    problems = []
    for line in path.read_text().splitlines():
        if line.startswith(("COPY", "ADD")):
            sources = [w for w in shlex.split(line)[1:] if not w.startswith("--")][:-1]
            problems += [f"{path.name}: {line!r}: {s} does not exist" for s in sources
                         if not (PROJECT_ROOT / s).exists()]
    return problems
