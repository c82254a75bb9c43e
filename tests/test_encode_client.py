"""`python -m serving.encode` and its gRPC client against a real `serving.server` process.

Reference codes come from the same exported SavedModel loaded in this process
(`encode_pixels` on the raw pixels), so a match also checks the server's decoding.
"""

import contextlib
import dataclasses
import io
import os
import signal
import socket
import subprocess
import threading

import grpc
import numpy as np
import pytest
import tensorflow as tf
from conftest import require_fashion_mnist
from PIL import Image
from serving_support import ServingProcess, encoded_images
from test_atomic import mount_tmpfs

import serving.encode
from harr_tf.data import load_dataset
from serving import PIXELS_INPUT, PIXELS_SIGNATURE
from serving.client import RequestFailed, ServingClient, map_concurrently
from serving.code_store import CodeStore
from serving.encode import main as encode_main

COUNT = 40
BAD_FILES = {"broken.png": b"not an image", "cut.jpg": None}  # None: a truncated JPEG


@pytest.fixture(scope="module")
def collection(tmp_path_factory, exported_base):
    """A folder of 40 real Fashion-MNIST PNG files in class sub-folders; yields
    (folder, ids in collection order, the raw images in that order, reference codes)."""
    dataset = load_dataset(f"idx:{require_fashion_mnist()}")
    images, labels = dataset.read(np.arange(COUNT)), dataset.labels[:COUNT]
    folder = tmp_path_factory.mktemp("collection") / "photos"
    names = [f"class{label}/{index:02d}.png" for index, label in enumerate(labels)]
    for name, contents in zip(names, encoded_images(images), strict=True):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(contents)
    order = sorted(range(COUNT), key=lambda index: names[index])
    saved_model = tf.saved_model.load(str(exported_base / "1"))
    pixels = tf.constant(images[order].astype(np.float32))
    codes = saved_model.signatures[PIXELS_SIGNATURE](**{PIXELS_INPUT: pixels})["codes"].numpy()
    return folder, [names[index] for index in order], images[order], codes


def encode(server, source, out, *extra):
    return encode_main(["--server", server, "--input", str(source), "--out", str(out), *extra])


def read_codes(path):
    with np.load(path) as archive:
        return {key: archive[key] for key in archive.files}


