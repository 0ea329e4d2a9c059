"""eval.score and `geoagent eval score` on the recorded Gemini file and on hand-made CSVs."""

from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

from agent.cli import app  # the real `geoagent` command, with `eval` mounted as users get it
from eval.score import score
from rag_store.errors import InputError

runner = CliRunner()

TRUTH = "IMG_ID,LAT,LON\na.jpg,48.8566,2.3522\nb.jpg,0,0\nc.jpg,-33.8688,151.2093\nd.jpg,40.7128,-74.006\n"


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_recorded_gemini_file(sample_dir):
    result = score(sample_dir / "recorded_gemini-2.0-flash.csv", sample_dir / "im2gps3k-dev.csv", n_resamples=200)
    m = result.metrics
    assert m.n_items == 990
    # One row says success=True at exactly (0, 0): a placeholder, counted as failed, not answered.
    assert (result.n_rows, result.n_answered, result.n_failed, result.n_missing) == (962, 917, 45, 28)
    assert result.n_invalid == 1 and "515965057_daa4d4f3cb_219_77392231@N00.jpg" in result.invalid_rows[0]
    assert (result.n_extra, result.n_duplicates) == (0, 0)
    assert m.n_answered + m.n_failed + m.n_missing == 990
    # Accuracies are over all 990 photos: each is a whole number of photos out of 990.
    for t, acc in m.accuracy.items():
        hits = acc * 990 / 100
        assert hits == pytest.approx(round(hits), abs=1e-6), t
        assert acc <= 100 * 917 / 990
    assert m.accuracy[1] <= m.accuracy[25] <= m.accuracy[200] <= m.accuracy[750] <= m.accuracy[2500]
    assert 0 < m.geoscore < 5000
    # Country accuracy, like every accuracy, cannot exceed the answer rate (918 / 990).
    assert m.country_acc is not None and 0 < m.country_acc <= 100 * 918 / 990


def test_failed_rows_are_unanswered_whatever_their_coordinates(tmp_path):
    truth = write(tmp_path, "truth.csv", TRUTH)
    # b's (0, 0) is exactly its truth: a failed row must still not count as a hit.
    preds = write(tmp_path, "preds.csv", (
        "IMG_ID,LAT_pred,LON_pred,success\n"
        "a.jpg,48.8566,2.3522,True\n"
        "b.jpg,0.0,0.0,False\n"
        "c.jpg,-33.87,151.21,true\n"
    ))
    result = score(preds, truth, geography=False, n_resamples=100)
    assert (result.n_answered, result.n_failed, result.n_missing) == (2, 1, 1)
    assert result.metrics.accuracy[1] == pytest.approx(50.0)  # a and c of 4 photos
    assert result.metrics.n_error == 1


def test_status_column_and_id_variants(tmp_path):
    truth = write(tmp_path, "truth.csv", TRUTH)
    preds = write(tmp_path, "preds.csv", (
        "id,lat,lon,status\n"
        "a.jpg,48.8566,2.3522,ok\n"
        "b.jpg,0,0,refused\n"
        "c.jpg,-33.87,151.21,fallback\n"
        "d.jpg,40.7,-74.0,timeout\n"
    ))
    m = score(preds, truth, geography=False, n_resamples=100).metrics
    assert (m.n_answered, m.n_fallback, m.n_refused, m.n_error, m.n_missing) == (2, 1, 1, 1, 0)


