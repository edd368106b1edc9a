"""The Kubernetes tuning driver against the API emulator the job API tests use: trials as
Jobs with the job API's manifests, at most min(parallel, quota) at once, the quota cap said,
pruning deletes the Job, a failed Job fails its trial, the best trial registered."""

from __future__ import annotations

import contextlib
import json
import math
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace

import pytest

pytest.importorskip("kubernetes", reason="the `kubernetes` extra is not installed")
pytest.importorskip("kmock")
pytest.importorskip("optuna", reason="the `tune` extra is not installed")

import boto3  # noqa: E402
from kubernetes import client  # noqa: E402
from moto import mock_aws  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from tests.jobs_support import (  # noqa: E402
    REGION,
    TRAIN_REPO,
    aws_descriptor,
    push_image,
    terminated,
)
from tests.kube_emulator import kube_emulator  # noqa: E402
from workloads.cli import app  # noqa: E402
from workloads.jobs.kubernetes import KubernetesJobs  # noqa: E402
from workloads.jobs.kubernetes_manifest import JOB_LABEL  # noqa: E402
from workloads.jobs.kubernetes_quota import fit  # noqa: E402
from workloads.training.metric_line import format_metric  # noqa: E402
from workloads.tuning.kubernetes import (  # noqa: E402
    JOB_ATTR,
    STARTED,
    KubernetesTuner,
    TrialJobs,
)
from workloads.tuning.run import tune_kubernetes  # noqa: E402
from workloads.tuning.space import parse_space  # noqa: E402
from workloads.tuning.study import TuningError, flock  # noqa: E402

NS = "vision"
DESC = aws_descriptor()
RAW = DESC.buckets.raw
CHANNELS = {"train": f"{RAW}/churn/train", "validation": f"{RAW}/churn/validation"}
ANNOTATION_HPS = "mlinfra.io/hyperparameters"


class Cluster:
    """What the job controller and the kubelet would do, one step each time the tuner
    sleeps: a new Job gets a running pod; each step the pod prints one epoch's metric lines
    (`loss(hyperparameters, epoch)`); after the last epoch it prints the final metrics and
    the Job completes, or fails when `fails(hyperparameters)`."""

    def __init__(self, emu, epochs: int, loss, fails=lambda hps: False):
        self.emu, self.epochs, self.loss, self.fails = emu, epochs, loss, fails
        self.batch, self.core = client.BatchV1Api(emu.api), client.CoreV1Api(emu.api)
        self.logs: dict[str, str] = {}
        self.step: dict[str, int] = {}
        self.created: dict[str, dict] = {}  # every Job ever seen, as the API stored it
        self.most_at_once = 0
        self.deleted: list[str] = []

    def tick(self, _seconds: float = 0) -> None:
        jobs = {j.metadata.name: j for j in self.batch.list_namespaced_job(NS).items}
        self.deleted += [n for n in self.step if n not in jobs and n not in self.deleted]
        live = [n for n, j in jobs.items() if not (j.status and j.status.conditions)]
        self.most_at_once = max(self.most_at_once, len(live))
        for name in live:
            job = jobs[name]
            hps = json.loads(job.metadata.annotations[ANNOTATION_HPS])
            if name not in self.step:
                self.created[name] = self.batch.api_client.sanitize_for_serialization(job)
                self.start(name)
                continue
            self.step[name] += 1
            epoch = self.step[name]
            loss = self.loss(hps, epoch)
            self.logs[name] += f"epoch {epoch}\n" + format_metric("validation_loss", loss, epoch)
            self.logs[name] += "\n" + format_metric("train_loss", loss, epoch)
            self.logs[name] += "\n" + format_metric("auc", 1 - loss, epoch) + "\n"
            if epoch == self.epochs:
                self.finish(name, hps, loss)

    def start(self, name: str) -> None:
        self.step[name] = 0
        self.logs[name] = "loading\n"
        pod = f"{name}-x1"
        self.core.create_namespaced_pod(
            NS,
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": pod, "namespace": NS, "labels": {JOB_LABEL: name}},
                "spec": {"containers": [{"name": "train", "image": f"{TRAIN_REPO}:v3"}]},
                "status": {"phase": "Running"},
            },
        )
        path = f"/api/v1/namespaces/{NS}/pods/{pod}/log"
        self.emu.emulator["get", path] << (lambda request: self.logs[request.name[:-3]])
        self.batch.patch_namespaced_job_status(name, NS, {"status": {"active": 1}})

    def finish(self, name: str, hps: dict, loss: float) -> None:
        if self.fails(hps):
            message = "data error: column 'churned' is missing"
            self.core.patch_namespaced_pod_status(
                f"{name}-x1", NS, {"status": terminated(1, message)}
            )
            condition = {"type": "Failed", "status": "True", "reason": "PodFailurePolicy"}
        else:
            self.logs[name] += format_metric("validation_loss", loss) + "\n"
            self.logs[name] += format_metric("auc", 1 - loss) + "\n"
            condition = {"type": "Complete", "status": "True"}
        self.batch.patch_namespaced_job_status(
            name, NS, {"status": {"active": 0, "conditions": [condition]}}
        )


