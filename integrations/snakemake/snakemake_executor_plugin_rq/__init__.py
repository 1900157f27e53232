"""Snakemake executor plugin for rq: each job of a workflow becomes an rq job.

    pip install ./integrations/snakemake
    snakemake --executor rq --rq-queue /nfs/q --jobs 100

The queue comes from --rq-queue, else SNAKEMAKE_RQ_QUEUE, else RQ_Q. Every job is tagged
with the run (`smk-<id>`), so one rq call checks every active job each round
(`rq Q state`), and one cancels all of the run's jobs on Ctrl-C (`rq Q cancel tag:...`),
including those Snakemake no longer tracks. Resources map to rq's: threads -> --cpus,
mem_mb -> --mem, gpus (or gpu) -> --gpus, runtime (minutes) -> --timeout.
"""

import json
import os
import shlex
import subprocess
from dataclasses import dataclass, field
from typing import AsyncGenerator, List, Optional
import uuid

from snakemake_interface_common.exceptions import WorkflowError
from snakemake_interface_executor_plugins.executors.base import SubmittedJobInfo
from snakemake_interface_executor_plugins.executors.remote import RemoteExecutor
from snakemake_interface_executor_plugins.jobs import JobExecutorInterface
from snakemake_interface_executor_plugins.settings import (
    CommonSettings,
    ExecutorSettingsBase,
)


@dataclass
class ExecutorSettings(ExecutorSettingsBase):
    queue: Optional[str] = field(
        default=None,
        metadata={
            "help": "The rq queue: a directory every host sees, or a postgres:// URL "
            "(default: $RQ_Q).",
            "env_var": True,
            "required": False,
        },
    )
    program: Optional[str] = field(
        default=None,
        metadata={
            "help": "The rq program to call (default: rq on PATH).",
            "env_var": False,
            "required": False,
        },
    )
    stderr_lines: Optional[int] = field(
        default=20,
        metadata={
            "help": "How many of a failed job's last stderr lines to report.",
            "env_var": False,
            "required": False,
        },
    )


common_settings = CommonSettings(
    # Jobs run on other hosts, which see the working directory (rq's premise).
    non_local_exec=True,
    implies_no_shared_fs=False,
    job_deploy_sources=False,
    pass_default_storage_provider_args=True,
    pass_default_resources_args=True,
    pass_envvar_declarations_to_cmd=True,
    auto_deploy_default_storage_provider=False,
    init_seconds_before_status_checks=1,
)

# rq's answers to `state`.
RUNNING, SUCCESS, FAILED = "running", "success", "failed"


