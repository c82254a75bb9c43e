"""A search page in the browser: drop an image, see the nearest images of the collection.

    python -m serving.app --index harr.faiss --server localhost:8500 --images photos/ [--port 8080]

The page and its JSON API are served by Flask; an uploaded image is encoded by the served
model over gRPC (the same way `serving.encode` encoded the collection) and looked up in the
index. Item ids are paths under `--images`, as `serving.encode` names folder items; where
they lie in class folders (`photos/shirt/001.png`), each result says whether it shares the
query's class. API:

    POST /api/search       multipart field `image` → {"results": [{id, distance, thumbnail}]}
                           (with --rerank N, each result also has its "score")
    GET  /api/items/ID     → {id, class, thumbnail, results}: the item's own neighbours
    GET  /thumbnails/ID    → a PNG thumbnail of the item

An ID is the item's id with each path segment URL-encoded (any character, newlines
included). An upload whose header declares more than `--max-pixels` pixels is refused
before it is decoded or sent to the model server.
"""

from __future__ import annotations

if __name__ == "__main__":  # a command: TensorFlow's start-up lines are not its output
    from harr_tf.quiet import quiet_command_start

    quiet_command_start()

import argparse
import functools
import io
import signal
from pathlib import Path

import flask
from PIL import Image, UnidentifiedImageError
from werkzeug.exceptions import HTTPException
from werkzeug.routing import PathConverter
from werkzeug.security import safe_join
from werkzeug.serving import make_server

from harr_tf.config import MAX_IMAGE_PIXELS
from harr_tf.data.image_header import TooManyPixels, check_pixels
from harr_tf.flags import add_verbose, command_name, positive
from harr_tf.index import HammingIndex
from harr_tf.postgres_index import open_index
from serving.cli import add_endpoint_arguments

_EXAMPLES = 24
_THUMBNAIL_PIXELS = 128


class _IdConverter(PathConverter):
    """Flask's `path`, but also matching ids that hold a newline (`.` does not)."""

    regex = r"[^/][\s\S]*?"


def class_of(item_id: str) -> str | None:
    """The class folder of an id ("shirt/001.png" → "shirt"); None for a top-level file."""
    folder, _, _ = item_id.rpartition("/")
    return folder or None