def add_bad_files(folder):
    for name, contents in BAD_FILES.items():
        if contents is None:
            jpeg = tf.io.encode_jpeg(tf.zeros((28, 28, 1), tf.uint8)).numpy()
            contents = jpeg[: len(jpeg) // 2]
        (folder / name).write_bytes(contents)


def test_folder_round_trip_gives_the_in_process_codes_and_names_bad_files(
    grpc_server, collection, tmp_path, capsys
):
    folder, ids, _, reference = collection
    add_bad_files(folder)
    (folder / "notes.txt").write_text("not an image extension: not part of the collection")
    try:
        out = tmp_path / "codes.npz"
        assert encode(grpc_server, folder, out, "--batch-size", "8", "--concurrency", "3") == 0
    finally:
        for name in [*BAD_FILES, "notes.txt"]:
            (folder / name).unlink()
    stored = read_codes(out)
    assert stored["ids"].tolist() == ids
    np.testing.assert_array_equal(stored["codes"], reference)
    np.testing.assert_array_equal(stored["packed"], np.packbits(reference > 0, axis=1))
    assert stored["failed_ids"].tolist() == sorted(BAD_FILES)
    assert "Unknown image file format" in stored["failed_reasons"][0]  # broken.png
    assert "Invalid JPEG data" in stored["failed_reasons"][1]  # cut.jpg
    assert (stored["model"], stored["model_version"], stored["signature"]) == (
        "harr",
        1,
        "serving_default",
    )
    assert sorted(path.name for path in tmp_path.iterdir()) == ["codes.npz"]  # no checkpoint
    err = capsys.readouterr().err
    assert "Skipped 2 items" in err and "broken.png" in err and "cut.jpg" in err


def test_npz_and_file_list_inputs(grpc_server, collection, tmp_path, capsys):
    folder, ids, images, reference = collection
    np.savez(tmp_path / "fm.npz", images=images)
    assert encode(grpc_server, f"npz:{tmp_path / 'fm.npz'}", tmp_path / "a.npz") == 0
    stored = read_codes(tmp_path / "a.npz")
    assert stored["ids"].tolist() == [f"fm/{index}" for index in range(COUNT)]
    np.testing.assert_array_equal(stored["codes"], reference)

    listed = [f"photos/{item}" for item in ids[::-1]] + ["photos/missing.png"]
    (folder.parent / "list.txt").write_text("# my photos\n" + "\n".join(listed) + "\n\n")
    out = tmp_path / "b.npz"
    assert encode(grpc_server, folder.parent / "list.txt", out, "--concurrency", "1") == 0
    stored = read_codes(out)
    assert stored["ids"].tolist() == listed[:-1]
    np.testing.assert_array_equal(stored["codes"], reference[::-1])
    assert stored["failed_ids"].tolist() == ["photos/missing.png"]
    assert "cannot read the file: No such file" in stored["failed_reasons"][0]
    assert "photos/missing.png" in capsys.readouterr().err


def test_resume_sends_only_new_items_and_an_existing_file_is_kept(
    grpc_server, collection, tmp_path, capsys
):
    folder, ids, _, reference = collection
    first = folder / "first.txt"  # ids relative to the folder, as the folder's own
    first.write_text("\n".join(ids[:15]))
    out = tmp_path / "codes.npz"
    try:
        assert encode(grpc_server, first, out) == 0
    finally:
        first.unlink()
    with pytest.raises(SystemExit, match="exists. Pass --resume"):
        encode(grpc_server, folder, out)
    assert read_codes(out)["ids"].tolist() == ids[:15]
    capsys.readouterr()
    assert encode(grpc_server, folder, out, "--resume") == 0
    assert f"Wrote {COUNT} codes of {COUNT} items (25 new" in capsys.readouterr().out
    stored = read_codes(out)
    assert stored["ids"].tolist() == ids
    np.testing.assert_array_equal(stored["codes"], reference)


def test_interrupted_run_checkpoints_and_resume_finishes_it(
    grpc_server, collection, tmp_path, monkeypatch, capsys
):
    folder, ids, _, reference = collection
    open_collection = serving.encode.open_collection

    def interrupted_at_item_20(spec):
        found = open_collection(spec)

        def read(position):
            if position == 20:
                raise KeyboardInterrupt  # as Ctrl-C (or SIGTERM) in the middle of the run
            return found.read(position)

        return dataclasses.replace(found, read=read)

    out = tmp_path / "codes.npz"
    with monkeypatch.context() as patch:
        patch.setattr(serving.encode, "open_collection", interrupted_at_item_20)
        status = encode(grpc_server, folder, out, "--batch-size", "4", "--concurrency", "1")
    assert status == 130
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"interrupted. The codes received so far are saved in {out}.parts; run the same "
        "command with --resume to continue."
    )
    assert not out.exists()
    assert list((tmp_path / "codes.npz.parts").glob("part-*.npz"))
    assert encode(grpc_server, folder, out, "--resume") == 0
    assert "(20 new" in capsys.readouterr().out  # the 20 before the interrupt were kept
    stored = read_codes(out)
    assert stored["ids"].tolist() == ids
    np.testing.assert_array_equal(stored["codes"], reference)
    assert not (tmp_path / "codes.npz.parts").exists()


def test_a_failed_request_stops_encoding_with_one_line_and_exit_1(capsys):
    failed = RequestFailed(grpc.StatusCode.UNAVAILABLE, "connection refused", "Predict")
    assert serving.encode.stopped_encoding(failed, "The 8 codes so far are in the table") == 1
    assert capsys.readouterr().err == (
        "error: Predict: UNAVAILABLE: connection refused. The 8 codes so far are in the "
        "table; run the same command with --resume to continue.\n"
    )


