"""A tfds builder that writes its splits shard by shard: bounded memory, parallel, resumable.

tfds's own writer keeps every example of a split (1 GB in memory, then one temporary bucket
file, since examples keep their order) and sorts that bucket in memory before writing shards: for
the 26 GB of GoPro patches that is the whole split in RAM. Here instead

  * a split is a list of work items (a source frame, say); worker processes turn each item into
    its examples (decode, check, cut), in order, with at most `workers + 2` items in flight;
  * this process serialises the examples and streams them into one shard file per
    `items_per_shard` items (written as `<shard>.tmp`, renamed when complete);
  * shards are written in a staging folder `<data_dir>/<name>/<config>/<version>.partial/`, each
    with a record of the items (names, file sizes and times) it was made from; an interrupted run
    leaves the finished shards there, and a re-run resumes after them. A re-run whose items differ
    from a finished shard's (files added, removed or changed), or whose settings differ, refuses,
    naming the folder, rather than mixing two versions of the data;
  * when every shard is there, they are moved (renamed, not copied) into tfds's dataset folder.

Workers are started with 'spawn' (a fork of a process running JAX or TensorFlow threads can
deadlock), so each imports the package once.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import socket
import time
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.core import file_adapters, splits as splits_lib

from nafnet_jax.data.builders.common import PairedImageBuilder
from nafnet_jax.data.images import BadDataError, DataReport

log = logging.getLogger(__name__)

_MANIFEST = 'manifest.json'
_LOCK = 'LOCK'
_DONE = '.done.json'  # suffix of a finished shard's record: {"examples": n, "bytes": b}


@dataclasses.dataclass(frozen=True)
class WorkItem:
    """One unit of work: `key` names it and its sources (recorded, compared on resume);
    `payload` is the picklable argument given to the split's `examples` function."""
    key: str
    payload: Any


@dataclasses.dataclass(frozen=True)
class SplitPlan:
    """How to write one split.

    examples: (payload, report) -> [(example name, feature dict)], a module-level function (or a
      functools.partial of one) so that worker processes can run it; it records file conversions
      in `report` (a DataReport), which is merged and logged per split.
    items_per_shard: shard size in items (also the granularity of resuming).
    parallel: False runs `examples` in this process and consumes it lazily (an item that streams
      many examples from one big file, e.g. the SIDD validation .mat blocks).
    """
    items: Sequence[WorkItem]
    examples: Callable[[Any, DataReport], Iterable[tuple[str, dict]]]
    items_per_shard: int = 64
    parallel: bool = True


def file_key(name: str, *paths: str) -> str:
    """A work item key: `name` plus each file's size and modification time (a changed source
    file then changes the key, and a resumed preparation refuses to mix it with the old one)."""
    parts = [name]
    for path in paths:
        st = os.stat(path)
        parts.append(f'{st.st_size}:{st.st_mtime_ns}')
    return ' '.join(parts)


def _run_item(examples: Callable, payload: Any) -> tuple[list[tuple[str, dict]], DataReport]:
    """Worker side: the item's examples as a list (sent back to the writer) and its report."""
    report = DataReport()
    return list(examples(payload, report)), report


@dataclasses.dataclass
class _Shard:
    split: str
    index: int
    count: int
    filename: str
    items: Sequence[WorkItem]