def create_app(
    index: HammingIndex,
    client,
    images: str | Path,
    *,
    top_k: int = 10,
    max_upload_bytes: int = 8 * 2**20,
    rerank: int | None = None,
    max_pixels: int = MAX_IMAGE_PIXELS,
) -> flask.Flask:
    """The Flask app of the page and its API over `index`, encoding uploads with `client`
    (a `serving.client.ServingClient`); thumbnails are made from the files under `images`.
    With `rerank`, an upload's top `rerank` by Hamming distance are re-ranked by its
    continuous code (see `serving.ranking`). Uploads declaring more than `max_pixels`
    pixels are refused from their header."""
    from serving.client import RequestFailed
    from serving.ranking import nearest

    app = flask.Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = max_upload_bytes
    app.url_map.converters["id"] = _IdConverter
    images = Path(images)
    position_of = {item: position for position, item in enumerate(index.ids)}
    examples = index.ids[:: max(1, len(index) // _EXAMPLES)][:_EXAMPLES]

    def described(results: list[dict], query_class: str | None) -> list[dict]:
        for result in results:
            result["thumbnail"] = flask.url_for("thumbnail", item_id=result["id"])
            result["class"] = class_of(result["id"])
            if query_class is not None:
                result["same_class"] = result["class"] == query_class
        return results

    def fail(status: int, message: str):
        return flask.jsonify(error=message), status

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException):
        if error.code == 413:
            limit = max_upload_bytes / 2**20
            return fail(413, f"The upload is larger than the limit of {limit:g} MB.")
        return fail(error.code, error.description)

    @app.get("/")
    def page():
        return flask.render_template(
            "search.html",
            examples=examples,
            top_k=top_k,
            max_upload_bytes=max_upload_bytes,
            count=len(index),
        )

    @app.post("/api/search")
    def search():
        upload = flask.request.files.get("image")
        if upload is None:
            return fail(400, "Expected the image as the multipart form field 'image'.")
        contents = upload.read()
        name = upload.filename or "the upload"
        try:
            check_pixels(contents, max_pixels, name)
            with Image.open(io.BytesIO(contents)) as image:
                image.verify()
        except TooManyPixels as err:
            return fail(400, str(err))
        except (UnidentifiedImageError, OSError, SyntaxError):
            return fail(400, f"{name} is not an image: expected a PNG, JPEG, GIF or BMP file.")
        try:
            batch = client.encode([contents], continuous=rerank is not None)
        except RequestFailed as err:
            return fail(502, f"The model server failed: {err}")
        if batch.failures:
            message = next(iter(batch.failures.values())).strip().splitlines()[0]
            return fail(400, f"The model cannot decode the image: {message}")
        if len(index) == 0:
            return fail(409, "The index holds no codes yet: encode or add some first.")
        results = nearest(index, batch.packed, top_k, continuous=batch.continuous, rerank=rerank)[0]
        return flask.jsonify(results=described(results, None))

    @app.get("/api/items/<id:item_id>")
    def item(item_id: str):
        if item_id not in position_of:
            return fail(404, f"No item {item_id!r} in the index.")
        packed = index.codes([position_of[item_id]])
        results = described(nearest(index, packed, top_k)[0], class_of(item_id))
        return flask.jsonify(
            id=item_id,
            **{"class": class_of(item_id)},
            thumbnail=flask.url_for("thumbnail", item_id=item_id),
            results=results,
        )

    @app.get("/thumbnails/<id:item_id>")
    def thumbnail(item_id: str):
        path = safe_join(str(images), item_id) if item_id in position_of else None
        if path is None or not Path(path).is_file():
            return fail(404, f"No image file for item {item_id!r} under {images}.")
        try:
            return flask.send_file(io.BytesIO(_thumbnail(path)), mimetype="image/png")
        except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as err:
            return fail(404, f"No thumbnail of item {item_id!r}: {err}")

    return app


@functools.lru_cache(maxsize=4096)
def _thumbnail(path: str) -> bytes:
    """A PNG of at most 128 px a side; small images are kept as they are (the page scales
    them up without smoothing)."""
    with Image.open(path) as image:
        image.thumbnail((_THUMBNAIL_PIXELS, _THUMBNAIL_PIXELS))
        buffer = io.BytesIO()
        image.save(buffer, "PNG")
    return buffer.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=command_name("serving.app"),
        description="Serve a search page over an index: upload an image or click one of "
        "the collection, see its nearest images with their Hamming distances.",
    )
    parser.add_argument(
        "--index",
        required=True,
        help="index written by serving.search build: a FAISS file or a postgresql:// table",
    )
    add_endpoint_arguments(parser)
    parser.add_argument(
        "--images",
        required=True,
        help="the folder serving.encode encoded (item ids are paths under it)",
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default: 127.0.0.1, this machine only)",
    )
    parser.add_argument(
        "--port",
        type=positive(int, allow_zero=True),
        default=8080,
        help="port to listen on; 0 picks a free one (default: 8080)",
    )
    parser.add_argument(
        "--top-k", type=positive(int), default=10, help="results per query (default: 10)"
    )
    parser.add_argument(
        "--rerank",
        type=positive(int),
        metavar="N",
        help="re-rank an upload's N nearest by Hamming distance by its continuous code "
        "(as serving.search query --rerank); at least --top-k",
    )
    parser.add_argument(
        "--max-upload-mb",
        type=positive(float),
        default=8.0,
        help="larger uploads are refused (default: 8)",
    )
    parser.add_argument(
        "--max-pixels",
        type=positive(int),
        default=MAX_IMAGE_PIXELS,
        help="uploads whose header declares more pixels are refused before decoding "
        "(default: %(default)s)",
    )
    add_verbose(parser)
    args = parser.parse_args(argv)
    from serving.client import RequestFailed, ServingClient

    try:
        index = open_index(args.index)  # a FAISS file or a postgresql:// table
    except (ValueError, FileNotFoundError, ConnectionError) as err:
        raise SystemExit(f"error: --index {args.index}: {err}") from err
    if args.rerank is not None and args.rerank < args.top_k:
        raise SystemExit(f"error: --rerank {args.rerank} must be at least --top-k {args.top_k}.")
    if not Path(args.images).is_dir():
        raise SystemExit(f"error: --images {args.images}: not a folder.")
    with ServingClient(args.server, args.model, args.signature, retries=3) as client:
        try:
            bits = client.describe().bits
        except RequestFailed as err:
            raise SystemExit(f"error: {err}") from err
        if bits != index.bits:
            raise SystemExit(
                f"error: the served model gives {bits}-bit codes but {args.index} holds "
                f"{index.bits}-bit codes: serve the model that encoded the collection."
            )
        app = create_app(
            index,
            client,
            args.images,
            top_k=args.top_k,
            max_upload_bytes=int(args.max_upload_mb * 2**20),
            rerank=args.rerank,
            max_pixels=args.max_pixels,
        )
        server = make_server(args.host, args.port, app, threaded=True)
        print(f"Search page on http://{args.host}:{server.server_port}/", flush=True)
        # SIGTERM ends the server as Ctrl-C does.
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            server.server_close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
