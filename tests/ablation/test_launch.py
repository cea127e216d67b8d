"""The SLURM launcher builds one job array of shards (submitit's own mocked sbatch; no cluster needed)."""

from __future__ import annotations

import pytest

from medconv.ablation.launch import run_shard, slurm_parameters, submit_slurm
from medconv.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")


def test_slurm_parameters_pass_through_and_extras():
    params = slurm_parameters("gpu", 1, 240, 8, "64G", 4, ["account=proj", "--qos=high"])
    assert params == {"job_name": "medconv-ablate", "partition": "gpu", "gpus_per_node": 1, "time": 240, "cpus_per_task": 8,
                      "mem": "64G", "array_parallelism": 4, "additional_parameters": {"account": "proj", "qos": "high"}}
    assert slurm_parameters() == {"job_name": "medconv-ablate"}
    with pytest.raises(ConfigError, match="key=value"):
        slurm_parameters(extra=["account"])


def test_submit_builds_one_array_of_shards(tmp_path):
    pytest.importorskip("submitit")
    from submitit.slurm.test_slurm import mocked_slurm

    params = slurm_parameters("gpu", 1, 90, 8, "64G", 2, ["account=proj"])
    with mocked_slurm():
        jobs = submit_slurm(tmp_path / "sweep.yaml", tmp_path / "out", 5, params)
    assert len(jobs) == 5 and len({j.job_id.split("_")[0] for j in jobs}) == 1  # one array
    script = next((tmp_path / "out" / "slurm").rglob("*_submission.sh")).read_text()
    for line in ("#SBATCH --array=0-4%2", "#SBATCH --partition=gpu", "#SBATCH --gpus-per-node=1", "#SBATCH --time=90",
                 "#SBATCH --cpus-per-task=8", "#SBATCH --mem=64G", "#SBATCH --account=proj", "#SBATCH --job-name=medconv-ablate"):
        assert line in script, line
    # each task runs run_shard(sweep, out, i, 5): task i is shard i/5
    submitted = [j.submission() for j in jobs]
    assert [s.function for s in submitted] == [run_shard] * 5
    assert [s.args for s in submitted] == [(str(tmp_path / "sweep.yaml"), str(tmp_path / "out"), i, 5, True, "all") for i in range(5)]


def test_pretraining_goes_first_as_its_own_array(tmp_path):
    pytest.importorskip("submitit")
    from submitit.slurm.test_slurm import mocked_slurm

    with mocked_slurm():
        jobs = submit_slurm(tmp_path / "sweep.yaml", tmp_path / "out", 4, slurm_parameters("gpu"), pretrain_shards=2)
    scripts = {p.read_text() for p in (tmp_path / "out" / "slurm").rglob("*_submission.sh")}
    pretrain = next(s for s in scripts if "--array=0-1" in s)
    finetune = next(s for s in scripts if "--array=0-3" in s)
    array_id = jobs[0].job_id.split("_")[0]
    assert "--job-name=medconv-ablate-pretrain" in pretrain and "--dependency=afterany:" in finetune
    assert f"--dependency=afterany:{array_id}" not in finetune  # it waits on the other (earlier) array
    assert [j.submission().args[-1] for j in jobs] == ["finetune"] * 4