def test_extra_duplicate_and_invalid_rows_are_reported(tmp_path):
    truth = write(tmp_path, "truth.csv", TRUTH)
    preds = write(tmp_path, "preds.csv", (
        "IMG_ID,LAT_pred,LON_pred\n"
        "a.jpg,48.8566,2.3522\n"
        "a.jpg,0,0\n"
        "zzz.jpg,1,1\n"
        "b.jpg,,\n"
        "c.jpg,95,10\n"
        "d.jpg,north,west\n"
    ))
    result = score(preds, truth, geography=False, n_resamples=100)
    assert (result.n_extra, result.n_duplicates, result.n_invalid) == (1, 1, 3)
    assert result.extra_ids == ["zzz.jpg"] and result.duplicate_ids == ["a.jpg"]
    # First row kept: a is exact.
    assert result.metrics.accuracy[1] == pytest.approx(25.0)
    assert (result.n_answered, result.n_failed, result.n_missing) == (1, 3, 0)
    text = result.table()
    assert "extra 1 (ignored)" in text and "duplicates 1 (first kept)" in text
    assert "line 7 d.jpg" in text


def test_ids_match_without_extension(tmp_path):
    truth = write(tmp_path, "truth.csv", "id,latitude,longitude,country\n101,48.8566,2.3522,FR\n102,0,0,\n")
    preds = write(tmp_path, "preds.csv", "image_id,latitude,longitude\n101.jpg,48.8566,2.3522\n")
    result = score(preds, truth, n_resamples=100)
    assert (result.n_answered, result.n_missing, result.n_extra) == (1, 1, 0)
    assert result.metrics.country_acc == pytest.approx(50.0)


@pytest.mark.parametrize(
    ("pred_text", "message"),
    [
        ("foo,bar\n1,2\n", "no id column"),
        ("IMG_ID,LAT_pred\na.jpg,1\n", "no longitude column"),
        ("", "is empty"),
        ("IMG_ID,LAT_pred,LON_pred,success\na.jpg,1,1,maybe\n", "success value 'maybe'"),
    ],
)
def test_bad_prediction_files(tmp_path, pred_text, message):
    truth = write(tmp_path, "truth.csv", TRUTH)
    preds = write(tmp_path, "preds.csv", pred_text)
    with pytest.raises(InputError, match=message):
        score(preds, truth, geography=False)


def test_bad_truth_files(tmp_path):
    preds = write(tmp_path, "preds.csv", "IMG_ID,LAT_pred,LON_pred\na.jpg,1,1\n")
    with pytest.raises(InputError, match="truth file not found"):
        score(preds, tmp_path / "nope.csv")
    with pytest.raises(InputError, match=r"truth.csv:3: truth coordinates"):
        score(preds, write(tmp_path, "truth.csv", "IMG_ID,LAT,LON\na.jpg,1,1\nb.jpg,100,1\n"))
    with pytest.raises(InputError, match="appears twice"):
        score(preds, write(tmp_path, "truth.csv", "IMG_ID,LAT,LON\na.jpg,1,1\na.jpg,1,1\n"))


def test_cli_table_json_and_out(tmp_path):
    truth = write(tmp_path, "truth.csv", TRUTH)
    preds = write(tmp_path, "preds.csv", "IMG_ID,LAT_pred,LON_pred,success\na.jpg,48.8566,2.3522,True\nb.jpg,0,0,False\n")
    result = runner.invoke(app, ["eval", "score", str(preds), "--truth", str(truth), "--no-geography"])
    assert result.exit_code == 0, result.output
    assert "answered 1 | failed 1 | missing 2 | extra 0" in result.output
    assert "acc @ 1 km (street)" in result.output and "25.00%" in result.output

    out = tmp_path / "out" / "score.json"
    result = runner.invoke(app, ["eval", "score", str(preds), "--truth", str(truth), "--json", "--out", str(out),
                                 "--resamples", "100"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["counts"] == json.loads(out.read_text())["counts"]
    assert data["counts"]["missing"] == 2 and data["metrics"]["n_items"] == 4
    assert data["metrics"]["acc_1km"] == 25.0
    assert math.isclose(data["metrics"]["geoscore"], 5000 / 4)


def test_cli_errors_are_one_line(tmp_path):
    truth = write(tmp_path, "truth.csv", TRUTH)
    result = runner.invoke(app, ["eval", "score", str(tmp_path / "missing.csv"), "--truth", str(truth)])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: predictions file not found")
