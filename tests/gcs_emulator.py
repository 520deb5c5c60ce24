"""A local stand-in for Google Cloud Storage, for tests of the result store
on a bucket (gs:// through gcsfs, the real client).

    python tests/gcs_emulator.py PORT BUCKET

serves GCS's JSON API on localhost:PORT (gcp-storage-emulator, in memory)
with one bucket; point gcsfs at it with STORAGE_EMULATOR_HOST. The emulator
ignores `ifGenerationMatch=0`, GCS's create-only-if-absent precondition that
stage claims rely on, so this adds it: such an upload of an existing object
gets 412 Precondition Failed, as on GCS, decided under one lock so that
concurrent uploads see a single winner.
"""
import sys
import threading
from http import HTTPStatus

from gcp_storage_emulator import server
from gcp_storage_emulator.exceptions import NotFound
from gcp_storage_emulator.handlers import objects

_create_lock = threading.Lock()


def _only_if_absent(upload):
    def checked(request, response, storage):
        if request.query.get("ifGenerationMatch") != ["0"]:
            return upload(request, response, storage)
        name = request.query.get("name", [None])[0] or (
            request.data.get("meta", {}).get("name")
            if isinstance(request.data, dict) else None)
        with _create_lock:
            try:
                storage.get_file_obj(request.params["bucket_name"], name)
            except NotFound:
                return upload(request, response, storage)
            response.status = HTTPStatus.PRECONDITION_FAILED
    return checked


def main(port: int, bucket: str) -> None:
    # insert() looks these up at call time, so wrapping them here is enough.
    objects._multipart_upload = _only_if_absent(objects._multipart_upload)
    objects._media_upload = _only_if_absent(objects._media_upload)
    server.create_server("localhost", port, in_memory=True,
                         default_bucket=bucket).run()


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
