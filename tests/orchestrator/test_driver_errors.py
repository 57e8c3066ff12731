"""How the driver reports a learner that fails: one line, no colour codes, and the resume command."""
import pytest
import ray

from orchestrator.bookkeeping import LoopState
from orchestrator.driver import Driver
from orchestrator.errors import RunFailed, one_line
from orchestrator.rundir import RunDir

GLOO = "\x1b[31m[../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer [10.0.0.2]:4242\x1b[0m"


@ray.remote
def _rank_whose_peer_is_gone():
    raise RuntimeError(GLOO + "\nTraceback (most recent call last): ...")


def test_one_line_takes_the_cause_of_a_ray_task_error_without_colour_codes(ray_cluster):
    with pytest.raises(ray.exceptions.RayTaskError) as info:
        ray.get(_rank_whose_peer_is_gone.remote())
    assert one_line(info.value) == ("RuntimeError: [../third_party/gloo/gloo/transport/tcp/pair.cc:534] "
                                    "Connection closed by peer [10.0.0.2]:4242")
    assert one_line(KeyboardInterrupt()) == "KeyboardInterrupt"


def test_a_learner_rank_that_raises_stops_the_run_with_one_line_and_the_resume_command(ray_cluster, tmp_path):
    driver = Driver.__new__(Driver)  # only the state and run directory take part in reporting
    driver.state, driver.rundir = LoopState(step=4), RunDir(tmp_path)
    with pytest.raises(RunFailed) as info:
        driver.train_result([_rank_whose_peer_is_gone.remote()])
    message = str(info.value)
    assert "\n" not in message and "\x1b" not in message
    assert message.startswith("a learner failed (RuntimeError: [../third_party/gloo/") and "during step 5" in message
    assert message.endswith(f"resume with: diffurl train --resume {tmp_path}")


STOP_THAT_HANGS = """
import sys, time
import orchestrator.run as run
run.STOP_GRACE_S = 0.5
run._exit_if_stop_hangs("run R stopped at step 3; resume with: diffurl train --resume R", None)
time.sleep(60)  # a stop that never ends
sys.exit(0)
"""


def test_a_stop_after_ctrl_c_that_hangs_exits_130_with_the_resume_command():
    """Ctrl-C never leaves the operator waiting: past STOP_GRACE_S the process says where the run stopped and how
    to resume it, and exits 130 without waiting for the stop to end."""
    import subprocess
    import sys
    from pathlib import Path

    proc = subprocess.run([sys.executable, "-c", STOP_THAT_HANGS], cwd=Path(__file__).resolve().parents[2],
                          capture_output=True, text=True, timeout=50)
    assert proc.returncode == 130, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        "diffurl: interrupted: run R stopped at step 3; resume with: diffurl train --resume R (stopping its workers "
        "took over 0 s; exited without waiting for them)")


def test_a_stop_that_ends_in_time_cancels_the_exit():
    import time

    import orchestrator.run as run

    timer = run._exit_if_stop_hangs("run R", None)
    timer.cancel()
    time.sleep(0.1)
    assert not timer.is_alive()
