"""Each model's failures, cooldown, probe and calibration in a dict: what RedisModelHealth
does across processes, for one process, on an injectable clock."""

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from adapters.redis_model_health import CALIBRATION_CHARS_CAP, IDLE_EXPIRY_SECONDS
from application.ports import UP, ModelStatus, TokenSample


@dataclass
class _Model:
    written_at: float
    failures: int = 0
    cooling_until: float | None = None  # in the past: the cooldown ran out, it is probing
    probe_until: float = 0.0
    tokens: int = 0
    chars: int = 0


class MemoryModelHealth:
    def __init__(
        self,
        *,
        cooldown_seconds: float,
        cooldown_failures: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._cooldown = cooldown_seconds
        self._cooldown_failures = cooldown_failures
        self._clock = clock
        self._models: dict[str, _Model] = {}

    def _known(self, name: str, now: float) -> _Model | None:
        model = self._models.get(name)
        if model is not None and now - model.written_at >= IDLE_EXPIRY_SECONDS:
            del self._models[name]
            return None
        return model

    def _written(self, name: str, now: float) -> _Model:
        model = self._known(name, now) or self._models.setdefault(name, _Model(now))
        model.written_at = now
        return model

    async def statuses(
        self, names: Sequence[str], samples: Mapping[str, TokenSample]
    ) -> dict[str, ModelStatus]:
        now = self._clock()
        found: dict[str, ModelStatus] = {}
        for name in names:
            if name in found:
                continue
            sample = samples.get(name)
            if sample is not None and sample.tokens > 0 and sample.chars > 0:
                model = self._written(name, now)
                model.tokens += sample.tokens
                model.chars += sample.chars
                while model.chars > CALIBRATION_CHARS_CAP:
                    model.tokens, model.chars = model.tokens // 2, model.chars // 2
            found[name] = self._status(name, now)
        return found

    async def failed(self, name: str) -> ModelStatus:
        now = self._clock()
        model = self._written(name, now)
        model.failures += 1
        cooling = model.cooling_until is not None and model.cooling_until > now
        probing = model.cooling_until is not None and not cooling
        if probing or (not cooling and model.failures >= self._cooldown_failures):
            model.cooling_until = now + self._cooldown
            model.probe_until = 0.0
        return self._status(name, now)

    async def recovered(self, name: str) -> None:
        now = self._clock()
        model = self._known(name, now)
        if model is not None and (model.failures or model.cooling_until is not None):
            model.written_at = now
            model.failures, model.cooling_until, model.probe_until = 0, None, 0.0

    async def claim_probe(self, name: str, seconds: float) -> bool:
        now = self._clock()
        model = self._known(name, now)
        if model is None or model.cooling_until is None or model.cooling_until > now:
            return False
        if model.probe_until > now:
            return False
        model.probe_until = now + seconds
        model.written_at = now
        return True

    def _status(self, name: str, now: float) -> ModelStatus:
        model = self._known(name, now)
        if model is None:
            return UP
        cooling = 0.0 if model.cooling_until is None else max(0.0, model.cooling_until - now)
        return ModelStatus(
            cooling,
            model.cooling_until is not None and cooling == 0.0,
            model.failures,
            model.tokens / model.chars if model.chars else None,
        )
