"""The file of a Hamming index: the FAISS index and its ids in one file, so that a reader
never sees the index of one write with the ids of another.

The file is an uncompressed zip of two members: `index.faiss`, the FAISS binary index
as `faiss.write_index_binary` writes it (`unzip -p harr.faiss index.faiss > x.faiss`
gives a file `faiss.read_index_binary` opens as is), and `ids.json`, `{"kind", "ids"}`.
It is written to a temporary file beside and renamed (`harr_tf.atomic`), and read
through one open file, so a reader gets one whole write even while a writer renames a
newer one into place. Index files of earlier versions (the FAISS file alone, the ids in
`<index>.ids.json` beside it) are still read; the next write replaces both with one file.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import faiss

from harr_tf.atomic import atomic_path, remove_leftovers

INDEX_MEMBER = "index.faiss"
IDS_MEMBER = "ids.json"
_REBUILD = "rebuild it with `python -m serving.search build`."


def legacy_ids_path(index_path: str | Path) -> Path:
    """Where an index file of an earlier version kept its ids."""
    return Path(f"{index_path}.ids.json")


def write_index_file(path: str | Path, index: faiss.IndexBinary, kind: str, ids: list[str]) -> None:
    """Writes `index` with its `kind` and `ids` to `path`, whole or not at all; first
    removes what killed writers left beside it."""
    path = Path(path)
    remove_leftovers(path.parent)
    with (
        atomic_path(path) as temporary,
        zipfile.ZipFile(temporary, "w", zipfile.ZIP_STORED, allowZip64=True) as archive,
    ):
        with archive.open(INDEX_MEMBER, "w", force_zip64=True) as member:
            writer = faiss.PyCallbackIOWriter(member.write)
            faiss.write_index_binary(index, writer)
            del writer  # flushes FAISS's buffer into the member
        archive.writestr(IDS_MEMBER, json.dumps({"kind": kind, "ids": ids}))
    legacy_ids_path(path).unlink(missing_ok=True)


def read_index_file(path: str | Path) -> tuple[faiss.IndexBinary, str, list[str]]:
    """(index, kind, ids) of the file at `path`; checks the index holds one code per id.

    Raises:
        FileNotFoundError: no file at `path` (or an earlier version's ids file missing).
        ValueError: the file is not an index file, or its parts disagree.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"No index file {path}: expected an index written by `python -m serving.search build`."
        )
    try:
        with open(path, "rb") as stream:
            if not zipfile.is_zipfile(stream):
                return _read_legacy(path)
            with zipfile.ZipFile(stream) as archive:
                with archive.open(IDS_MEMBER) as member:
                    stored = json.load(member)
                with archive.open(INDEX_MEMBER) as member:
                    index = faiss.read_index_binary(faiss.PyCallbackIOReader(member.read))
    except (KeyError, zipfile.BadZipFile) as err:
        raise ValueError(f"{path} is not an index file ({err}): {_REBUILD}") from err
    except RuntimeError as err:
        raise ValueError(
            f"{path} holds no FAISS binary index ({_first_line(err)}): {_REBUILD}"
        ) from err
    return _checked(path, index, stored, f"{path} ({IDS_MEMBER})")


def _read_legacy(path: Path) -> tuple[faiss.IndexBinary, str, list[str]]:
    sidecar = legacy_ids_path(path)
    if not sidecar.is_file():
        raise FileNotFoundError(
            f"{path} is not an index file of this version and has no ids file {sidecar} "
            f"beside it: {_REBUILD}"
        )
    try:
        index = faiss.read_index_binary(str(path))
    except RuntimeError as err:
        raise ValueError(f"{path} is not a FAISS binary index: {_first_line(err)}") from err
    try:
        stored = json.loads(sidecar.read_text())
    except ValueError as err:
        raise ValueError(f"{sidecar} is not an index ids file: {err!r}") from err
    return _checked(path, index, stored, str(sidecar))


def _checked(
    path: Path, index: faiss.IndexBinary, stored, ids_source: str
) -> tuple[faiss.IndexBinary, str, list[str]]:
    if not isinstance(stored, dict) or not isinstance(stored.get("ids"), list):
        raise ValueError(f"{ids_source} is not an index ids file: expected {{'kind', 'ids'}}.")
    kind, ids = stored.get("kind"), stored["ids"]
    if index.ntotal != len(ids):
        raise ValueError(
            f"{path} holds {index.ntotal} codes but {ids_source} names {len(ids)}: they come "
            "from different builds; rebuild the index."
        )
    return index, kind, ids


def _first_line(err: Exception) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__
