"""AgentBook keeps what agents declared across restarts, including books written by an older
server before groups had descriptions."""

from __future__ import annotations

import json
import sqlite3

from fedsim.real.server.agents import AgentBook

OLD_SCHEMA = """CREATE TABLE agents (
    device INTEGER PRIMARY KEY,
    token_sha256 TEXT NOT NULL UNIQUE,
    hardware TEXT NOT NULL,
    endpoints TEXT NOT NULL)"""


def test_declarations_survive_a_restart(tmp_path):
    book = AgentBook(root=tmp_path)
    token = book.enroll(
        3, hardware={"cpu_count": 4}, endpoints={"agent": "http://h:1/m"}, group_description="lab"
    )
    book.close()

    again = AgentBook(root=tmp_path)

    assert again.device_for(token) == 3
    details = again.details(3)
    assert details.group_description == "lab" and details.hardware == {"cpu_count": 4}
    again.close()


def test_a_book_from_before_group_descriptions_is_upgraded_in_place(tmp_path):
    # Prepare: a book as the previous version wrote it, with one enrolled device.
    db = sqlite3.connect(tmp_path / "agents.db")
    db.execute(OLD_SCHEMA)
    db.execute(
        "INSERT INTO agents VALUES (?, ?, ?, ?)",
        (5, "00" * 32, json.dumps({"cpu_count": 2}), json.dumps({})),
    )
    db.commit()
    db.close()

    # Execute
    book = AgentBook(root=tmp_path)

    # Assert: the old device is intact, and new declarations are stored.
    assert book.details(5).hardware == {"cpu_count": 2}
    assert book.details(5).group_description == ""
    token = book.enroll(6, group_description="site B")
    book.close()
    reopened = AgentBook(root=tmp_path)
    assert reopened.device_for(token) == 6
    assert reopened.details(6).group_description == "site B"
    reopened.close()
