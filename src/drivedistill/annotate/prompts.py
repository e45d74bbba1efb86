"""The two VLM-AD questions asked about each front-camera image (the future path drawn in red).

Q1 (free-form) asks for the ego's current action, next action and the reasoning; Q2 (structured) asks
for one label per group. Both demand a single JSON object so the answer can be validated
(`schema.Q1_SCHEMA`, `schema.Q2_SCHEMA`). `PROMPT_VERSION` is part of every annotator's cache key:
change it whenever the wording changes.
"""

from __future__ import annotations

from drivedistill.annotate.schema import (
    AGENT_LABELS,
    CAUSE_LABELS,
    CONTROL_LABELS,
    LANE_LABELS,
    RULE_LABELS,
    TURN_LABELS,
)
from drivedistill.types import Command, Scene

PROMPT_VERSION = "2"

SYSTEM_PROMPT = (
    "You are an expert driving instructor annotating dashcam images for training a self-driving car. "
    "The image is the ego vehicle's front camera. The red line drawn on the road is the path the ego "
    "vehicle will actually drive during the next 4 seconds. Answer with one JSON object and nothing else."
)

Q1_PROMPT = (
    "Look at the image and the red future path. Answer three questions:\n"
    "1. current_action: what is the ego vehicle doing right now (speed, lane, maneuver)?\n"
    "2. next_action: what will the ego vehicle do next, following the red path?\n"
    "3. reasoning: why? Name the concrete cause visible in the scene (a vehicle, its position and what "
    "it does, the road shape), or say that the road is clear.\n"
    'Reply as JSON: {"current_action": "...", "next_action": "...", "reasoning": "..."} '
    "with one short sentence each."
)


def _options(labels: tuple[str, ...]) -> str:
    return ", ".join(f'"{x}"' for x in labels)


Q2_PROMPT = (
    "Look at the image and the red future path. Classify the ego vehicle's next 4 seconds, choosing "
    "exactly one option per group:\n"
    f"- control: one of {_options(CONTROL_LABELS)}\n"
    f"- turn: one of {_options(TURN_LABELS)}\n"
    f"- lane: one of {_options(LANE_LABELS)}\n"
    'Reply as JSON: {"control": "...", "turn": "...", "lane": "..."}'
)

# the cause question (issue #16): why the ego drives as it does, which agent, what rule. Not yet asked by
# the VLM annotators (their Q2 stays the paper's); `schema.annotation_from_answers(q1, q2, cause)` parses it.
CAUSE_PROMPT = (
    "Look at the image and the red future path. Explain the ego vehicle's next 4 seconds, choosing "
    "exactly one option per group:\n"
    f"- cause (what makes the ego drive this way): one of {_options(CAUSE_LABELS)}\n"
    f"- agent (where the vehicle causing it is, relative to our path): one of {_options(AGENT_LABELS)}\n"
    f"- rule (what the ego does about it): one of {_options(RULE_LABELS)}\n"
    'Reply as JSON: {"cause": "...", "agent": "...", "rule": "..."}'
)


def scene_context(scene: Scene) -> str:
    """Non-visual facts a VLM cannot read from one image: ego speed and the route command."""
    speed_kmh = float(scene.agent_input.ego_status[0]) * 3.6
    command = Command(int(scene.agent_input.command)).name.lower()
    return f"Ego speed: {speed_kmh:.0f} km/h. Route command: {command}."


def question_messages(question: str, scene: Scene, image_url: str) -> list[dict[str, object]]:
    """OpenAI-style chat messages for `question` ("q1" | "q2" | "cause") with the image as a (data) URL."""
    prompt = {"q1": Q1_PROMPT, "q2": Q2_PROMPT, "cause": CAUSE_PROMPT}[question]
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": image_url}},
                {"type": "text", "text": f"{scene_context(scene)}\n{prompt}"},
            ],
        },
    ]
