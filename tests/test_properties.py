"""Property-based tests (hypothesis) of the three readers every hostile input goes through:
the model-reply reader, the coordinate validator and the CSV reader."""

from __future__ import annotations

import csv
import io
import json
import math
import time

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from agent.answers import AnswerInvalid, AnswerRefused, parse_answer
from agent.errors import ModelResponseError
from agent.replies import find_json_object, read_completion
from rag_store.coords import LatLon, check_latlon, to_latlon
from rag_store.errors import CoordinateError, SourceError
from rag_store.tables import ID_COLUMNS, LAT_COLUMNS, LON_COLUMNS, read_csv

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


# ------------------------------------------------------------------ coordinates


@SETTINGS
@given(st.floats(-90, 90), st.floats(-180, 180))
def test_any_point_in_range_is_accepted_as_floats_except_null_island(lat, lon):
    point, reason = check_latlon(lat, lon)
    if lat == 0 and lon == 0:
        assert point is None and "(0, 0)" in reason
    else:
        assert point == LatLon(lat, lon) and reason == ""
        # The same numbers written as text read the same.
        assert to_latlon(repr(lat), f" {lon!r} ") == point


@SETTINGS
@given(st.one_of(st.floats(), st.integers(), st.text(max_size=12), st.none(), st.booleans()),
       st.one_of(st.floats(), st.integers(), st.text(max_size=12), st.none(), st.booleans()))
def test_validator_never_lets_a_bad_point_through(lat, lon):
    try:
        point = to_latlon(lat, lon)
    except CoordinateError as exc:
        message = str(exc)
        assert message and "\n" not in message  # one line, always
        return
    # Whatever was accepted is a finite, in-range point that is not (0, 0).
    assert isinstance(point.lat, float) and isinstance(point.lon, float)
    assert math.isfinite(point.lat) and math.isfinite(point.lon)
    assert -90 <= point.lat <= 90 and -180 <= point.lon <= 180
    assert (point.lat, point.lon) != (0.0, 0.0)
    assert not isinstance(lat, bool) and not isinstance(lon, bool)


@pytest.mark.parametrize("lat, lon", [(math.nan, 1), (1, math.inf), (-math.inf, 1), (90.0001, 0), (1, -180.5), (True, 1), ("1e400", 1)])
def test_validator_rejects_each_kind_of_bad_value(lat, lon):
    point, reason = check_latlon(lat, lon)
    assert point is None and reason


# ------------------------------------------------------------------ model replies


@SETTINGS
@given(st.binary(max_size=300) | json_values.map(lambda v: json.dumps(v).encode()))
def test_reply_reader_raises_only_model_response_error(body):
    try:
        data = read_completion(body)
    except ModelResponseError as exc:
        assert "\n" not in str(exc)
        return
    assert isinstance(data["choices"][0]["message"], dict)


@SETTINGS
@given(st.text(max_size=400))
def test_answer_parser_raises_only_its_two_errors(text):
    try:
        parsed = parse_answer(text)
    except (AnswerInvalid, AnswerRefused):
        return
    for c in parsed.candidates:
        assert (c.latitude, c.longitude) != (0.0, 0.0)
        assert -90 <= c.latitude <= 90 and -180 <= c.longitude <= 180


@SETTINGS
@given(st.dictionaries(st.text(max_size=8), json_values, max_size=5), st.text(max_size=50), st.text(max_size=50))
def test_the_object_is_found_inside_any_prose(obj, before, after):
    assume("{" not in before + after and "}" not in before + after)
    found = find_json_object(f"{before}{json.dumps(obj)}{after}")
    assert found == obj


@pytest.mark.parametrize("text", ["{" * 200_000, '{"a":' * 100_000, "{}" * 100_000, "{" * 100_000 + "}" * 100_000])
def test_finding_the_object_is_linear_even_in_a_reply_full_of_braces(text):
    # Quadratic scanning took minutes on these; a linear scan takes well under a second.
    started = time.perf_counter()
    with pytest.raises(AnswerInvalid):
        parse_answer(text)
    assert time.perf_counter() - started < 5


# ------------------------------------------------------------------ CSV


ids = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc", "Zl", "Zp")), min_size=1, max_size=12).map(str.strip).filter(bool)


@SETTINGS
@given(
    st.lists(st.tuples(ids, st.floats(-89, 89), st.floats(-179, 179)), min_size=1, max_size=8),
    st.sampled_from([",", ";", "\t"]),
    st.booleans(),
    st.sampled_from(ID_COLUMNS[:4]),
    st.sampled_from(LAT_COLUMNS[:2]),
    st.sampled_from(LON_COLUMNS[:2]),
)
def test_csv_reader_reads_back_what_was_written(tmp_path_factory, rows, delimiter, bom, id_name, lat_name, lon_name):
    buf = io.StringIO()
    writer = csv.writer(buf, delimiter=delimiter)
    writer.writerow([id_name.upper(), lat_name.upper(), lon_name])
    writer.writerows([[i, repr(a), repr(b)] for i, a, b in rows])
    path = tmp_path_factory.mktemp("csv") / "t.csv"
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + buf.getvalue().encode("utf-8"))
    table = read_csv(path, "truth")
    cols = (table.column(ID_COLUMNS, "id"), table.column(LAT_COLUMNS, "latitude"), table.column(LON_COLUMNS, "longitude"))
    got = [(r.get(cols[0]), float(r.get(cols[1])), float(r.get(cols[2]))) for r in table.rows()]
    assert got == [(i, a, b) for i, a, b in rows]


@SETTINGS
@given(st.binary(max_size=500))
def test_csv_reader_raises_only_source_error(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("csv") / "x.csv"
    path.write_bytes(data)
    try:
        table = read_csv(path, "gallery source")
        for _ in table.rows():
            pass
    except SourceError as exc:
        assert "\n" not in str(exc)
