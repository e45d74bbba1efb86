"""VLM-AD annotation schema: three free-form texts (Q1) and three structured labels (Q2).

Label sets follow the paper (see reference/methods.md §3): control ∈ {go straight, move slowly, stop,
reverse}, turn ∈ {left, right, U-turn, none}, lane ∈ {change left, change right, keep}. These three are a
coarsening of the ego's own future (the student's target), so three *cause* groups (issue #16) carry what
the target does not: `cause` — why (stopped vehicle, braking lead, cut-in, cross traffic, slow lead,
following, curve, clear), `agent` — where the agent that causes it is (ahead in our path, left, right,
none), `rule` — what rule the manoeuvre follows (stop behind, keep gap, overtake, yield, follow the
curve, free road). They are optional ("" = not annotated: the VLM annotators' Q2 does not ask them yet;
`CAUSE_PROMPT` + `CAUSE_SCHEMA` do). The order of each tuple is the class index used by the action head
("vlm_ad/labels" (B, 6) long: control, turn, lane, cause, agent, rule; −1 = not annotated).

Every annotation, whatever produced it, is validated against `ANNOTATION_SCHEMA` (jsonschema); a model
answer that does not validate becomes an `AnswerError` carrying the raw text.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from typing import Any

import jsonschema

SCHEMA_VERSION = "2"  # bump when labels or fields change: it is part of every annotator's cache key

CONTROL_LABELS: tuple[str, ...] = ("go straight", "move slowly", "stop", "reverse")
TURN_LABELS: tuple[str, ...] = ("left", "right", "U-turn", "none")
LANE_LABELS: tuple[str, ...] = ("change left", "change right", "keep")
LABEL_GROUPS: dict[str, tuple[str, ...]] = {
    "control": CONTROL_LABELS,
    "turn": TURN_LABELS,
    "lane": LANE_LABELS,
}
CAUSE_LABELS: tuple[str, ...] = (
    "stopped vehicle",
    "braking lead",
    "cut-in",
    "cross traffic",
    "slow lead",
    "following",
    "curve",
    "clear",
)
AGENT_LABELS: tuple[str, ...] = ("ahead", "left", "right", "none")
RULE_LABELS: tuple[str, ...] = (
    "stop behind",
    "keep gap",
    "overtake",
    "yield",
    "follow the curve",
    "free road",
)
CAUSE_GROUPS: dict[str, tuple[str, ...]] = {"cause": CAUSE_LABELS, "agent": AGENT_LABELS, "rule": RULE_LABELS}
ALL_LABEL_GROUPS: dict[str, tuple[str, ...]] = {**LABEL_GROUPS, **CAUSE_GROUPS}
TEXT_FIELDS: tuple[str, ...] = ("current_action", "next_action", "reasoning")

_TEXT = {"type": "string", "minLength": 3, "maxLength": 400}

Q1_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {k: _TEXT for k in TEXT_FIELDS},
    "required": list(TEXT_FIELDS),
    "additionalProperties": False,
}
Q2_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {k: {"type": "string", "enum": list(v)} for k, v in LABEL_GROUPS.items()},
    "required": list(LABEL_GROUPS),
    "additionalProperties": False,
}
CAUSE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {k: {"type": "string", "enum": list(v)} for k, v in CAUSE_GROUPS.items()},
    "required": list(CAUSE_GROUPS),
    "additionalProperties": False,
}
ANNOTATION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        **Q1_SCHEMA["properties"],
        **Q2_SCHEMA["properties"],
        # optional cause groups: "" = not annotated
        **{k: {"type": "string", "enum": ["", *v]} for k, v in CAUSE_GROUPS.items()},
    },
    "required": [*TEXT_FIELDS, *LABEL_GROUPS],
    "additionalProperties": False,
}


class AnswerError(ValueError):
    """A model answer is not valid JSON or does not match the schema; `raw` is the full answer text."""

    def __init__(self, message: str, raw: str) -> None:
        super().__init__(message)
        self.raw = raw


@dataclass(frozen=True)
class Annotation:
    """One sample's VLM-AD supervision: Q1 texts and Q2 labels (strings from the label sets)."""

    current_action: str
    next_action: str
    reasoning: str
    control: str
    turn: str
    lane: str
    cause: str = ""  # CAUSE_LABELS, "" = not annotated
    agent: str = ""  # AGENT_LABELS
    rule: str = ""  # RULE_LABELS

    def __post_init__(self) -> None:
        validate(asdict(self), ANNOTATION_SCHEMA, raw=json.dumps(asdict(self)))

    def texts(self) -> tuple[str, str, str]:
        """The three Q1 texts in head order: current action, next action, reasoning."""
        return (self.current_action, self.next_action, self.reasoning)

    def label_ids(self) -> tuple[int, int, int]:
        """Class indices (control, turn, lane) into CONTROL_LABELS, TURN_LABELS, LANE_LABELS."""
        return (
            CONTROL_LABELS.index(self.control),
            TURN_LABELS.index(self.turn),
            LANE_LABELS.index(self.lane),
        )

    def all_label_ids(self) -> tuple[int, ...]:
        """Class indices of the six groups (ALL_LABEL_GROUPS order); −1 for a cause group not annotated."""
        return tuple(
            groups.index(getattr(self, name)) if getattr(self, name) else -1
            for name, groups in ALL_LABEL_GROUPS.items()
        )

    @property
    def has_causes(self) -> bool:
        return all(getattr(self, name) for name in CAUSE_GROUPS)

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def validate(obj: Any, schema: dict[str, Any], raw: str) -> None:
    """Raise `AnswerError` (with the raw text) when `obj` does not match `schema`."""
    try:
        jsonschema.validate(obj, schema)
    except jsonschema.ValidationError as e:
        where = "/".join(map(str, e.absolute_path)) or "<root>"
        raise AnswerError(f"answer does not match the schema at '{where}': {e.message}", raw) from None


_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL)


def parse_json_answer(text: str, schema: dict[str, Any]) -> dict[str, str]:
    """Extract one JSON object from a model answer (bare, or inside a ``` fence) and validate it.

    Models often wrap JSON in prose or fences; we accept the first fenced block, else the span from the
    first '{' to the last '}'. Anything else is an `AnswerError` carrying `text`.
    """
    fenced = _FENCE.search(text)
    body = fenced.group(1) if fenced else text
    start, end = body.find("{"), body.rfind("}")
    if start < 0 or end <= start:
        raise AnswerError("answer contains no JSON object", text)
    try:
        obj = json.loads(body[start : end + 1])
    except json.JSONDecodeError as e:
        raise AnswerError(f"answer is not valid JSON: {e}", text) from None
    validate(obj, schema, raw=text)
    return obj  # type: ignore[no-any-return]


def annotation_from_answers(q1_text: str, q2_text: str, cause_text: str = "") -> Annotation:
    """Build an `Annotation` from the raw answers to Q1, Q2 and (optional) the cause question (raises
    `AnswerError`)."""
    q1 = parse_json_answer(q1_text, Q1_SCHEMA)
    q2 = parse_json_answer(q2_text, Q2_SCHEMA)
    causes = parse_json_answer(cause_text, CAUSE_SCHEMA) if cause_text else {}
    return Annotation(**q1, **q2, **causes)
