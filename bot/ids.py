"""Shapes of OpenAI object ids. Anything a user types is checked against these before it can become
part of a URL path, so `get ../../files` can never turn into a request."""

import re

JOB_ID = re.compile(r"^ftjob-[A-Za-z0-9_-]{1,64}$")
FILE_ID = re.compile(r"^file-[A-Za-z0-9_-]{1,64}$")
CHECKPOINT_CURSOR = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


def is_job_id(value: str) -> bool:
    return JOB_ID.fullmatch(value) is not None


def is_file_id(value: str) -> bool:
    return FILE_ID.fullmatch(value) is not None