@pytest.mark.slow
def test_server_killed_and_restarted_mid_run(
    exported_base, collection, tmp_path, monkeypatch, caplog
):
    folder, ids, _, reference = collection
    server = ServingProcess(exported_base).start()
    port = server.address.rsplit(":", 1)[1]
    restarted: list[ServingProcess] = []
    crashed = threading.Event()
    open_collection = serving.encode.open_collection

    def restart() -> None:
        restarted.append(ServingProcess(exported_base, "--port", port).start())

    def crashing_at_item_12(spec):
        found = open_collection(spec)

        def read(position):
            if position == 12 and not crashed.is_set():
                crashed.set()
                os.kill(server.pid, signal.SIGKILL)
                threading.Thread(target=restart).start()
            return found.read(position)

        return dataclasses.replace(found, read=read)

    monkeypatch.setattr(serving.encode, "open_collection", crashing_at_item_12)
    try:
        status = encode(
            server.address, folder, tmp_path / "codes.npz", "--batch-size", "4", "--retries", "40"
        )
        assert status == 0
        assert restarted and restarted[0].address == server.address
    finally:
        server.stop()
        for process in restarted:
            process.stop()
    assert "UNAVAILABLE; retry 1 of 40" in caplog.text
    stored = read_codes(tmp_path / "codes.npz")
    assert stored["ids"].tolist() == ids
    np.testing.assert_array_equal(stored["codes"], reference)


def test_client_isolates_each_undecodable_image_of_a_batch(grpc_server, collection):
    folder, ids, _, reference = collection
    images = [(folder / item).read_bytes() for item in ids[:10]]
    bad = {0: b"", 5: images[5][:30], 9: b"GIF89a broken"}
    with ServingClient(grpc_server) as client:
        batch = client.encode([bad.get(index, image) for index, image in enumerate(images)])
        assert sorted(batch.failures) == sorted(bad)
        assert batch.positions.tolist() == [1, 2, 3, 4, 6, 7, 8]
        np.testing.assert_array_equal(batch.codes, reference[batch.positions])
        with pytest.raises(RequestFailed) as failure:
            client.predict([images[0], bad[5]])
        assert failure.value.code == grpc.StatusCode.INVALID_ARGUMENT
        empty = client.encode([])
        assert empty.codes.shape == (0, 16) and empty.packed.shape == (0, 2)


def test_errors_name_what_is_wrong(grpc_server, collection, tmp_path):
    folder = collection[0]
    out = tmp_path / "codes.npz"
    with pytest.raises(SystemExit, match="NOT_FOUND: Servable not found.*nope"):
        encode(grpc_server, folder, out, "--model", "nope")
    with pytest.raises(SystemExit, match="'encode_pixels' must take one tf.string input"):
        encode(grpc_server, folder, out, "--signature", "encode_pixels")
    with pytest.raises(SystemExit, match="no signature 'nope'"):
        encode(grpc_server, folder, out, "--signature", "nope")
    with pytest.raises(SystemExit, match="no such file or folder, nor a dataset spec"):
        encode(grpc_server, tmp_path / "nowhere", out)
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{unused.getsockname()[1]}"
    with pytest.raises(SystemExit, match="UNAVAILABLE.*after 1 retries"):
        encode(address, folder, out, "--retries", "1")
    assert not out.exists() and not (tmp_path / "codes.npz.parts").exists()

    codes = np.ones((1, 16), np.int8)
    np.savez(
        out,
        ids=["x"],
        codes=codes,
        packed=np.packbits(codes > 0, axis=1),
        model="harr",
        model_version=99,
        signature="serving_default",
    )
    with pytest.raises(SystemExit, match="Specific\\(harr, 99\\).*come from version 99"):
        encode(grpc_server, folder, out, "--resume")


def test_map_concurrently_bounds_calls_in_flight_and_propagates_errors():
    lock, state = threading.Lock(), {"now": 0, "most": 0}
    release = threading.Event()

    def call(item):
        with lock:
            state["now"] += 1
            state["most"] = max(state["most"], state["now"])
        release.wait(0.05)
        with lock:
            state["now"] -= 1
        return item * 2

    results = dict(map_concurrently(call, range(20), concurrency=3))
    assert results == {item: item * 2 for item in range(20)}
    assert state["most"] == 3

    def failing(item):
        if item == 4:
            raise ValueError("item 4")
        return item

    with pytest.raises(ValueError, match="item 4"):
        list(map_concurrently(failing, range(100), concurrency=2))


