"""JSON files one stage writes and a later one reads (manifest.json, meta.json), as typed, validated models.

A file read back is checked field by field: one from an older version of the code, or
edited by hand, fails on reading with the file, the fields that do not fit and the
stage that rewrites it, not later as a KeyError far from the cause.
"""
from __future__ import annotations

from pathlib import Path
from typing import Self

from pydantic import BaseModel, ConfigDict, ValidationError

from maskgit_inpaint.io import read_json, write_json


class StoredRecordError(ValueError):
    """A stage's JSON file that does not hold the record this code reads."""

    def __init__(self, path: Path, record: str, made_by: str, cause: ValueError):
        if isinstance(cause, ValidationError):
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(top level)'}: {e['msg']}" for e in cause.errors())
        else:
            problems = f"not JSON ({cause})"
        super().__init__(f"{path}: not a {record} this code reads ({problems}); it was written by an older version "
                         f"or edited by hand: rewrite it with `dvc repro -f {made_by}`")


class StoredRecord(BaseModel):
    # Unknown keys mean another format: refused rather than silently dropped.
    model_config = ConfigDict(extra="forbid", frozen=True)

    def write(self, path: Path | str) -> None:
        write_json(path, self.model_dump(mode="json"))

    @classmethod
    def read(cls, path: Path | str, made_by: str) -> Self:
        """The record in `path`; a missing, unparsable or mismatched file names the stage that writes it."""
        try:
            return cls.model_validate(read_json(path, made_by))
        except ValueError as err:  # a JSON decode error or a ValidationError (a missing file is not one: read_json names it)
            raise StoredRecordError(Path(path), cls.__name__, made_by, err) from err