@pytest.fixture
def emulated(aws_env):
    with mock_aws(), kube_emulator() as emu:
        session = boto3.Session(region_name=REGION)
        push_image(session, "v3")
        jobs = KubernetesJobs(DESC, api_client=emu.api, boto_session=session)
        jobs.poll_seconds = 0
        yield jobs, emu, session


def quota(emu, gpus: str, used: str = "0", **hard: str) -> None:
    body = {"requests.nvidia.com/gpu": gpus, "requests.cpu": "64", "limits.cpu": "64", **hard}
    client.CoreV1Api(emu.api).create_namespaced_resource_quota(
        NS,
        {
            "apiVersion": "v1",
            "kind": "ResourceQuota",
            "metadata": {"name": "team-quota", "namespace": NS},
            "spec": {"hard": body},
            "status": {"hard": body, "used": {"requests.nvidia.com/gpu": used}},
        },
    )


def space(trials: int, parallel: int, *, pruning=None, rates=(0.3, 0.1, 0.03, 0.01, 0.003)):
    return parse_space(
        {
            "objective": {"metric": "validation_loss", "direction": "minimize"},
            "budget": {"trials": trials, "parallel": parallel},
            "sampler": "grid",
            "pruning": pruning or "off",
            "fixed": {"target": "churned", "epochs": 3},
            "parameters": {"learning_rate": {"type": "categorical", "choices": list(rates)}},
        },
        "tune.yaml",
    )


def by_rate(hps: dict, epoch: int) -> float:
    """Lower learning rates learn better here; every trial improves with epochs."""
    return round(hps["learning_rate"] * 10 / epoch, 6)


def tuner(emulated, tmp_path: Path, doc, **kw) -> KubernetesTuner:
    jobs, _, _ = emulated
    return KubernetesTuner(
        doc,
        tmp_path / "study",
        study="churn-tune",
        jobs=jobs,
        trial_jobs=TrialJobs(CHANNELS, "v3", "train-a10g", "churn"),
        **kw,
    )


def test_each_trial_is_a_job_with_the_job_apis_manifest_at_most_parallel_at_once(
    emulated, tmp_path
):
    jobs, emu, _ = emulated
    quota(emu, "8")
    cluster = Cluster(emu, epochs=3, loss=by_rate)
    t = tuner(emulated, tmp_path, space(5, 2), sleep=cluster.tick)
    assert t.plan() == 2 and t.notes == []  # the quota (8 GPUs) does not bind
    result = t.run()

    assert cluster.most_at_once == 2
    assert [v.state for v in result.trials] == ["COMPLETE"] * 5
    assert result.best.params == {"learning_rate": 0.003}
    assert result.best.value == pytest.approx(0.01) and result.best.epochs == 3
    names = sorted(cluster.created)
    assert len(set(names)) == 5
    for trial in t.study.get_trials():
        name = trial.user_attrs[JOB_ATTR]
        assert name == t.job_name(trial.number) and name.endswith(f"-{trial.number:04d}")
        assert name.startswith("churn-tune-") and len(name) <= 40
        job = cluster.created[name]
        labels = job["metadata"]["labels"]
        assert labels["mlinfra.io/job"] == name and labels["mlinfra.io/model-group"] == "churn"
        hps = json.loads(job["metadata"]["annotations"][ANNOTATION_HPS])
        assert hps == {"target": "churned", "epochs": 3, **trial.params}
        pod = job["spec"]["template"]["spec"]
        assert pod["nodeSelector"] == {"mlinfra.io/pool": "train-a10g"}
        container = pod["containers"][0]
        assert container["image"] == f"{TRAIN_REPO}:v3"
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
        env = {e["name"]: e.get("value") for e in container["env"]}
        artifact = f"{DESC.buckets.artifacts}/models/{name}"
        assert env["MLINFRA_MODEL_URI"] == artifact  # outputs to S3, as the job API does
        assert trial.user_attrs["model_uri"] == artifact
        # every epoch's objective was reported to Optuna, from the pod's log
        assert trial.intermediate_values == {e: by_rate(trial.params, e) for e in (1, 2, 3)}
    assert result.best_model_uri == f"{DESC.buckets.artifacts}/models/{t.job_name(4)}"
    assert result.best_metrics == {"validation_loss": 0.01, "auc": 0.99}


