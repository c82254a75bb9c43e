"""`serving.encode --index` and `serving.search` on a PostgreSQL table, against a real
`serving.server` and PostgreSQL: shards written by two processes at once, a killed encoder
resumed, idempotent writes, and the search commands answering as on a FAISS file."""

import io
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import test_encode_client
from serving_support import REPO_ROOT

from harr_tf.index import HammingIndex
from harr_tf.postgres_index import PostgresIndex, open_index
from serving.app import create_app
from serving.client import ServingClient
from serving.encode import main as encode_main
from serving.search import main as search_main

collection = test_encode_client.collection  # its fixture of 40 real images and their codes


def encoder(server, source, uri, *extra):
    """`python -m serving.encode` as a real child process."""
    command = [
        sys.executable,
        "-m",
        "serving.encode",
        "--server",
        server,
        "--input",
        str(source),
        "--index",
        uri,
        *extra,
    ]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONFAULTHANDLER": "1"}
    return subprocess.Popen(
        command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def finish(process, timeout=300):
    """The process's output once it ends; a stuck one is aborted, showing where it was."""
    try:
        return process.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGABRT)  # faulthandler prints every thread's stack
        pytest.fail(f"the encoder did not finish in {timeout} s:\n{process.communicate()[0]}")


def stored(uri):
    index = open_index(uri)
    return index.ids, index.codes()


def test_two_shards_at_once_fill_the_table_exactly_once(grpc_server, collection, postgres):
    folder, ids, _, reference = collection
    uri = postgres.uri(table="encoded_shards")
    shards = [
        encoder(grpc_server, folder, uri, "--shard", f"{part}/2", "--batch-size", "3")
        for part in range(2)
    ]
    outputs = [finish(process) for process in shards]
    assert [process.returncode for process in shards] == [0, 0], outputs
    assert all("Wrote 20 codes of 20 items" in output for output in outputs), outputs
    found, codes = stored(uri)
    assert sorted(found) == sorted(ids)  # none lost, none twice (and ids are the primary key)
    order = [ids.index(item) for item in found]
    np.testing.assert_array_equal(codes, np.packbits(reference[order] > 0, axis=1))


