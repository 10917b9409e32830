"""A real client with MAX_AGE=0: cleaned payloads leave its registry, never their ids.

The test plays the server: it submits to the client and collects from it directly.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx

from testkit import eventually
from testkit.harness import Cluster, Node

REGISTRY_LINE = re.compile(r"retention: removed \d+ payload\(s\); (\d+) left in the registry")


def submit(client: Node, script: str) -> int:
    response = httpx.post(
        f"{client.url}/submit", files=[("run.sh", ("run.sh", script.encode()))], timeout=30
    )
    assert response.status_code == 200, response.text
    payload_id = response.json()["id"]
    assert isinstance(payload_id, int)
    return payload_id


def collect(client: Node, payload_id: int) -> bytes:
    """Long-poll /retrieve until the ZIP arrives, as a server does."""

    def zipped() -> bytes | None:
        response = httpx.get(f"{client.url}/retrieve/{payload_id}", params={"wait": 5}, timeout=30)
        assert response.status_code == 200, response.text
        if response.headers["content-type"] == "application/zip":
            return response.content
        assert response.json()["status"] in {"Prepared", "Running"}, response.text
        return None

    # No pause between calls: each one is a long poll of up to 5 s.
    return eventually(zipped, f"payload {payload_id} to complete", 60, poll_s=0)


def wait_for_registry_rows(client: Node, rows: int) -> None:
    def left() -> bool:
        found = REGISTRY_LINE.findall(client.log())
        return bool(found) and int(found[-1]) == rows

    eventually(left, f"a retention pass to leave {rows} payloads", 60, detail=client.log)


def state_of(client: Node, payload_id: int) -> dict[str, object] | None:
    state = Path(client.env["DATA_PATH"]) / str(payload_id) / "state.json"
    try:
        loaded: dict[str, object] = json.loads(state.read_text())
    except (FileNotFoundError, ValueError):
        return None
    return loaded


def test_cleaned_payloads_leave_the_registry_and_keep_their_ids(tmp_path: Path) -> None:
    cl = Cluster(tmp_path)
    try:
        client = cl.add_client({"MAX_AGE": "0", "CLEANER_INTERVAL": "0.2"})
        uncollected = submit(client, "echo early > output.txt\n")
        eventually(
            lambda: (state_of(client, uncollected) or {}).get("status") == "Completed",
            f"payload {uncollected} to complete",
            detail=client.log,
        )
        collected = submit(client, "echo hello > output.txt\n")
        assert collect(client, collected)
        # The pass that removed the collected payload kept the one nobody collected yet.
        wait_for_registry_rows(client, 1)
        assert state_of(client, uncollected) is not None
        assert not (Path(client.env["DATA_PATH"]) / str(collected)).exists()

        # A cleaned id answers as the original answers for a cleaned payload, not 404.
        answer = httpx.get(f"{client.url}/retrieve/{collected}", timeout=30)
        assert answer.status_code == 200, answer.text
        assert answer.json()["status"] == "Cleaned"
        assert answer.json()["id"] == collected
        partial = httpx.get(f"{client.url}/retrieve_partial/{collected}", timeout=30)
        assert partial.status_code == 410  # gone, not an error of the client's
        assert partial.json()["status"] == "Cleaned"
        assert httpx.post(f"{client.url}/kill/{collected}", timeout=30).status_code == 200
        assert httpx.get(f"{client.url}/retrieve/{collected + 100}", timeout=30).status_code == 404

        assert collect(client, uncollected)
        wait_for_registry_rows(client, 0)

        # After a restart nothing of them is rebuilt, and their ids are not handed out again.
        assert client.stop() == 0
        client.start()
        fresh = submit(client, "echo again > output.txt\n")
        assert fresh > max(collected, uncollected)
        again = httpx.get(f"{client.url}/retrieve/{collected}", timeout=30)
        assert again.json()["status"] == "Cleaned"
    finally:
        assert cl.shutdown() == []