def test_a_nan_objective_fails_its_trial_with_the_reason(emulated, tmp_path):
    """Told NaN, Optuna fails a trial without a word; the table said COMPLETE."""
    _, emu, _ = emulated
    quota(emu, "8")

    def diverges(hps: dict, epoch: int) -> float:
        return math.nan if hps["learning_rate"] == 0.3 else by_rate(hps, epoch)

    cluster = Cluster(emu, epochs=2, loss=diverges)
    t = tuner(emulated, tmp_path, space(3, 1, rates=(0.3, 0.1, 0.03)), sleep=cluster.tick)
    result = t.run()
    by_params = {tr.params["learning_rate"]: tr for tr in t.study.get_trials()}
    assert by_params[0.3].state.name == "FAIL"
    assert by_params[0.3].user_attrs["failure"] == "objective validation_loss is nan"
    assert {by_params[r].state.name for r in (0.1, 0.03)} == {"COMPLETE"}
    views = {v.params["learning_rate"]: v for v in result.trials}
    assert views[0.3].state == "FAIL" and result.best.params == {"learning_rate": 0.03}


def test_the_namespace_gpu_quota_caps_parallel_and_says_so(emulated, tmp_path):
    _, emu, _ = emulated
    quota(emu, "2", used="1")
    cluster = Cluster(emu, epochs=2, loss=by_rate)
    t = tuner(emulated, tmp_path, space(5, 4), sleep=cluster.tick)
    assert t.plan() == 2
    assert t.notes[0] == (
        "parallel 4 capped to 2 by namespace vision's quota (ResourceQuota team-quota: "
        "requests.nvidia.com/gpu=2, each trial asks for 1)"
    )
    assert "1 of 2 GPUs of namespace vision are in use now" in t.notes[1]
    result = t.run()
    assert cluster.most_at_once == 2
    assert result.count("COMPLETE") == 5
    assert t.notes[0] in result.notes  # the summary says it too


def test_a_quota_no_trial_fits_fails_before_any_job(emulated, tmp_path):
    jobs, emu, _ = emulated
    quota(emu, "0")
    t = tuner(emulated, tmp_path, space(3, 2), sleep=lambda s: None)
    with pytest.raises(TuningError, match="no trial fits namespace vision's quota: .*gpu=0"):
        t.run()
    assert jobs.list() == []


def test_the_cpu_quota_can_bind_too():
    """A g5.xlarge trial asks for 3 CPUs and 12Gi with its GPU: 7 CPUs fit two trials."""
    doc = [
        SimpleNamespace(
            metadata=SimpleNamespace(name="q"),
            spec=SimpleNamespace(
                hard={"requests.nvidia.com/gpu": "8", "limits.cpu": "7", "pods": "100"}
            ),
            status=None,
        )
    ]
    jobs = KubernetesJobs(DESC, api_client=object())
    from workloads.jobs.base import JobRequest

    request = JobRequest(
        name="probe", channels=CHANNELS, hyperparameters={"target": "churned"}, image_tag="v3",
        pool="train-a10g",
    )  # fmt: skip
    (manifest,) = jobs.manifests(request, jobs.labels(request))
    verdict = fit(manifest, doc, NS)
    assert verdict.slots == 2
    assert verdict.binding.key == "limits.cpu" and verdict.binding.charge == Fraction(3)
    assert [c.key for c in verdict.ceilings] == ["limits.cpu", "requests.nvidia.com/gpu", "pods"]


def test_pruning_deletes_the_job(emulated, tmp_path):
    jobs, emu, _ = emulated
    quota(emu, "4")
    pruning = {"type": "median", "startup_trials": 1, "warmup_epochs": 0}
    # one at a time: the good trial first, then one far worse, pruned at its first epoch
    doc = space(2, 1, pruning=pruning, rates=(0.01, 5.0))
    cluster = Cluster(emu, epochs=3, loss=by_rate)
    t = tuner(emulated, tmp_path, doc, sleep=cluster.tick)
    t.study.enqueue_trial({"learning_rate": 0.01})
    t.study.enqueue_trial({"learning_rate": 5.0})
    result = t.run()
    assert [v.state for v in result.trials] == ["COMPLETE", "PRUNED"]
    pruned = t.study.get_trials()[1]
    assert pruned.params == {"learning_rate": 5.0}
    assert pruned.intermediate_values == {1: 50.0}  # stopped after its first epoch
    name = pruned.user_attrs[JOB_ATTR]
    assert [j.id for j in jobs.list()] == [t.job_name(0)]  # the pruned trial's Job is gone
    with pytest.raises(client.exceptions.ApiException) as err:
        client.BatchV1Api(emu.api).read_namespaced_job(name, NS)
    assert err.value.status == 404
    assert result.trials[1].note == f"Job {name} deleted"


