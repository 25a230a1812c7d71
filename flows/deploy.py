"""`mtl deploy`: the work pool, prefect.yaml's deployments and the notification automations, in one
step against the Prefect server at PREFECT_API_URL (README: "Production mode")."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PREFECT_FILE = ROOT / "prefect.yaml"
DEFAULT_POOL = "mtl-cpu"
NOTIFY_ENV = "MTL_NOTIFY_BLOCK"


class DeployError(RuntimeError):
    """The deploy step could not finish: says which part, why, and the fix."""


@dataclass
class Deployed:
    """What `deploy` made or updated, for people to read."""
    api_url: str
    pool: str
    pool_created: bool
    deployments: list[str] = field(default_factory=list)  # "flow-name/deployment-name"
    automations: dict[str, str] = field(default_factory=dict)  # name -> id
    notify_block: str | None = None

    def lines(self) -> list[str]:
        out = [f"Prefect server: {self.api_url}",
               f"work pool {self.pool}: {'created (process)' if self.pool_created else 'exists'}",
               f"deployments ({len(self.deployments)}): " + ", ".join(self.deployments)]
        if self.notify_block is None:
            out.append(f"notifications: none (pass --notify BLOCK or set {NOTIFY_ENV})")
        for name, automation_id in self.automations.items():
            out.append(f"automation {name!r} ({automation_id}) -> {self.notify_block}")
        return out


def prefect_command() -> str:
    # the environment's own prefect (the one `make install` put beside this python), else PATH's
    beside = Path(sys.executable).parent / "prefect"
    found = str(beside) if beside.exists() else shutil.which("prefect")
    if found is None:
        raise DeployError("no `prefect` command beside this Python or on PATH; run `make install` first")
    return found


def run_prefect(args: list[str], env: dict[str, str]) -> str:
    done = subprocess.run([prefect_command(), "--no-prompt", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True)
    if done.returncode:
        raise DeployError(f"`prefect {' '.join(args)}` failed ({done.returncode}) in {ROOT}:\n"
                          f"{done.stdout[-3000:]}{done.stderr[-3000:]}")
    return done.stdout


def ensure_work_pool(pool: str, env: dict[str, str]) -> bool:
    """Create `pool` (type process, Prefect's default job template) if missing; True if created."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(pool)
            return False
        except ObjectNotFound:
            pass
    # the CLI fills in the process worker's base job template; the bare API would store an empty one
    run_prefect(["work-pool", "create", pool, "--type", "process"], env)
    return True


def pooled_prefect_file(pool: str, folder: Path) -> Path:
    """prefect.yaml as it is, or a copy whose deployments all name `pool` (`prefect deploy --all`
    ignores --pool: options on the command line apply to one deployment only)."""
    config = yaml.safe_load(PREFECT_FILE.read_text())
    if {d.get("work_pool", {}).get("name") for d in config.get("deployments", [])} == {pool}:
        return PREFECT_FILE
    for deployment in config.get("deployments", []):
        deployment.setdefault("work_pool", {})["name"] = pool
    copy = folder / "prefect.yaml"
    copy.write_text(yaml.safe_dump(config, sort_keys=False))
    return copy


def deploy_all(pool: str, env: dict[str, str]) -> str:
    """`prefect --no-prompt deploy --all` from the project folder. MTL_PROJECT_DIR is left out: a
    value set here would be baked into the pull step; the worker's environment fills it in."""
    env = {k: v for k, v in env.items() if k != "MTL_PROJECT_DIR"}
    with tempfile.TemporaryDirectory(prefix="mtl-deploy-") as folder:
        prefect_file = pooled_prefect_file(pool, Path(folder))
        return run_prefect(["deploy", "--all", "--prefect-file", str(prefect_file)], env)


# the form fields of `retrain_from_file` and the config values they stand for
FORM_FIELDS = {"steps": "training.steps", "learning_rate": "training.learning_rate",
               "processes": "training.processes", "sharing": "training.sharing", "weighting": "training.weighting",
               "sampler": "training.sampler", "max_train_examples": "tasks[*].max_train_examples",
               "max_dev_examples": "tasks[*].max_dev_examples"}


def file_values(config_path: str) -> dict[str, str]:
    """What each form field of `retrain_from_file` is in the config file, as text."""
    from flows.config import load_config

    config = load_config(ROOT / config_path if not Path(config_path).is_absolute() else config_path)
    t = config.training
    per_task = lambda attr: ", ".join(f"{x.name} {getattr(x, attr)}" for x in config.tasks)  # noqa: E731
    return {"steps": str(t.steps), "learning_rate": f"{t.learning_rate:g}", "processes": str(t.processes),
            "sharing": t.sharing, "weighting": t.weighting, "sampler": t.sampler,
            "max_train_examples": per_task("max_train_examples"), "max_dev_examples": per_task("max_dev_examples")}


def show_file_values() -> list[str]:
    """Each `retrain_from_file` deployment's form says, under every field, the value its config
    file holds (Prefect's form cannot read the file; the field's own default means "the file's").
    Written at deploy time: redeploy after editing the file. Returns the deployments changed."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import DeploymentUpdate

    changed = []
    with get_client(sync_client=True) as client:
        for deployment in client.read_deployments():
            if client.read_flow(deployment.flow_id).name != "retrain-from-file":
                continue
            schema = dict(deployment.parameter_openapi_schema or {})
            props = schema.get("properties") or {}
            path = (deployment.parameters or {}).get("config_path") or props.get("config_path", {}).get("default")
            try:
                values = file_values(str(path))
            except (OSError, ValueError) as exc:  # a config the form cannot describe still deploys
                print(f"form of {deployment.name}: the values of {path} not shown ({exc})")
                continue
            for name, value in values.items():
                if name in props:
                    text = props[name].get("description", "").split(" | in ")[0]
                    props[name]["description"] = f"{text} | in {path}: {value}"
            client.update_deployment(deployment.id, DeploymentUpdate(parameter_openapi_schema=schema))
            changed.append(deployment.name)
    return changed


def deployment_names() -> list[str]:
    """The server's deployments that prefect.yaml defines, as flow-name/deployment-name."""
    from prefect.client.orchestration import get_client

    wanted = {d["name"] for d in yaml.safe_load(PREFECT_FILE.read_text()).get("deployments", [])}
    with get_client(sync_client=True) as client:
        found = [d for d in client.read_deployments() if d.name in wanted]
        flows = {flow_id: client.read_flow(flow_id).name for flow_id in {d.flow_id for d in found}}
    return sorted(f"{flows[d.flow_id]}/{d.name}" for d in found)


def deploy(pool: str = DEFAULT_POOL, notify_block: str | None = None) -> Deployed:
    """The work pool if missing, every deployment of prefect.yaml, and, with a notification block
    ('<block-type-slug>/<name>', default $MTL_NOTIFY_BLOCK), the automations of flows/notify.py."""
    from flows.notify import ensure_automations, parse_block, require_prefect_server

    notify_block = notify_block or os.environ.get(NOTIFY_ENV) or None
    if notify_block:
        parse_block(notify_block)  # a malformed name fails before anything is deployed
    api_url = require_prefect_server("deployments", DeployError)
    env = {**os.environ, "PREFECT_API_URL": api_url}
    made = Deployed(api_url, pool, ensure_work_pool(pool, env), notify_block=notify_block)
    deploy_all(pool, env)
    show_file_values()
    made.deployments = deployment_names()
    if notify_block:
        from flows.notify import FAILED_AUTOMATION, REFUSED_AUTOMATION

        ids = ensure_automations(notify_block)
        made.automations = dict(zip((FAILED_AUTOMATION, REFUSED_AUTOMATION), ids))
    return made
