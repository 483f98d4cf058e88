"""One test per DataJoint internal the pipeline relies on (schemas/_dj_compat.py), on real servers.

A DataJoint upgrade that changes one of them fails here, not in a worker. Most tests use a small
throwaway schema of their own (``Number`` -> ``Square``), so that they exercise DataJoint's
behaviour itself rather than the pipeline's tables.
"""

from __future__ import annotations

import logging
import os
import platform
import signal
import uuid

import pytest

from tests.fixtures_db import quiet_datajoint


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(scope="module")
def toy(db):
    """A throwaway schema on the test server: ``Number`` (1..4) and ``Square`` (computed, three-method make)."""
    quiet_datajoint()
    import datajoint as dj

    from schemas import _dj_compat

    db.activate()
    calls: dict[str, list] = {"fetch": [], "compute": [], "insert": [], "sigterm_handler": []}
    stops: set[int] = set()
    schema = dj.Schema(f"test_{uuid.uuid4().hex[:8]}_compat", connection=db.conn)

    @schema
    class Number(dj.Lookup):
        definition = """
        n: int32
        """
        contents = [(1,), (2,), (3,), (4,)]

    @schema
    class Square(dj.Computed):
        definition = """
        -> Number
        ---
        square: int32
        """

        def make_fetch(self, key):
            calls["fetch"].append(dict(key))
            return (int(key["n"]),)

        def make_compute(self, key, n):
            calls["compute"].append(dict(key))
            calls["sigterm_handler"].append(signal.getsignal(signal.SIGTERM))
            if n in stops:
                raise _dj_compat.PopulateStop(f"stop at {n}")
            return (n * n,)

        def make_insert(self, key, square):
            calls["insert"].append(dict(key))
            self.insert1({**key, "square": square})

    yield type(
        "Toy", (), {"schema": schema, "Number": Number, "Square": Square, "calls": calls, "stops": stops}
    )
    schema.drop(prompt=False)
    db.activate()


def _reset(toy):
    toy.Square().delete_quick()
    if toy.Square.jobs.is_declared:
        toy.Square.jobs.delete_quick()
    for calls in toy.calls.values():
        calls.clear()
    toy.stops.clear()


# ------------------------------------------------------------------------------ connections


def test_adapter_backend_names_the_dialect(db):
    from schemas import _dj_compat

    db.activate()
    assert _dj_compat.adapter_backend(db.conn) == ("postgresql" if db.backend == "postgres" else "mysql")


def test_quote_identifier_quotes_for_the_backend(db):
    from schemas import _dj_compat

    db.activate()
    q = _dj_compat.quote_identifier(db.conn)
    cursor = db.conn.query(f"SELECT 7 AS {q('odd name')}")
    assert cursor.fetchall()[0][0] == 7 and cursor.description[0][0] == "odd name"


def test_open_connection_gives_the_id_the_jobs_table_records(db):
    from schemas import _dj_compat, connection
    from schemas.requeue import live_connection_ids

    db.activate()
    settings = connection.connection_settings_from_env(db.backend_arg)
    conn = _dj_compat.open_connection(
        settings["host"], settings["user"], settings["password"], settings["port"], settings["backend"]
    )
    try:
        assert conn.is_connected and int(conn.connection_id) in live_connection_ids(db.conn)
    finally:
        conn.close()


def test_unbind_schema_lets_a_bound_schema_object_bind_elsewhere(db):
    import datajoint as dj

    from schemas import _dj_compat

    db.activate()
    names = [f"test_{uuid.uuid4().hex[:8]}_bind{i}" for i in range(2)]
    schema = dj.Schema(names[0], connection=db.conn)
    try:
        with pytest.raises(dj.DataJointError):
            schema.activate(names[1], connection=db.conn)  # DataJoint refuses a second database
        _dj_compat.unbind_schema(schema)
        schema.activate(names[1], connection=db.conn)
        assert schema.database == names[1]
    finally:
        for name in names:
            dj.Schema(name, connection=db.conn, create_schema=False).drop(prompt=False)
        db.activate()


# ------------------------------------------------------------------------------- jobs tables