def test_a_failed_job_fails_its_trial_with_the_reason(emulated, tmp_path):
    _, emu, _ = emulated
    quota(emu, "4")
    cluster = Cluster(emu, epochs=2, loss=by_rate, fails=lambda hps: hps["learning_rate"] > 0.2)
    t = tuner(emulated, tmp_path, space(3, 3), sleep=cluster.tick)
    result = t.run()
    states = {tuple(v.params.values())[0]: v for v in result.trials}
    assert states[0.3].state == "FAIL"
    assert "training failed (exit 1): data error: column 'churned' is missing" in (states[0.3].note)
    (failed,) = [f for f in t.study.get_trials() if f.params["learning_rate"] == 0.3]
    assert "PodFailurePolicy" in failed.user_attrs["failure"]
    assert states[0.1].state == states[0.03].state == "COMPLETE"
    assert result.best.params == {"learning_rate": 0.03}


def test_three_failures_in_a_row_stop_the_search(emulated, tmp_path):
    _, emu, _ = emulated
    quota(emu, "4")
    cluster = Cluster(emu, epochs=1, loss=by_rate, fails=lambda hps: True)
    t = tuner(emulated, tmp_path, space(5, 1), sleep=cluster.tick)
    with pytest.raises(TuningError, match="3 trials failed in a row; the last: training failed"):
        t.run()
    assert len(t.study.get_trials()) == 3


def test_a_killed_tuner_s_running_trials_are_adopted_and_followed(emulated, tmp_path):
    jobs, emu, _ = emulated
    quota(emu, "4")
    cluster = Cluster(emu, epochs=3, loss=by_rate)
    first = tuner(emulated, tmp_path, space(2, 2), sleep=cluster.tick)
    first.plan()
    assert first._start(None) == first._start(None) == STARTED  # then the tuner dies
    cluster.tick()
    cluster.tick()  # epoch 1 of both printed
    second = tuner(emulated, tmp_path, space(2, 2), sleep=cluster.tick)
    result = second.run()
    assert [v.state for v in result.trials] == ["COMPLETE", "COMPLETE"]
    assert len(cluster.created) == 2  # followed, not submitted again
    assert all(len(t.intermediate_values) == 3 for t in second.study.get_trials())


def test_two_tuners_on_one_study_stay_within_the_quota_together(emulated, tmp_path):
    jobs, emu, _ = emulated
    quota(emu, "2")
    cluster = Cluster(emu, epochs=2, loss=by_rate)
    first = tuner(emulated, tmp_path, space(4, 2), sleep=cluster.tick)
    first.plan()
    alive = contextlib.ExitStack()
    alive.enter_context(flock(first.folder / "tuners" / f"{first.id}.lock"))  # first is alive
    assert first._start(None) == first._start(None) == STARTED
    ticks = []

    def tick(seconds: float) -> None:
        ticks.append(seconds)
        if len(ticks) == 4:
            assert len(cluster.created) == 2  # the second tuner waited for free slots
            alive.close()  # the first tuner dies: the second adopts its trials
        cluster.tick()

    second = tuner(emulated, tmp_path, space(4, 2), sleep=tick)
    result = second.run()
    assert cluster.most_at_once == 2 and len(cluster.created) == 4
    assert [v.state for v in result.trials] == ["COMPLETE"] * 4


def test_ctrl_c_deletes_the_running_trials_jobs(emulated, tmp_path):
    jobs, emu, _ = emulated
    quota(emu, "4")
    cluster = Cluster(emu, epochs=5, loss=by_rate)

    def interrupted(seconds: float) -> None:
        cluster.tick()
        if cluster.logs and all("#metric" in log for log in cluster.logs.values()):
            raise KeyboardInterrupt

    t = tuner(emulated, tmp_path, space(4, 2), sleep=interrupted)
    with pytest.raises(TuningError, match="interrupted: the running trials' Jobs were deleted"):
        t.run()
    assert jobs.list() == []  # nothing runs on
    assert sorted(cluster.created) == [t.job_name(0), t.job_name(1)]
    assert [f.state.name for f in t.study.get_trials()] == ["FAIL", "FAIL"]
    assert t.study.get_trials()[0].user_attrs["failure"] == "stopped: the tuner was interrupted"


