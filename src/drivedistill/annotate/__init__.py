"""VLM-AD annotators: rule-based (privileged), OpenAI-compatible server, local transformers VLM."""
