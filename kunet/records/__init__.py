"""``kunet build-records``: labelled frames -> GZIP-compressed, sharded TFRecords plus a manifest, and reading
them back.

One module per side, re-exported here: :mod:`~kunet.records.schema` (what an example and a records folder
hold), :mod:`~kunet.records.build` (two streaming passes, encoding, sharding, the manifest, the atomic commit)
and :mod:`~kunet.records.read` (the manifest, shard checks, parsing, iterating, naming a damaged shard).
"""

from kunet.records.build import (
    EncodedFrame,
    FrameSummary,
    build_records,
    check_frames,
    source_paths,
    split_frames,
)
from kunet.records.read import (
    assert_split,
    check_shards,
    find_damaged_shard,
    iterate_frames,
    read_manifest,
    shard_paths,
    unreadable_shard,
    verify_checksums,
)
from kunet.records.schema import (
    MANIFEST,
    MANIFEST_KEYS,
    READABLE_SCHEMA_VERSIONS,
    SCHEMA_VERSION,
    SPLITS,
    RecordsError,
    encode_example,
    image_format,
    image_storage,
    parse_example,
)

__all__ = [
    "SCHEMA_VERSION",
    "READABLE_SCHEMA_VERSIONS",
    "image_format",
    "image_storage",
    "MANIFEST",
    "MANIFEST_KEYS",
    "SPLITS",
    "RecordsError",
    "EncodedFrame",
    "FrameSummary",
    "split_frames",
    "check_frames",
    "encode_example",
    "source_paths",
    "build_records",
    "read_manifest",
    "check_shards",
    "verify_checksums",
    "shard_paths",
    "unreadable_shard",
    "assert_split",
    "parse_example",
    "iterate_frames",
    "find_damaged_shard",
]