def test_mlinfra_tune_on_a_kubernetes_stack_registers_the_best_trial(emulated, tmp_path):
    jobs, emu, session = emulated
    quota(emu, "1")
    session.client("sagemaker").create_model_package_group(ModelPackageGroupName="vision-dev-churn")
    platform = tmp_path / "platform.json"
    platform.write_text(DESC.to_json())
    path = tmp_path / "tune.yaml"
    import yaml

    doc = {
        "objective": {"metric": "auc", "direction": "maximize"},
        "budget": {"trials": 3, "parallel": 2},
        "sampler": "grid",
        "fixed": {"target": "churned", "epochs": 2},
        "parameters": {"learning_rate": {"type": "categorical", "choices": [0.05, 0.01, 0.03]}},
    }
    path.write_text(yaml.safe_dump(doc))
    cluster = Cluster(emu, epochs=2, loss=by_rate)
    notes: list[str] = []
    outcome = tune_kubernetes(
        path,
        train=CHANNELS["train"],
        validation=CHANNELS["validation"],
        stack="vision-dev",
        image="v3",
        platform=platform,
        state=tmp_path / "state",
        jobs=jobs,
        deploy=True,
        on_note=notes.append,
        sleep=cluster.tick,
    )
    assert notes[0].startswith("parallel 2 capped to 1 by namespace vision's quota")
    assert cluster.most_at_once == 1
    best = outcome.result.best
    assert best.params == {"learning_rate": 0.01} and best.value == pytest.approx(0.95)
    packages = session.client("sagemaker").list_model_packages(
        ModelPackageGroupName="vision-dev-churn"
    )["ModelPackageSummaryList"]
    assert len(packages) == 1 and outcome.version == 1
    described = session.client("sagemaker").describe_model_package(
        ModelPackageName=packages[0]["ModelPackageArn"]
    )
    container = described["InferenceSpecification"]["Containers"][0]
    assert container["ModelDataUrl"] == outcome.result.best_model_uri
    assert container["ModelDataUrl"].startswith(f"{DESC.buckets.artifacts}/models/")
    assert container["Image"].endswith("vision-dev-serve:v3")
    assert outcome.status == "Approved"  # auc 0.95 passes the gate (auc >= 0.8)
    assert outcome.report.is_file()
    # --deploy: the stack has no endpoint serving the group
    assert (
        outcome.messages[-1]
        == "not deployed: no endpoint of stack 'vision-dev' serves churn unpinned"
    )


def stack_files(tmp_path: Path) -> tuple[Path, Path]:
    """The stack's descriptor (`--platform`) and a small search space."""
    platform = tmp_path / "platform.json"
    platform.write_text(DESC.to_json())
    path = tmp_path / "tune.yaml"
    path.write_text(
        "objective: {metric: auc, direction: maximize}\n"
        "budget: {trials: 2, parallel: 2}\n"
        "fixed: {target: churned, epochs: 2}\n"
        "parameters: {learning_rate: {type: float, low: 0.001, high: 0.1}}\n"
    )
    return platform, path


def test_mlinfra_tune_on_a_kubernetes_stack_needs_an_image(aws_env, tmp_path):
    platform, path = stack_files(tmp_path)
    argv = ["tune", "--stack", "vision-dev", "--platform", str(platform), "--space", str(path)]
    argv += ["--train", CHANNELS["train"], "--state-dir", str(tmp_path / "state")]
    result = CliRunner().invoke(app, argv)
    assert result.exit_code != 0
    assert "--image TAG is required on Kubernetes" in result.output


def test_a_refused_run_leaves_no_study_behind(emulated, tmp_path):
    jobs, _, _ = emulated
    platform, path = stack_files(tmp_path)
    with pytest.raises(TuningError, match="image tag 'v9' does not exist"):
        tune_kubernetes(
            path,
            train=CHANNELS["train"],
            stack="vision-dev",
            image="v9",  # not pushed
            platform=platform,
            state=tmp_path / "state",
            jobs=jobs,
        )
    assert not (tmp_path / "state").exists()


def test_mlinfra_tune_on_a_kubernetes_stack_refuses_an_instance_type(aws_env, tmp_path):
    platform, path = stack_files(tmp_path)
    argv = ["tune", "--stack", "vision-dev", "--platform", str(platform), "--space", str(path)]
    argv += ["--train", CHANNELS["train"], "--state-dir", str(tmp_path / "state")]
    argv += ["--image", "v3", "--instance-type", "ml.g5.xlarge"]
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 1
    assert "--instance-type ml.g5.xlarge: a SageMaker instance type" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "state").exists()