def test_an_image_over_the_pixel_budget_is_skipped_unsent(grpc_server, collection, tmp_path):
    folder, ids, _, reference = collection
    blank = io.BytesIO()
    Image.new("L", (8000, 8000)).save(blank, "PNG")  # 62 KB, 64 MB decoded
    (folder / "huge.png").write_bytes(blank.getvalue())
    try:
        out = tmp_path / "codes.npz"
        assert encode(grpc_server, folder, out) == 0
    finally:
        (folder / "huge.png").unlink()
    stored = read_codes(out)
    assert stored["ids"].tolist() == ids
    np.testing.assert_array_equal(stored["codes"], reference)
    assert stored["failed_ids"].tolist() == ["huge.png"]
    assert stored["failed_reasons"].tolist() == [
        "the image is 8000 x 8000 pixels, over the limit of 40000000 pixels."
    ]
    assert encode(grpc_server, folder, tmp_path / "small.npz", "--max-pixels", "700") == 0
    assert len(read_codes(tmp_path / "small.npz")["failed_ids"]) == COUNT  # 28 x 28 = 784


def test_a_full_disk_is_one_line_and_resume_finishes_with_nothing_lost(
    grpc_server, collection, tmp_path, capsys
):
    """The checkpoint fits on the disk, the codes file beside it does not: the run stops
    with one line, the checkpoint holds every code, and `--resume` writes the file
    without sending anything once there is room."""
    folder, ids, _, reference = collection
    disk = mount_tmpfs(tmp_path / "disk", "1m")
    try:
        fillers = []
        with contextlib.suppress(OSError):  # fill the disk page by page
            while True:
                fillers.append(disk / f"filler{len(fillers)}")
                fillers[-1].write_bytes(b"\0" * 4096)
        for filler in fillers[-3:]:  # room for the checkpoint's meta.json and one part
            filler.unlink(missing_ok=True)
        out = disk / "codes.npz"
        assert encode(grpc_server, folder, out) == 1
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.startswith("error: cannot write ") and "No space left on device" in err
        assert f"The codes saved so far are in {out}.parts" in err
        saved = CodeStore(out).load()  # what the checkpoint holds: codes as the server gave
        assert not out.exists() and len(saved.ids) > 0
        np.testing.assert_array_equal(saved.codes, reference[[ids.index(i) for i in saved.ids]])
        for filler in fillers[:-3]:
            filler.unlink()
        assert encode(grpc_server, folder, out, "--resume") == 0
        new = COUNT - len(saved.ids)
        assert f"Wrote {COUNT} codes of {COUNT} items ({new} new" in capsys.readouterr().out
        stored = read_codes(out)
        assert stored["ids"].tolist() == ids
        np.testing.assert_array_equal(stored["codes"], reference)
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_an_npz_holding_object_arrays_is_refused_naming_the_file(tmp_path):
    ragged = np.array([np.zeros((4, 4)), np.zeros((5, 5))], dtype=object)
    np.savez(tmp_path / "ragged.npz", images=ragged)
    out = tmp_path / "codes.npz"
    with pytest.raises(SystemExit, match=r"--input npz:.*ragged.npz: .*Object arrays"):
        encode("127.0.0.1:1", f"npz:{tmp_path / 'ragged.npz'}", out)
    np.savez(out, ids=np.array(["a"], object), codes=np.ones((1, 8), np.int8))
    (tmp_path / "a.png").write_bytes(encoded_images(np.zeros((1, 8, 8, 1), np.uint8))[0])
    with pytest.raises(SystemExit, match=r"codes.npz is not a readable codes file: Object arrays"):
        encode("127.0.0.1:1", tmp_path / "a.png", out, "--resume")
