"""Schema validation of VLM answers: malformed JSON, missing keys, labels outside the paper's sets."""

from __future__ import annotations

import json

import pytest

from drivedistill.annotate.schema import (
    Q1_SCHEMA,
    Q2_SCHEMA,
    Annotation,
    AnswerError,
    annotation_from_answers,
    parse_json_answer,
)

Q1 = {
    "current_action": "Driving at 40 km/h.",
    "next_action": "Slow down.",
    "reasoning": "The car ahead brakes.",
}
Q2 = {"control": "move slowly", "turn": "none", "lane": "keep"}


def test_valid_answers_parse_even_inside_a_fence() -> None:
    ann = annotation_from_answers("Sure:\n```json\n" + json.dumps(Q1) + "\n```", json.dumps(Q2))
    assert ann.texts() == tuple(Q1.values())
    assert ann.label_ids() == (1, 3, 2)


@pytest.mark.parametrize(
    ("text", "schema", "match"),
    [
        ("I think the car should slow down.", Q1_SCHEMA, "no JSON"),
        ('{"current_action": "x y z", "next_action": ', Q1_SCHEMA, "no JSON|not valid JSON"),
        (json.dumps({**Q1, "reasoning": ""}), Q1_SCHEMA, "reasoning"),
        (json.dumps({k: v for k, v in Q1.items() if k != "next_action"}), Q1_SCHEMA, "next_action"),
        (json.dumps({**Q2, "control": "fly"}), Q2_SCHEMA, "control"),
        (json.dumps({**Q2, "turn": "turn left"}), Q2_SCHEMA, "turn"),
        (json.dumps({**Q2, "speed": "fast"}), Q2_SCHEMA, "speed"),
    ],
)
def test_malformed_answers_are_rejected_with_raw_text(text: str, schema: dict, match: str) -> None:
    with pytest.raises(AnswerError, match=match) as err:
        parse_json_answer(text, schema)
    assert err.value.raw == text


def test_annotation_rejects_labels_outside_the_sets() -> None:
    with pytest.raises(AnswerError, match="lane"):
        Annotation(**Q1, control="stop", turn="left", lane="overtake")
