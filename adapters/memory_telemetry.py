"""Telemetry kept in lists, for tests to read what the use cases told."""

from application.telemetry import FallbackReason, ModelCall, StreamOutcome


class MemoryTelemetry:
    def __init__(self) -> None:
        self.calls: list[ModelCall] = []
        self.fallbacks: list[tuple[str, str, FallbackReason]] = []
        self.streams_active = 0
        self.stream_outcomes: list[StreamOutcome] = []
        self.replays = 0

    def model_called(self, call: ModelCall) -> None:
        self.calls.append(call)

    def fell_back(self, from_model: str, to_model: str, reason: FallbackReason) -> None:
        self.fallbacks.append((from_model, to_model, reason))

    def stream_started(self) -> None:
        self.streams_active += 1

    def stream_ended(self, outcome: StreamOutcome) -> None:
        self.streams_active -= 1
        self.stream_outcomes.append(outcome)

    def replayed(self) -> None:
        self.replays += 1
