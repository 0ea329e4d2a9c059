"""One confidence, in [0, 1], with one meaning: the share of the evidence within 750 km of the answer."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from agent.answers import ParsedAnswer
from agent.chain import SampleAnswer, evidence_agreement
from agent.prediction import CONFIDENCE_MEANING, Candidate, Prediction, json_schema
from rag_store.store import Neighbour

ROOT = Path(__file__).resolve().parents[1]
PARIS, LYON, TOKYO = (48.8566, 2.3522), (45.764, 4.8357), (35.68, 139.69)  # Paris-Lyon: 392 km


def sample(outcome: str, where: tuple[float, float] | None = None) -> SampleAnswer:
    parsed = ParsedAnswer(candidates=[Candidate(*where)], clues=[], reasoning="") if where else None
    return SampleAnswer(0, 0, outcome, parsed)


def test_refusals_count_against_and_neighbours_weigh_by_similarity():
    best = Candidate(*PARIS, origin="llm")
    neighbours = [Neighbour("a", *LYON, 0.9), Neighbour("b", *TOKYO, 0.3), Neighbour("c", *PARIS, -0.2)]
    samples = [sample("ok", PARIS), sample("ok", LYON), sample("refused"), sample("error")]
    # Neighbours: 0.9 of 1.2 similarity within 750 km (a negative similarity weighs nothing);
    # model calls: 2 of 4 asked agree. Half each.
    assert evidence_agreement(best, samples, neighbours) == round(0.5 * 0.9 / 1.2 + 0.5 * 2 / 4, 4)


def test_bounds_and_the_cases_without_one_kind_of_evidence():
    far = Candidate(*TOKYO, origin="neighbours")
    refusing = [sample("refused"), sample("refused")]
    # The case: verification "none" and a refusing model once printed -62%.
    assert evidence_agreement(far, refusing, [Neighbour("a", *PARIS, 0.8)]) == 0.0
    assert evidence_agreement(Candidate(*PARIS, origin="neighbours"), [], [Neighbour("a", *PARIS, 0.8)]) == 1.0
    assert evidence_agreement(Candidate(*PARIS, origin="llm"), [sample("ok", PARIS)], []) == 1.0
    assert evidence_agreement(Candidate(*PARIS, origin="exif"), refusing, []) == 1.0
    assert evidence_agreement(Candidate(*PARIS), [], []) == 0.0


def test_schema_states_the_meaning_and_covers_every_field():
    schema = json_schema()
    props = schema["properties"]
    assert props["confidence"]["description"] == CONFIDENCE_MEANING
    assert (props["confidence"]["minimum"], props["confidence"]["maximum"]) == (0, 1)
    assert "model's own" in props["model_confidence"]["description"]
    assert set(props) == set(Prediction(1.0, 2.0, "ok").to_dict())
    assert props["status"]["enum"] == ["ok", "fallback", "refused", "unparseable", "error"]
    run = subprocess.run([sys.executable, "-m", "agent.cli", "locate", "--schema"], capture_output=True, text=True,
                         timeout=60, cwd=ROOT)
    assert run.returncode == 0 and json.loads(run.stdout) == schema
    help_text = subprocess.run([sys.executable, "-m", "agent.cli", "locate", "--help"], capture_output=True,
                               text=True, timeout=60, cwd=ROOT, env={"COLUMNS": "400", "PATH": ""}).stdout
    assert " ".join(CONFIDENCE_MEANING.split()[1:6]) in " ".join(help_text.split())


def test_old_records_without_the_new_fields_still_load():
    old = {"latitude": 1.0, "longitude": 2.0, "status": "ok", "confidence": 0.5, "some_future_field": 1}
    p = Prediction.from_dict(old)
    assert p.confidence == 0.5 and p.model_confidence is None and p.transcript == []