def test_killed_encoder_resumes_with_only_the_missing_items(
    grpc_server, collection, postgres, tmp_path, capsys
):
    folder, ids, _, reference = collection
    uri = postgres.uri(table="encoded_killed")
    fifo = tmp_path / "stuck.png"
    os.mkfifo(fifo)  # reading it blocks: the encoder is killed while it waits
    listed = tmp_path / "list.txt"
    listed.write_text("\n".join([str(folder / item) for item in ids[:25]] + [str(fifo)]))
    process = encoder(grpc_server, listed, uri, "--batch-size", "5", "--concurrency", "1")
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if len(open_index(uri)) == 25:
                break
        except FileNotFoundError:
            pass  # the table is not created yet
        time.sleep(0.2)
    assert process.poll() is None, finish(process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    everything = tmp_path / "all.txt"
    everything.write_text("\n".join(str(folder / item) for item in ids))
    assert (
        encode_main(
            ["--server", grpc_server, "--input", str(everything), "--index", uri, "--resume"]
        )
        == 0
    )
    assert "Wrote 15 codes of 15 items sent" in capsys.readouterr().out
    found, codes = stored(uri)
    assert found == [str(folder / item) for item in ids]
    np.testing.assert_array_equal(codes, np.packbits(reference > 0, axis=1))


def test_present_ids_are_skipped_or_overwritten_and_other_lengths_refused(
    grpc_server, collection, postgres, capsys
):
    folder, ids, _, reference = collection
    uri = postgres.uri(table="encoded_twice")
    arguments = ["--server", grpc_server, "--input", str(folder), "--index", uri]
    assert encode_main(arguments) == 0
    assert encode_main(arguments) == 0
    assert "Wrote 0 codes of 40 items sent" in capsys.readouterr().out
    assert encode_main([*arguments, "--overwrite"]) == 0
    assert "Wrote 40 codes of 40 items sent" in capsys.readouterr().out
    found, codes = stored(uri)
    assert found == ids
    np.testing.assert_array_equal(codes, np.packbits(reference > 0, axis=1))

    other = postgres.uri(table="encoded_other_length")
    PostgresIndex.build(np.zeros((1, 8), np.uint8), ["x"]).save(other)
    with pytest.raises(SystemExit, match="holds 64-bit codes, not 16-bit ones"):
        encode_main(["--server", grpc_server, "--input", str(folder), "--index", other])
    with pytest.raises(SystemExit, match="--shard 2/2: expected I/N with 0 <= I < N"):
        encode_main([*arguments, "--shard", "2/2"])
    with pytest.raises(SystemExit, match="--shard needs --index"):
        encode_main(
            ["--server", grpc_server, "--input", str(folder), "--out", "x.npz", "--shard", "0/2"]
        )
    assert stored(other)[0] == ["x"]


def search(capsys, *arguments):
    capsys.readouterr()
    assert search_main(list(arguments)) == 0
    return capsys.readouterr().out


def test_search_commands_answer_as_on_a_faiss_file(
    grpc_server, collection, postgres, tmp_path, capsys
):
    folder, ids, _, _ = collection
    codes = tmp_path / "codes.npz"
    assert encode_main(["--server", grpc_server, "--input", str(folder), "--out", str(codes)]) == 0
    meta = tmp_path / "meta.csv"
    meta.write_text(
        "id,class,note\n"
        + "".join(f'{item},{item.split("/")[0]},"a, ""quoted""; note"\n' for item in ids)
    )
    faiss_file, uri = str(tmp_path / "harr.faiss"), postgres.uri(table="searched")
    search(capsys, "build", "--codes", str(codes), "--index", faiss_file)
    assert "Indexed 40 16-bit codes (flat)" in search(
        capsys, "build", "--codes", str(codes), "--index", uri, "--metadata", str(meta)
    )
    images = [str(folder / item) for item in ids[:6]]
    ask = ["query", "--server", grpc_server, "--json", "--top-k", "8", *images]

    def answers(index, *extra):
        return json.loads(search(capsys, *ask, "--index", index, *extra))

    assert answers(uri) == answers(faiss_file)
    assert answers(uri, "--rerank", "20") == answers(faiss_file, "--rerank", "20")
    for index in (faiss_file, uri):
        search(capsys, "remove", "--index", index, "--ids", *ids[:10])
    assert answers(uri) == answers(faiss_file)
    for index in (faiss_file, uri):
        search(capsys, "add", "--index", index, "--codes", str(codes), "--new-only")
    assert answers(uri) == answers(faiss_file)

    filtered = answers(uri, "--filter", "class=class3", "--filter", 'note=a, "quoted"; note')
    found = [result["id"] for answer in filtered for result in answer["results"]]
    assert found and all(item.startswith("class3/") for item in found)
    for wrong in (["--filter", "colour=red"], ["--filter", "class"]):
        with pytest.raises(SystemExit, match=r"expected KEY=VALUE .* its columns are \['class'"):
            search_main([*ask, "--index", uri, *wrong])
    with pytest.raises(SystemExit, match="--metadata needs a PostgreSQL --index"):
        search_main(
            ["build", "--codes", str(codes), "--index", faiss_file, "--metadata", str(meta)]
        )
    with pytest.raises(SystemExit, match="kind.* must be one of .* for a PostgreSQL index"):
        search_main(["build", "--codes", str(codes), "--index", uri, "--kind", "multihash"])
    assert len(open_index(uri)) == 40  # each refusal left the table as it was


def test_the_page_answers_from_a_table_as_from_a_faiss_file(grpc_server, collection, postgres):
    folder, ids, _, reference = collection
    packed = np.packbits(reference > 0, axis=1)
    uri = postgres.uri(table="page")
    PostgresIndex.build(packed, ids).save(uri)
    image = (folder / ids[3]).read_bytes()
    answers = []
    with ServingClient(grpc_server) as client:
        for index in (HammingIndex.build(packed, ids), open_index(uri)):
            page = create_app(index, client, folder, top_k=6).test_client()
            item = page.get(f"/api/items/{ids[7]}").get_json()
            found = page.post("/api/search", data={"image": (io.BytesIO(image), "q.png")})
            answers.append((item, found.get_json(), page.get("/").status_code))
    assert answers[0] == answers[1]
    assert answers[1][1]["results"][0] == {**answers[1][1]["results"][0], "distance": 0}


def test_the_page_on_an_empty_table_says_so(grpc_server, collection, postgres):
    """A table an encoder has created but not yet filled: one clear answer, not a 500."""
    folder, ids, _, reference = collection
    table = PostgresIndex.open_for_writing(postgres.uri(table="page_empty"), reference.shape[1])
    image = (folder / ids[3]).read_bytes()
    with ServingClient(grpc_server) as client:
        page = create_app(table, client, folder, top_k=6).test_client()
        found = page.post("/api/search", data={"image": (io.BytesIO(image), "q.png")})
    assert found.status_code == 409
    assert "holds no codes yet" in found.get_json()["error"]