class Executor(RemoteExecutor):
    def __post_init__(self):
        settings = self.workflow.executor_settings
        self.queue = (settings.queue if settings else None) or os.environ.get("RQ_Q")
        if not self.queue:
            raise WorkflowError(
                "rq executor: name the queue with --rq-queue QUEUE (or set RQ_Q)"
            )
        self.rq_program = (settings.program if settings else None) or "rq"
        self.stderr_lines = (settings.stderr_lines if settings else None) or 20
        # One tag for the whole run: status rounds and cancelling go by it.
        self.run_tag = f"smk-{uuid.uuid4().hex[:12]}"
        self.logger.info(f"rq executor: queue {self.queue}, jobs tagged {self.run_tag}")

    def rq(self, *args: str, stdin: Optional[str] = None) -> subprocess.CompletedProcess:
        """Run `rq QUEUE ARGS...` and return what it did (never raises on its status)."""
        try:
            return subprocess.run(
                [self.rq_program, self.queue, *args],
                input=stdin,
                capture_output=True,
                text=True,
            )
        except OSError as e:
            raise WorkflowError(f"rq executor: cannot run {self.rq_program}: {e}")

    def submit_args(self, job: JobExecutorInterface) -> List[str]:
        """rq's options for what the job asks for."""
        args = ["--tag", self.run_tag, "--cpus", str(max(1, int(job.threads)))]
        resources = job.resources
        mem_mb = resources.get("mem_mb")
        if isinstance(mem_mb, (int, float)) and mem_mb > 0:
            args += ["--mem", f"{int(mem_mb)}M"]
        gpus = resources.get("gpus", resources.get("gpu"))
        if isinstance(gpus, (int, float)) and gpus > 0:
            args += ["--gpus", str(int(gpus))]
        runtime = resources.get("runtime")
        if isinstance(runtime, (int, float)) and runtime > 0:
            args += ["--timeout", f"{int(runtime)}m"]
        return args

    def run_job(self, job: JobExecutorInterface):
        jobscript = self.get_jobscript(job)
        self.write_jobscript(job, jobscript)
        done = self.rq(
            "submit", "--parsable", *self.submit_args(job), "--", shlex.quote(jobscript)
        )
        jid = done.stdout.strip()
        if done.returncode != 0 or not jid.isdigit():
            raise WorkflowError(
                f"rq executor: submitting job {job.jobid} failed: "
                f"{(done.stderr or done.stdout).strip()}"
            )
        self.report_job_submission(
            SubmittedJobInfo(job, external_jobid=jid, aux={"jobscript": jobscript})
        )

    async def check_active_jobs(
        self, active_jobs: List[SubmittedJobInfo]
    ) -> AsyncGenerator[SubmittedJobInfo, None]:
        if not active_jobs:
            return
        # One call for every active job: one word each, in the order given.
        async with self.status_rate_limiter:
            jids = "".join(f"{j.external_jobid}\n" for j in active_jobs)
            done = self.rq("state", "-", stdin=jids)
        words = done.stdout.split()
        if done.returncode != 0 or len(words) != len(active_jobs):
            # The queue could not be read this round (a busy lock, a network blip):
            # every job is checked again next round.
            self.logger.warning(
                f"rq executor: status check failed ({done.stderr.strip()}); retrying"
            )
            for job_info in active_jobs:
                yield job_info
            return
        for job_info, word in zip(active_jobs, words):
            if word == RUNNING:
                yield job_info
            elif word == SUCCESS:
                self.report_job_success(job_info)
            else:
                self.report_job_error(job_info, msg=self.failure(job_info))

    def failure(self, job_info: SubmittedJobInfo) -> str:
        """Why a job failed, as rq tells it, with the last lines of its stderr."""
        jid = job_info.external_jobid
        listed = self.rq(
            "list", jid, "--format", "json", "-f", "state,exit_status,signal,runner,reason"
        )
        try:
            job = json.loads(listed.stdout)[0]
            why = job["state"]
            if job.get("signal"):
                why = f"killed by {job['signal']}"
            elif job.get("exit_status") is not None:
                why = f"exit status {job['exit_status']}"
            if job.get("runner"):
                why += f" on {job['runner']}"
            if job.get("reason"):
                why += f": {job['reason']}"
        except (ValueError, LookupError, TypeError):
            why = "no longer in the queue"
        tail = self.rq("stderr", jid).stdout.splitlines()[-self.stderr_lines :]
        lines = [f"rq job {jid} failed ({why})."]
        if tail:
            lines.append(f"The last lines of its stderr (rq {self.queue} stderr {jid}):")
            lines += [f"    {line}" for line in tail]
        return "\n".join(lines) + "\n"

    def cancel_jobs(self, active_jobs: List[SubmittedJobInfo]):
        # Every job of the run, not only those this round knew of: pending ones leave
        # the queue, running ones are killed.
        done = self.rq("cancel", f"tag:{self.run_tag}", "--quiet")
        if done.returncode not in (0, 1):
            self.logger.error(f"rq executor: cancelling failed: {done.stderr.strip()}")

    def shutdown(self):
        # After a failure Snakemake stops; what it leaves queued must not run on.
        self.rq("cancel", f"tag:{self.run_tag}", "--quiet")
        super().shutdown()
