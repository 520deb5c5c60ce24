"""A Google Cloud Storage bucket as the store that a grid's shards share
(`config.store = "gs://<bucket>/<path>"`), through gcsfs.

A bucket has no directories and no rename, so nothing here relies on them:
an object appears whole or not at all when its upload completes, and
`create` uploads only if the object is absent (GCS's `ifGenerationMatch=0`
precondition, decided by the server: of two concurrent creates exactly one
succeeds). Stage claims and stored stages (core/bucket_stages.py) and the
run index (report/publish.py) are built from these two guarantees alone;
`open_store` checks both before a run starts.

The client is gcsfs's JSON-API filesystem (`gcsfs.core.GCSFileSystem`),
named directly: fsspec's default for gs:// is gcsfs's experimental client,
whose uploads to zonal buckets neither honour the create precondition nor
finish objects at once. Credentials are gcsfs's defaults (Application
Default Credentials, or the VM's service account). `STORAGE_EMULATOR_HOST`
points it at an emulator (tests/gcs_emulator.py).
"""
from __future__ import annotations

import uuid

from w2s_jax.core.errors import UsageError, WorkdirError

PROTOCOLS = ("gs",)


def transient_errors() -> tuple[type[BaseException], ...]:
    """What a bucket's client raises for a request that may succeed when
    repeated (after its own retries): network, HTTP and credential-refresh
    failures. Empty without gcsfs (no bucket can be used then). A function,
    so that gcsfs (0.7 s to import) loads only where a bucket is used."""
    try:
        import aiohttp
        import google.auth.exceptions
        from gcsfs.retry import HttpError
    except ImportError:
        return ()
    return (OSError, HttpError, aiohttp.ClientError,
            google.auth.exceptions.TransportError)


class ObjectStore:
    """Whole-object reads and writes under one `gs://bucket/path` URL."""

    def __init__(self, url: str):
        protocol, sep, root = url.partition("://")
        if (not sep or protocol not in PROTOCOLS or not root.strip("/")
                or root.startswith("/")):
            raise UsageError(
                f"config.store={url!r} is not a bucket URL; valid: "
                f"gs://<bucket>/<path> (shards on other machines share it), "
                f"or '' for the workdir itself (shards on one shared "
                f"filesystem share the workdir)")
        try:
            import gcsfs.core
        except ImportError:
            raise UsageError(
                f"config.store={url!r} needs gcsfs: pip install -e "
                f"'.[gcs]'") from None
        self.url = f"{protocol}://{root.strip('/')}"
        self.root = root.strip("/")
        # No listing cache: claims are read to see other machines' changes.
        self.fs = gcsfs.core.GCSFileSystem(use_listings_cache=False,
                                           skip_instance_cache=True)

    def __repr__(self) -> str:
        return f"ObjectStore({self.url!r})"

    def _path(self, rel: str) -> str:
        return f"{self.root}/{rel}" if rel else self.root

    def read(self, rel: str) -> bytes | None:
        """The object's bytes, or None if there is none."""
        try:
            return self.fs.cat_file(self._path(rel))
        except FileNotFoundError:
            return None

    def write(self, rel: str, data: bytes) -> None:
        """Upload (replacing any object there); readers see all or nothing."""
        self.fs.pipe_file(self._path(rel), data)

    def create(self, rel: str, data: bytes) -> bool:
        """Upload only if no object is there; False if one is."""
        try:
            self.fs.pipe_file(self._path(rel), data, mode="create")
        except FileExistsError:
            return False
        return True

    def upload(self, local_path: str, rel: str) -> None:
        """Upload a local file (streamed, not read into memory whole)."""
        self.fs.put_file(local_path, self._path(rel))

    def download(self, rel: str, local_path: str) -> None:
        """Download an object to a local file (streamed)."""
        self.fs.get_file(self._path(rel), local_path)

    def exists(self, rel: str) -> bool:
        return self.fs.exists(self._path(rel))

    def names(self, rel: str) -> list[str]:
        """The names of the objects directly under `rel/`."""
        try:
            entries = self.fs.ls(self._path(rel), detail=False)
        except FileNotFoundError:
            return []
        prefix = self._path(rel).rstrip("/") + "/"
        return sorted(e[len(prefix):] for e in entries if e.startswith(prefix))

    def delete(self, rel: str) -> None:
        """Remove the object if it is there."""
        try:
            self.fs.rm_file(self._path(rel))
        except FileNotFoundError:
            pass

    def url_of(self, rel: str) -> str:
        return f"{self.url}/{rel}"


def open_store(url: str) -> ObjectStore:
    """The store at `url`, checked before any work: a probe object is
    uploaded, read back, created again (which must be refused: claims rely
    on it) and deleted, so a missing bucket, a missing permission or a
    bucket without the create precondition stops the run at once."""
    store = ObjectStore(url)
    probe = f".w2s-write-check-{uuid.uuid4().hex}"
    try:
        created = store.create(probe, b"probe")
        read_back = store.read(probe)
        again = store.create(probe, b"again")
        store.delete(probe)
    except FileNotFoundError:
        bucket = store.root.split("/")[0]
        raise WorkdirError(f"config.store={url!r}: bucket {bucket!r} does "
                           f"not exist; create it (gcloud storage buckets "
                           f"create gs://{bucket}) or fix the URL") from None
    except Exception as err:  # gcsfs raises auth, HTTP and OS errors alike
        first = str(err).splitlines()[0] if str(err) else ""
        reason = f"{type(err).__name__}: {first}" if first else type(err).__name__
        raise WorkdirError(f"config.store={url!r} cannot be written: "
                           f"{reason}; check the bucket's name and that "
                           f"these credentials may write to it") from None
    if not created or read_back != b"probe":
        raise WorkdirError(f"config.store={url!r}: an object written there "
                           f"read back different")
    if again:
        raise WorkdirError(f"config.store={url!r}: the bucket let an object "
                           f"be created twice, so stage claims could not be "
                           f"exclusive; use a regional or multi-region "
                           f"bucket (not a zonal one)")
    return store
