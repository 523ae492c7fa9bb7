"""The checksum a job's JSON files (job.json, chain.json, the batch file) carry over their own content.

Why: job.json is the job's record of what its arrays hold and how far it got. A manifest edited by hand, or
damaged so that it still parses, must be refused in one line rather than trusted (issue 14): a cursor
moved forward would skip work and export an unfinished image. store.write_json_atomic seals what it
writes (`seal`); store.read_manifest checks it (`check_seal`). Files written before checksums existed
carry none and are taken as they are (their content is still validated, jobs/consistency.py).
"""

from __future__ import annotations

import hashlib
import json
import os

from ..errors import StreamsrError

CHECKSUM = "checksum"  # the key of the file's own checksum


def json_checksum(data: dict) -> str:
    """"sha256:HEX" of `data` without its CHECKSUM key, as canonical JSON (sorted keys, no spaces); `data`
    as JSON gives it back (str keys, lists), which `seal` makes sure of."""
    body = {key: value for key, value in data.items() if key != CHECKSUM}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def seal(data: dict) -> dict:
    """`data` as a reader will parse it, with its checksum under CHECKSUM."""
    data = json.loads(json.dumps(data))  # int keys become str, tuples lists: the checksum covers what is read
    data[CHECKSUM] = json_checksum(data)
    return data


def check_seal(data, path: os.PathLike | str, *, error: type[StreamsrError] = StreamsrError) -> None:
    """`error` (one line naming `path`) if `data` carries a checksum that does not match its content."""
    if isinstance(data, dict) and CHECKSUM in data and data[CHECKSUM] != json_checksum(data):
        raise error(f"{path} does not match its checksum: it was edited or damaged after streamsr wrote it; "
                    "restore it, or start the job again in a new job dir")