class StreamingBuilder(PairedImageBuilder, skip_registration=True):
    """Base of builders whose splits are written by `_split_plans` work lists (module doc).

    workers: processes that run the items (None: os.cpu_count(); 1: everything in this process).
    """

    MIN_ITEMS_FOR_WORKERS = 64
    ITEMS_PER_WORKER = 4
    # group_size:1 (one record per chunk) is what random access by index needs.
    ARRAY_RECORD_OPTIONS = 'group_size:1,uncompressed'

    def __init__(self, *, workers: int | None = None, **kwargs):
        if workers is not None and (not isinstance(workers, int) or workers < 1):
            raise ValueError(f'workers must be a positive int or None, got {workers!r}')
        self._workers = workers
        super().__init__(**kwargs)

    def _split_plans(self, dl_manager) -> dict[str, SplitPlan]:
        """{split name: SplitPlan}; raises BadDataError naming what is wrong with the sources."""
        raise NotImplementedError

    def _split_generators(self, dl_manager):  # tfds requires it; all work is in _split_plans
        raise NotImplementedError('StreamingBuilder writes splits in _download_and_prepare')

    # ----------------------------------------------------------------------------- writing

    def _download_and_prepare(self, dl_manager, download_config) -> None:
        del download_config  # max_examples_per_split etc. are not supported here
        plans = self._split_plans(dl_manager)
        tmp_dir = os.fspath(self.data_dir)  # tfds's temporary folder, renamed when we return
        staging = os.path.join(os.path.dirname(tmp_dir.rstrip('/')), f'{self.version}.partial')
        shards = self._shards(plans)
        os.makedirs(staging, exist_ok=True)
        with _StagingLock(staging):
            self._check_staging(staging, shards)
            self._write_pending(staging, shards, plans)
            split_infos = self._move_shards(staging, tmp_dir, shards)
        shutil.rmtree(staging)
        self.info.set_splits(splits_lib.SplitDict(split_infos))

    def _shards(self, plans: dict[str, SplitPlan]) -> list[_Shard]:
        shards = []
        for split, plan in plans.items():
            if not plan.items:
                raise BadDataError(f'{self.name}: split {split!r} has no items to write')
            per = plan.items_per_shard
            count = -(-len(plan.items) // per)
            template = self._get_filename_template(split)
            for i in range(count):
                path = template.sharded_filepath(shard_index=i, num_shards=count)
                shards.append(_Shard(split, i, count, os.path.basename(os.fspath(path)),
                                     plan.items[i * per:(i + 1) * per]))
        return shards

    def _manifest(self) -> dict:
        """What the stored bytes depend on besides the items: a resumed run must match it."""
        features = json.dumps(self.info.features.to_json(), sort_keys=True, default=str)
        return {'dataset': self.name,
                'config': self.builder_config.name if self.builder_config else None,
                'version': str(self.version),
                'file_format': str(self.info.file_format.value),
                'features_sha1': hashlib.sha1(features.encode()).hexdigest()}

    def _check_staging(self, staging: str, shards: list[_Shard]) -> None:
        """Starts a new staging folder, or checks that its finished shards can be kept.

        A finished shard is kept when it has the same file name (so the same shard count) and
        was made from the same items (names, sizes, modification times) as now; shards not yet
        finished are (re)written from the current items.
        """
        path = os.path.join(staging, _MANIFEST)
        manifest = self._manifest()
        if not os.path.exists(path):
            leftovers = [f for f in os.listdir(staging) if f != _LOCK]
            if leftovers:
                raise BadDataError(f'{staging}: holds files but no {_MANIFEST} ({leftovers[:3]}); '
                                   'it was not written by this preparation. Delete the folder to '
                                   'start over.')
            _write_json(path, manifest)
            return
        with open(path) as f:
            previous = json.load(f)

        def refuse(why: str) -> BadDataError:
            return BadDataError(f'{staging}: an interrupted preparation of {self.name} made from '
                                f'other sources or settings ({why}). Its finished shards cannot '
                                'be kept; delete the folder to start over, or restore the '
                                'sources it was made from.')

        for key in manifest:
            if previous.get(key) != manifest[key]:
                raise refuse(f'{key}: {previous.get(key)!r} then, {manifest[key]!r} now')
        planned = {s.filename: s for s in shards}
        done = sorted(f[:-len(_DONE)] for f in os.listdir(staging) if f.endswith(_DONE))
        for filename in done:
            with open(os.path.join(staging, filename + _DONE)) as f:
                keys = json.load(f)['items']
            if filename not in planned:
                raise refuse(f'finished shard {filename} is not in the current plan of '
                             f'{len(shards)} shards')
            now = [item.key for item in planned[filename].items]
            if keys != now:
                first = next((f'{a!r} then, {b!r} now' for a, b in zip(keys, now) if a != b),
                             f'{len(keys)} items then, {len(now)} now')
                raise refuse(f'shard {filename}: item {first}')
        finished = sum(_is_done(staging, s.filename) for s in shards)
        if finished:
            log.warning('%s: resuming an interrupted preparation (%d of %d shards done)',
                        staging, finished, len(shards))

    def _write_pending(self, staging: str, shards: list[_Shard],
                       plans: dict[str, SplitPlan]) -> None:
        pending = [s for s in shards if not _is_done(staging, s.filename)]
        parallel = [s for s in pending if plans[s.split].parallel]
        # A worker costs an interpreter start and the package's imports (seconds): fewer than
        # MIN_ITEMS_FOR_WORKERS items are prepared in this process, and there is at most one
        # worker per ITEMS_PER_WORKER items.
        items = sum(len(s.items) for s in parallel)
        workers = 1 if items < self.MIN_ITEMS_FOR_WORKERS else min(
            self._workers or os.cpu_count() or 1, max(1, items // self.ITEMS_PER_WORKER))
        write_records = self._record_writer()
        serialize = self.info.features.serialize_example
        reports = collections.defaultdict(DataReport)
        start = time.perf_counter()
        with _ItemRunner(workers) as runner:
            results = runner.ordered((plans[s.split].examples, item.payload)
                                     for s in parallel for item in s.items)
            for n, shard in enumerate(pending, 1):
                report = reports[shard.split]
                examples = self._shard_examples(shard, plans[shard.split], results, report)
                counter = _Counter()
                records = ((i, counter.add(serialize(example)))
                           for i, (_, example) in enumerate(examples))
                final = os.path.join(staging, shard.filename)
                tmp = final + '.tmp'
                try:
                    write_records(tmp, records)
                except BaseException:
                    if os.path.exists(tmp):
                        os.remove(tmp)
                    raise
                os.replace(tmp, final)
                _write_json(final + _DONE, {'examples': counter.examples, 'bytes': counter.bytes,
                                            'items': [item.key for item in shard.items]})
                log.info('%s: shard %s written (%d examples, %.2f GB; %d/%d, %.0f s)', self.name,
                         shard.filename, counter.examples, counter.bytes / 1e9, n, len(pending),
                         time.perf_counter() - start)
        for split, report in reports.items():
            report.log(f'{self.name} {split}')

    def _record_writer(self) -> Callable[[str, Iterable[tuple[int, bytes]]], None]:
        """Writes (key, serialized example) records to a shard file of the dataset's format.

        array_record shards are written uncompressed (tfds's writer leaves array_record's default
        compression on): decompressing each record costs more CPU per training pair than the raw
        pair's whole decode, for little disk saved on image data (docs/benchmarks.md).
        """
        if self.info.file_format != file_adapters.FileFormat.ARRAY_RECORD:
            return file_adapters.ADAPTER_FOR_FORMAT[self.info.file_format].write_examples

        def write(path: str, records: Iterable[tuple[int, bytes]]) -> None:
            from array_record.python import array_record_module
            writer = array_record_module.ArrayRecordWriter(path, self.ARRAY_RECORD_OPTIONS)
            try:
                for _, record in records:
                    writer.write(record)
            finally:
                writer.close()

        return write

    @staticmethod
    def _shard_examples(shard: _Shard, plan: SplitPlan, results: Iterator,
                        report: DataReport) -> Iterator[tuple[str, dict]]:
        """The examples of `shard`, item by item: from the workers' results, or made here."""
        for item in shard.items:
            if plan.parallel:
                examples, item_report = next(results)
                _merge(report, item_report)
            else:
                examples = plan.examples(item.payload, report)
            yield from examples

    def _move_shards(self, staging: str, tmp_dir: str,
                     shards: list[_Shard]) -> list[splits_lib.SplitInfo]:
        by_split = collections.defaultdict(list)
        for shard in shards:
            with open(os.path.join(staging, shard.filename + _DONE)) as f:
                done = json.load(f)
            if done['examples'] == 0:
                raise BadDataError(f'{self.name}: shard {shard.filename} has no examples')
            os.replace(os.path.join(staging, shard.filename), os.path.join(tmp_dir, shard.filename))
            by_split[shard.split].append(done)
        return [splits_lib.SplitInfo(name=split, shard_lengths=[d['examples'] for d in done],
                                     num_bytes=sum(d['bytes'] for d in done),
                                     filename_template=self._get_filename_template(split))
                for split, done in by_split.items()]


class _Counter:
    """Counts the examples and bytes that pass through `add`."""

    def __init__(self):
        self.examples = self.bytes = 0

    def add(self, record: bytes) -> bytes:
        self.examples += 1
        self.bytes += len(record)
        return record


def _is_done(staging: str, filename: str) -> bool:
    """A shard is done when both it and its record of counts exist in the staging folder."""
    path = os.path.join(staging, filename)
    return os.path.exists(path) and os.path.exists(path + _DONE)


def _merge(report: DataReport, other: DataReport) -> None:
    for kind, paths in other.conversions.items():
        report.conversions[kind].extend(paths)
    report.ignored.extend(other.ignored)


class _ItemRunner:
    """Runs (function, payload) pairs in worker processes, results in submission order.

    At most workers + 2 items are in flight, so memory stays bounded whatever the split's size.
    workers == 1 runs them here, lazily.
    """

    def __init__(self, workers: int):
        self._workers = workers
        self._pool = None

    def __enter__(self) -> _ItemRunner:
        if self._workers > 1:
            self._pool = concurrent.futures.ProcessPoolExecutor(
                self._workers, mp_context=multiprocessing.get_context('spawn'))
        return self

    def __exit__(self, *exc) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def ordered(self, calls: Iterable[tuple[Callable, Any]]) -> Iterator[list]:
        calls = iter(calls)
        if self._pool is None:
            for function, payload in calls:
                yield _run_item(function, payload)
            return
        in_flight = collections.deque()
        for function, payload in calls:
            in_flight.append(self._pool.submit(_run_item, function, payload))
            if len(in_flight) >= self._workers + 2:
                yield in_flight.popleft().result()
        while in_flight:
            yield in_flight.popleft().result()


class _StagingLock:
    """A lock file naming the host and process preparing into `staging`.

    A second preparation of the same dataset refuses while the first runs; a lock left by a
    process of this host that no longer exists is taken over (the run was killed).
    """

    def __init__(self, staging: str):
        self.path = os.path.join(staging, _LOCK)
        self.owner = f'{socket.gethostname()} {os.getpid()}'

    def __enter__(self) -> _StagingLock:
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                self._take_over_if_stale()
                continue
            with os.fdopen(fd, 'w') as f:
                f.write(self.owner)
            return self
        raise BadDataError(f'{self.path}: could not take the preparation lock')

    def _take_over_if_stale(self) -> None:
        try:
            with open(self.path) as f:
                host, pid = f.read().split()
        except (OSError, ValueError):
            host, pid = '?', '-1'
        if host == socket.gethostname() and not _alive(int(pid)):
            log.warning('%s: taking over from process %s, which no longer runs', self.path, pid)
            os.remove(self.path)
            return
        raise BadDataError(f'{self.path}: another preparation (host {host}, process {pid}) is '
                           'writing this dataset. Wait for it, or delete the lock file if that '
                           'process no longer runs.')

    def __exit__(self, *exc) -> None:
        if os.path.exists(self.path):
            os.remove(self.path)


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _write_json(path: str, content: dict) -> None:
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
        json.dump(content, f, indent=1)
    os.replace(tmp, path)


def raw_pair_features() -> tfds.features.FeaturesDict:
    """lq and gt: uint8 (H, W, 3) stored as raw bytes (no codec: decoding is a copy); name."""
    image = tfds.features.Tensor(shape=(None, None, 3), dtype=np.uint8, encoding='bytes')
    return tfds.features.FeaturesDict({'lq': image, 'gt': image, 'name': tfds.features.Text()})


@dataclasses.dataclass(eq=False)
class PairsConfig(tfds.core.BuilderConfig):
    """What a paired builder stores. patches=None: whole frames as PNG (decoded on every read);
    a PatchGrid: the original's training patches cut once from each train frame, and every
    split's images as raw uint8, since decoding then costs a copy instead of a PNG inflate.
    """
    patches: Any = None  # nafnet_jax.data.patches.PatchGrid | None