def test_declare_jobs_table_rewrites_key_types_and_attaches_the_table(db):
    from datajoint.jobs import Job

    import schemas
    from schemas import _dj_compat

    db.activate()
    trained = schemas.computed_tables()["TrainedModel"]
    # the definition format the rewrite reads: one "name : type" line per key attribute
    definition = Job(trained).definition
    for name in trained.primary_key:
        assert any(line.strip().startswith(f"{name} : ") for line in definition.splitlines()), name
    assert trained.jobs.heading["seed"].original_type == "int32"  # declared at activation
    assert _dj_compat.declare_jobs_table(trained) is False  # exists: nothing created
    assert trained._jobs is not None and trained.jobs is trained._jobs


def test_declared_type_follows_foreign_keys_to_the_core_type(db):
    import schemas
    from schemas import _dj_compat

    db.activate()
    assert _dj_compat.declared_type(schemas.NeuronScore(), "seed") == "int32"
    assert _dj_compat.declared_type(schemas.NeuronScore(), "model_hash") == "char(32)"
    assert _dj_compat.declared_type(schemas.NeuronScore.Unit(), "unit_id") == "int64"


def test_datajoint_logs_native_types_that_the_filter_drops(db, toy):
    from datajoint.jobs import Job

    from schemas import _dj_compat

    records = _Records()
    logger = logging.getLogger("datajoint")
    # a CLI test in this process may have installed the filter on the logger: see the records first
    installed = [f for f in logger.filters if isinstance(f, _dj_compat.NativeTypeWarningFilter)]
    for f in installed:
        logger.removeFilter(f)
    logger.addHandler(records)
    try:
        job = Job(toy.Square())
        if job.is_declared:
            job.drop()
        Job(toy.Square()).declare()  # DataJoint's own definition, as its lazy declaration does
    finally:
        logger.removeHandler(records)
        for f in installed:
            logger.addFilter(f)
    native = [r for r in records.records if r.getMessage().startswith(_dj_compat.NATIVE_TYPE_WARNING)]
    assert native, [r.getMessage() for r in records.records]
    assert not _dj_compat.NativeTypeWarningFilter().filter(native[0])
    assert _dj_compat.NativeTypeWarningFilter().filter(logging.makeLogRecord({"msg": "connected"}))


def test_keys_to_do_is_the_restricted_key_source(toy):
    from schemas import _dj_compat

    _reset(toy)
    square = toy.Square()
    assert len(_dj_compat.keys_to_do(square)) == 4
    assert _dj_compat.keys_to_do(square, {"n": 2}).keys() == [{"n": 2}]
    square.populate({"n": 1})
    assert len(_dj_compat.keys_to_do(square)) == 4  # done keys are part of it


def test_unblocked_keys_leave_out_done_reserved_failed_and_ignored_jobs(toy):
    from schemas import _dj_compat

    _reset(toy)
    square = toy.Square()
    square.populate({"n": 1})
    jobs = square.jobs
    jobs.refresh()
    assert jobs.reserve({"n": 2})
    jobs.reserve({"n": 3})
    jobs.error({"n": 3}, "boom")
    _dj_compat.ignore_job(square, {"n": 4})
    assert len(_dj_compat.unblocked_keys(square)) == 0
    assert _dj_compat.delete_jobs(square, "error") == 1
    assert _dj_compat.unblocked_keys(square).keys() == [{"n": 3}]


def test_job_rows_and_counts_read_datajoints_columns(db, toy):
    from schemas import _dj_compat

    _reset(toy)
    square = toy.Square()
    square.jobs.refresh()
    assert square.jobs.reserve({"n": 2})
    rows = _dj_compat.job_rows(square, "reserved")
    assert [_dj_compat.job_key(square, r) for r in rows] == [{"n": 2}]
    row = rows[0]
    assert row["host"] == platform.node() and row["pid"] == os.getpid()
    assert int(row["connection_id"]) == int(db.conn.connection_id)
    assert row["reserved_time"] is not None and "error_stack" not in row
    assert int(row["priority"]) == _dj_compat.default_job_priority()
    counts = _dj_compat.count_jobs(square)
    assert counts["reserved"] == 1 and counts["pending"] == 3 and counts["total"] == 4


