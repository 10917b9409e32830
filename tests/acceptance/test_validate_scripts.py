"""VALIDATE_SCRIPTS=0 (issue 25, item 8): an operator whose jobs are contained otherwise
(bwrap, a uid per job) can let scripts run that the validator refuses as unsafe; a missing
run.sh is still refused, and the default (and an empty value) keeps the screen."""

from __future__ import annotations

from pathlib import Path

import pytest

from testkit.harness import cluster

INLINE = "python3 -c 'print(6 * 7)' > out.txt\n"
FINAL = ("Completed", "Failed", "Invalid", "Killed", "Cleaned")


@pytest.mark.parametrize(
    ("value", "outcome"), [(None, "Invalid"), ("", "Invalid"), ("0", "Completed")]
)
def test_the_screen_is_on_unless_switched_off(
    tmp_path: Path, value: str | None, outcome: str
) -> None:
    client_env = {} if value is None else {"VALIDATE_SCRIPTS": value}
    with cluster(tmp_path, client_env=client_env) as running:
        job = running.api.submit(INLINE)
        done = running.api.wait_for(job, *FINAL)
        assert done["status"] == outcome, done
        if outcome == "Completed":
            assert running.api.download_zip(job).read("out.txt") == b"42\n"
            missing = running.api.upload({"input.txt": b"no script"}).json()["id"]
            assert running.api.wait_for(missing, *FINAL)["message"] == "run.sh not found"
        else:
            assert done["message"] == "run.sh rejected: inline interpreter: python"
