"""OpenAI's model list: `default` (the configured order, with fallbacks), then each configured
model by name."""

from litestar import get
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath

from entrypoints.http.controllers import Caller, caller_of
from entrypoints.http.openai.errors import OPENAI_ERRORS, OPENAI_MODEL_ERRORS
from entrypoints.http.openai.turns import DEFAULT_MODEL
from entrypoints.http.openai.wire import Model, ModelList


@get(
    "/models",
    summary="The models a request may name: default (the configured order), then each",
    tags=["openai"],
    responses=OPENAI_ERRORS,
    dependencies={"caller": Provide(caller_of, sync_to_thread=False)},
)
async def list_models(caller: NamedDependency[Caller]) -> ModelList:
    names = [DEFAULT_MODEL, *caller.services.models.names]
    return ModelList(data=[Model(id=name, created=0) for name in names])


@get(
    "/models/{model:str}",
    summary="One model a request may name",
    tags=["openai"],
    responses=OPENAI_MODEL_ERRORS,
    dependencies={"caller": Provide(caller_of, sync_to_thread=False)},
)
async def show_model(model: FromPath[str], caller: NamedDependency[Caller]) -> Model:
    if model != DEFAULT_MODEL:
        caller.services.models.route(model)  # or ModelNotFound
    return Model(id=model, created=0)