def test_repend_job_keeps_the_priority(toy):
    from schemas import _dj_compat

    _reset(toy)
    square = toy.Square()
    square.jobs.refresh(priority=3)
    assert square.jobs.reserve({"n": 1}) and square.jobs.reserve({"n": 2})
    reserved = {r["n"]: r for r in _dj_compat.job_rows(square, "reserved")}
    _dj_compat.repend_job(square, {"n": 1, "other": "ignored"}, priority=reserved[1]["priority"])
    _dj_compat.repend_job(square, {"n": 2})
    pending = {r["n"]: int(r["priority"]) for r in _dj_compat.job_rows(square, "pending")}
    assert pending[1] == 3 and pending[2] == _dj_compat.default_job_priority() != 3
    square.populate({"n": 1}, reserve_jobs=True)
    assert len(square & {"n": 1}) == 1  # a re-pended job is taken again


def test_ignore_job_marks_a_job_that_populate_then_skips(toy):
    from schemas import _dj_compat

    _reset(toy)
    square = toy.Square()
    _dj_compat.ignore_job(square, {"n": 3})
    assert [_dj_compat.job_key(square, r) for r in _dj_compat.job_rows(square, "ignore")] == [{"n": 3}]
    square.populate(reserve_jobs=True)
    assert {k["n"] for k in square.keys()} == {1, 2, 4}


# ---------------------------------------------------------------------------------- populate


def test_three_method_make_fetches_twice_computes_once_and_inserts_last(toy):
    _reset(toy)
    toy.Square().populate({"n": 2}, reserve_jobs=True)
    assert toy.calls["fetch"] == [{"n": 2}, {"n": 2}]  # compared before inserting
    assert toy.calls["compute"] == [{"n": 2}] and toy.calls["insert"] == [{"n": 2}]


def test_populate_stop_ends_populate_with_suppressed_errors_and_is_recorded_by_name(toy):
    from schemas import _dj_compat

    _reset(toy)
    toy.stops.update({1, 2, 3, 4})
    square = toy.Square()
    with pytest.raises(_dj_compat.PopulateStop, match="stop at"):
        square.populate(reserve_jobs=True, suppress_errors=True)
    # populate ended at the first key instead of recording the error and going on
    assert len(square) == 0 and len(toy.calls["compute"]) == 1
    (row,) = _dj_compat.job_rows(square, "error")
    n = toy.calls["compute"][0]["n"]
    assert row["error_message"] == _dj_compat.recorded_error_message(_dj_compat.PopulateStop(f"stop at {n}"))
    assert _dj_compat.stopped_job_keys(square, _dj_compat.PopulateStop) == [{"n": n}]
    assert _dj_compat.stopped_job_keys(square, KeyError) == []


def test_populate_installs_a_sigterm_handler_that_raises_system_exit(toy):
    from schemas import _dj_compat

    _reset(toy)
    toy.Square().populate({"n": 1}, reserve_jobs=True)
    (handler,) = toy.calls["sigterm_handler"]
    assert callable(handler) and handler is not signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit, match=_dj_compat.SIGTERM_MESSAGE):
        handler(signal.SIGTERM, None)


# ------------------------------------------------------------------------------ object store


def test_read_stored_object_returns_the_stored_bytes(db, tmp_path):
    import datajoint as dj

    from schemas import _dj_compat

    db.activate()
    saved = dict(dj.config.stores)
    dj.config.stores = {**saved, "compatstore": {"protocol": "file", "location": str(tmp_path)}}
    schema = dj.Schema(f"test_{uuid.uuid4().hex[:8]}_store", connection=db.conn)
    try:

        @schema
        class Blobs(dj.Manual):
            definition = """
            blob_id: int32
            ---
            data: <object@compatstore>
            """

        payload = bytes(range(256)) * 10
        Blobs.insert1({"blob_id": 1, "data": payload})
        assert _dj_compat.read_stored_object((Blobs & {"blob_id": 1}).fetch1("data")) == payload
    finally:
        schema.drop(prompt=False)
        dj.config.stores = saved
        db.activate()
