"""The embedded default world on highway-env: scenarios, expert, sensors, collection, closed loop."""
