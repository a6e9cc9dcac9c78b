"""The wire protocol of real mode: the API's paths, its headers, and the messages of a task.

The server, the device agent and the HTTP transport all speak through this module, so a path,
a header name or a field of a task is spelled once. It imports neither aiohttp nor anything of
the server, so any part of fedsim can import it cheaply. docs/protocol.md is the overview; the
OpenAPI document the server serves is generated from these declarations and the server's own
body schemas (``fedsim/real/server/schemas.py``).

Messages are pydantic models that refuse unknown fields and coerce nothing (``strict``): a task
or a result that does not fit is an error naming the field, never a silent default. A task is
one of :data:`TASK_TYPES`, told apart by its ``kind``; adding a kind is one class here and one
entry in that tuple.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Annotated, Any, Literal, TypeVar, Union
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from fedsim.core.limits import INT64_MAX, json_loads

API = "/api/v1"
T = TypeVar("T")
MODEL_NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}"  # it appears in URLs
# A task id is one path segment of the agent's result URLs (``/tasks/{task_id}/update``): no
# slash, and a first character that is not a dot, so that no id is "." or ".." (an agent told
# to PUT to ``/tasks/../data`` would reach ``/api/v1/data``). The coordinator's ids fit:
# ``r3-d4``, ``a7-d2``, ``r0-relay-g1``, ``r2-forward-g3``, behind a job's channel such as
# ``5f2c9a0e1b3d4c6f:0:``.
_TASK_ID_FIRST, _TASK_ID_REST = r"[A-Za-z0-9]", r"[A-Za-z0-9._:-]"
TASK_ID_PATTERN = f"{_TASK_ID_FIRST}{_TASK_ID_REST}{{0,255}}"
TASK_ID_PREFIX_PATTERN = f"{_TASK_ID_FIRST}{_TASK_ID_REST}*"
"""What may stand before a coordinator's own ids (a job's channel): the same characters."""


class Paths:
    """Every path the server serves; ``{name}`` marks a parameter (fill with :func:`path`)."""

    HEALTH = f"{API}/health"
    ROOT_HEALTH = "/health"  # where container health checks and load balancers look
    OPENAPI = f"{API}/openapi.json"
    METRICS = "/metrics"
    DEVICES = f"{API}/devices"
    DEVICE = f"{API}/devices/{{id}}"
    HEARTBEAT = f"{API}/devices/{{id}}/heartbeat"
    DEVICE_PROFILE = f"{API}/devices/{{id}}/profile"
    DEVICE_CALIBRATE = f"{API}/devices/{{id}}/calibrate"
    DEVICE_CALIBRATION_FAILURE = f"{API}/devices/{{id}}/calibration-failure"
    TASKS = f"{API}/devices/{{id}}/tasks"
    GROUPS = f"{API}/groups"
    MONITORING = f"{API}/monitoring"
    SD_TARGETS = f"{API}/sd/targets"
    PROBE = f"{API}/probe"
    MODELS = f"{API}/models"
    MODEL = f"{API}/models/{{name}}"
    VERSIONS = f"{API}/models/{{name}}/versions"
    VERSION = f"{API}/models/{{name}}/versions/{{version}}"
    BLOB = f"{API}/models/{{name}}/versions/{{version}}/blob"
    DEPLOYMENTS = f"{API}/deployments"
    DEPLOYMENT = f"{API}/deployments/{{id}}"
    DEPLOYMENT_DEVICE = f"{API}/deployments/{{id}}/devices/{{device}}"
    TASK_UPDATE = f"{API}/tasks/{{task_id}}/update"
    TASK_DATA = f"{API}/tasks/{{task_id}}/data"
    TASK_RELAY = f"{API}/tasks/{{task_id}}/relay"
    TASK_ERROR = f"{API}/tasks/{{task_id}}/error"
    JOBS = f"{API}/jobs"
    JOB = f"{API}/jobs/{{job_id}}"
    JOB_EVENTS = f"{API}/jobs/{{job_id}}/events"
    DASHBOARD = "/dashboard"
    DASHBOARD_INDEX = "/dashboard/"
    DASHBOARD_FILE = "/dashboard/{path}"


PATH_PATTERNS: Mapping[str, str] = {
    "id": r"\d+",
    "device": r"\d+",
    "name": MODEL_NAME_PATTERN,
    "version": r"\d+|latest",
    "path": r".+",
}
"""What each path parameter matches (regular expressions); the others match one segment."""


def path(template: str, **params: object) -> str:
    """``template`` with its parameters filled in, each quoted whole (a task id may hold /)."""
    return template.format_map({k: quote(str(v), safe="") for k, v in params.items()})


class Headers:
    """The protocol's own headers; their formats are :data:`HEADER_FORMATS`."""

    NUM_EXAMPLES = "X-Fedsim-Num-Examples"
    METRICS = "X-Fedsim-Metrics"
    TIMINGS = "X-Fedsim-Timings"
    TIMING_ONLY = "X-Fedsim-Timing-Only"
    CPU = "X-Fedsim-Cpu"  # optional: servers that do not know it ignore it


HEADER_FORMATS: Mapping[str, str] = {
    Headers.NUM_EXAMPLES: "a decimal integer >= 0: the samples trained on (samples x epochs)",
    Headers.METRICS: 'a JSON object of finite numbers, e.g. {"loss": 0.2}',
    Headers.TIMINGS: 'a JSON object {"download_s", "train_s", "upload_s"} of seconds >= 0',
    Headers.TIMING_ONLY: "1 or true: the body is padding that stands for an update; 0 or false",
    Headers.CPU: 'optional; a JSON object {"task_s", "train_s", "between_s"} of processor '
    "seconds >= 0 (the agent's own count, AgentCpu)",
}


# -- field types ---------------------------------------------------------------------------

Count = Annotated[int, Field(ge=0, le=INT64_MAX)]
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
Seconds = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Numbers = dict[Annotated[str, Field(max_length=256)], FiniteFloat]
"""Names to finite numbers: resources, metrics (JSON has no NaN or Infinity)."""
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
ModelName = Annotated[str, Field(pattern=f"^{MODEL_NAME_PATTERN}$")]
TaskId = Annotated[str, Field(pattern=f"^{TASK_ID_PATTERN}$")]
RelayToken = Annotated[str, Field(min_length=16, max_length=256)]
HttpUrl = Annotated[str, Field(max_length=2048, pattern=r"^https?://")]


class WireModel(BaseModel):
    """A message on the wire: unknown fields are refused and nothing is coerced."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class ProtocolError(ValueError):
    """A message that does not fit the protocol; ``field`` is the path to what is wrong.

    ``malformed`` says the text does not even parse (not JSON, not an integer), as against a
    value that parses but is out of bounds or of the wrong type.
    """

    def __init__(self, message: str, *, field: str | None = None, malformed: bool = False):
        super().__init__(message)
        self.message = message
        self.field = field
        self.malformed = malformed


def field_path(loc: tuple[int | str, ...], prefix: str = "") -> str | None:
    """A pydantic error location as the protocol names fields: ``hardware.cpu_count``,
    ``devices[2]``; ``prefix`` (a header's name) goes first."""
    out = prefix
    for part in loc:
        out = f"{out}[{part}]" if isinstance(part, int) else f"{out}.{part}" if out else str(part)
    return out or None


def invalid(error: ValidationError, prefix: str = "") -> ProtocolError:
    """The first problem pydantic found, as a :class:`ProtocolError` naming its field."""
    first = error.errors(include_url=False)[0]
    index = first.get("ctx", {}).get("index")  # a validator of a list names the item
    where = field_path((*first["loc"], *([] if index is None else [index])), prefix)
    if first["type"] in ("model_type", "dict_type") and where in (None, prefix or None):
        message = f"{where or 'the body'} must be a JSON object"
    elif first["type"] == "extra_forbidden":
        message = f"{where} is not a known field"
    elif first["type"] == "missing":
        message = f"{where} is required"
    else:
        message = f"{where or 'the body'}: {first['msg']}"
        if first["type"] in ("string_pattern_mismatch", "literal_error", "enum"):
            message += f", got {first['input']!r}"
    return ProtocolError(message, field=where)


# -- tasks: server -> agent ------------------------------------------------------------------


class TaskModel(WireModel):
    """The model a fit task trains: the coordinator's version and where to download it.

    ``url`` (a path under :data:`API`, or absolute) is None for a timing-only task, whose model
    is too large to train for real or has no weights; ``sha256`` is the blob's, checked before
    training. In a hierarchical round a member's ``url`` is its group aggregator's agent, and
    ``token`` is what to present there (``Authorization: Bearer``): its relay task's token.
    """

    name: Annotated[str, Field(min_length=1, max_length=256)]
    version: Count
    nbytes: Count
    sha256: Sha256 | None = None
    url: Annotated[str, Field(min_length=1, max_length=2048)] | None = None
    token: RelayToken | None = None


class TaskBase(WireModel):
    """What every task carries; each kind narrows ``kind`` to its own name."""

    id: TaskId
    kind: str


class SecAggSettings(WireModel):
    """Secure aggregation's settings (``fedsim.core.secagg.SecAggParams``), as a session's
    tasks carry them: the agent checks them there."""

    bits: Annotated[int, Field(ge=16, le=62)]
    clip: Annotated[float, Field(gt=0, allow_inf_nan=False)]
    threshold: Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)]
    neighbours: Annotated[int, Field(ge=2, le=INT64_MAX)] | None = None
    stage_timeout_s: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = None


SessionId = Annotated[str, Field(pattern=f"^{TASK_ID_PATTERN}$")]
SECAGG_MESSAGE_MAX = 4 * 1024 * 1024
"""The most characters of a secure aggregation message in a task (JSON text); a poll's
answer is read up to 4 MiB by the agent anyway."""


class SecAggMasking(WireModel):
    """A fit task's part in secure aggregation: send the update masked in ``session``, at
    fixed-point ``scale``, as ``nbytes`` of little-endian unsigned integers (``bits`` per
    value) instead of the safetensors file."""

    session: SessionId
    scale: Annotated[float, Field(ge=1, allow_inf_nan=False)]
    nbytes: Count


class FitTask(TaskBase):
    """Train the model on the device's data and send the update (``PUT TASK_UPDATE``); under
    secure aggregation (``secagg``), the masked update."""

    kind: Literal["fit"] = "fit"
    model: TaskModel
    samples: Count
    epochs: Count
    batch_size: Count
    flops: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.0
    update_nbytes: Count = 0  # the size of a timing-only update's padding
    config: dict[str, Any] = Field(default_factory=dict)  # learning rate, round, seed, ...
    # An injected dropout: train, then send nothing at all (the round's deadline passes).
    drop: bool = False
    secagg: SecAggMasking | None = None


class UploadDataTask(TaskBase):
    """Send ``nbytes`` of the device's training data (``PUT TASK_DATA``), for cloud training."""

    kind: Literal["upload_data"] = "upload_data"
    samples: Count = 0
    nbytes: Count


class RelayTask(TaskBase):
    """A group aggregator's first step in a hierarchical round: download ``model`` and serve
    it to the group's members to requests bearing ``token``; answer with ``PUT TASK_RELAY``."""

    kind: Literal["relay"] = "relay"
    model: TaskModel
    token: RelayToken


class ForwardTask(TaskBase):
    """A group aggregator's last step: send the group's update to the server (``PUT
    TASK_UPDATE``, timing-only: ``nbytes`` of padding, ``num_examples`` the group's)."""

    kind: Literal["forward"] = "forward"
    nbytes: Count
    num_examples: Count


class SecAggTask(TaskBase):
    """One message round of secure aggregation (``fedsim.core.secagg``): answer the server's
    ``message`` for ``stage`` of ``session`` with the device's side of the protocol, and send
    the answer's bytes (``PUT TASK_UPDATE``, ``X-Fedsim-Num-Examples: 0``; an empty body
    for ``mask``). The device keeps its keys and shares between the stages of a session."""

    kind: Literal["secagg"] = "secagg"
    session: SessionId
    stage: Literal["advertise", "share", "mask", "unmask"]
    settings: SecAggSettings
    message: Annotated[str, Field(max_length=SECAGG_MESSAGE_MAX)] = ""


TASK_TYPES: tuple[type[TaskBase], ...] = (
    FitTask,
    UploadDataTask,
    RelayTask,
    ForwardTask,
    SecAggTask,
)
_BY_KIND: dict[str, type[TaskBase]] = {t.model_fields["kind"].default: t for t in TASK_TYPES}
KINDS: tuple[str, ...] = tuple(_BY_KIND)
# A union built from the tuple, so that adding a kind is one entry; mypy cannot follow a
# union made from a variable, hence the ignore.
Task = Annotated[Union[TASK_TYPES], Field(discriminator="kind")]  # type: ignore[valid-type]  # noqa: UP007
"""A task message: one of :data:`TASK_TYPES`, by ``kind`` (for annotations and schemas)."""


def parse_task(data: Any) -> TaskBase:
    """The task ``data`` (parsed JSON) describes; :class:`ProtocolError` naming what is wrong."""
    if not isinstance(data, dict):
        raise ProtocolError(f"a task must be a JSON object, got {type(data).__name__}")
    kind = data.get("kind")
    if kind not in KINDS:
        known = ", ".join(map(repr, KINDS))
        raise ProtocolError(f"unknown task kind {kind!r}; known: {known}", field="kind")
    try:
        return _BY_KIND[kind].model_validate(data)
    except ValidationError as e:
        raise invalid(e) from None


_TASK_ID: TypeAdapter[str] = TypeAdapter(TaskId)


def task_id_of(data: Any) -> str | None:
    """The ``id`` of the task ``data`` (parsed JSON) if it is a well-formed task id, else None.

    A task that does not parse is still answered under its id when it has a usable one (an
    agent reports the failure to ``TASK_ERROR``); any other id must not go into a URL.
    """
    if not isinstance(data, dict):
        return None
    try:
        return _TASK_ID.validate_python(data.get("id"), strict=True)
    except ValidationError:
        return None


def task_json(task: TaskBase) -> dict[str, Any]:
    """The JSON a task travels as."""
    return task.model_dump(mode="json")


def task_digest(task: TaskBase) -> str:
    """A fingerprint of the work ``task`` asks for.

    Task ids such as ``r3-d4`` repeat from one job to the next, so a finished task is known by
    its id and this digest together: the same id asking for other work is another task.
    """
    canonical = json.dumps(task_json(task), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


# -- results: agent -> server ----------------------------------------------------------------


class Timings(WireModel):
    """How long the agent's steps took by its own clock; only durations travel."""

    download_s: Seconds = 0.0
    train_s: Seconds = 0.0
    upload_s: Seconds = 0.0  # the agent cannot time its own upload; the server does


class AgentCpu(WireModel):
    """The agent process's own processor seconds (``time.process_time``, all its threads) for
    one task: ``task_s`` from the task's arrival until its result is ready (keeping it and the
    request that sends it are not in it), of which ``train_s`` the training thread spent in
    the trainer (``time.thread_time``), and ``between_s`` from the previous task's result
    being ready until this task arrived (keeping and sending that result, polling, heartbeats;
    None for the agent's first task). ``task_s + between_s`` is one whole task cycle."""

    task_s: Seconds
    train_s: Seconds = 0.0
    between_s: Seconds | None = None


class UpdateMeta(WireModel):
    """What travels in the headers of an update (``PUT TASK_UPDATE``); the body is the bytes.

    ``timing_only``: the body is ``update_nbytes`` of padding standing for the update of a
    model that is not trained for real.
    """

    num_examples: Count
    metrics: Numbers = Field(default_factory=dict)
    timings: Timings = Timings()
    timing_only: bool = False
    cpu: AgentCpu | None = None  # in its own header, which older servers ignore

    def headers(self) -> dict[str, str]:
        """The headers that carry it."""
        headers = {
            Headers.NUM_EXAMPLES: str(self.num_examples),
            Headers.METRICS: json.dumps(self.metrics),
            Headers.TIMINGS: self.timings.model_dump_json(),
        }
        if self.timing_only:
            headers[Headers.TIMING_ONLY] = "1"
        if self.cpu is not None:
            headers[Headers.CPU] = self.cpu.model_dump_json()
        return headers

    @classmethod
    def from_headers(cls, headers: Mapping[str, str]) -> UpdateMeta:
        """Read an update's headers; :class:`ProtocolError` naming the header that is wrong."""
        return cls(
            num_examples=int_header(headers, Headers.NUM_EXAMPLES, required=True) or 0,
            metrics=json_header(headers, Headers.METRICS, NUMBERS) or {},
            timings=json_header(headers, Headers.TIMINGS, TIMINGS) or Timings(),
            timing_only=flag_header(headers, Headers.TIMING_ONLY),
            cpu=json_header(headers, Headers.CPU, AGENT_CPU),
        )


NUMBERS: TypeAdapter[dict[str, float]] = TypeAdapter(Numbers)
TIMINGS: TypeAdapter[Timings] = TypeAdapter(Timings)
AGENT_CPU: TypeAdapter[AgentCpu] = TypeAdapter(AgentCpu)


class RelayResult(WireModel):
    """The body of ``PUT TASK_RELAY``: where the device serves the model it holds (None for a
    timing-only model: nothing to hold) and how long its download took."""

    url: HttpUrl | None
    timings: Timings = Timings()


class TaskFailure(WireModel):
    """The body of ``POST TASK_ERROR``: why the agent could not run the task."""

    reason: Annotated[str, Field(min_length=1, max_length=10_000)]


Rate = Annotated[float, Field(gt=0, allow_inf_nan=False)]
"""Bytes (or FLOPs) per second: finite and > 0."""


class StepMeasurement(WireModel):
    """A fitted step model: one training step of n samples takes ``overhead_s +
    per_sample_s * n`` seconds; ``residual_s`` is the fit's root-mean-square miss, and
    ``batch_sizes`` the sizes it was timed at."""

    overhead_s: Seconds
    per_sample_s: Seconds
    residual_s: Seconds = 0.0
    flops_per_sample: Rate | None = None
    batch_sizes: Annotated[
        list[Annotated[int, Field(ge=1, le=INT64_MAX)]], Field(min_length=3, max_length=64)
    ]


class MeasuredProfile(WireModel):
    """The body of ``PUT DEVICE_PROFILE``: the device's hardware as its agent measured it.

    The fields are those of a ``kind: measured`` hardware profile (``conf/hardware/*.yaml``,
    as ``fedsim calibrate`` writes one): ``steps`` holds a step model per model timed,
    ``eval_steps`` (optional) one per model of evaluating it (one batch of n samples), the
    throughputs are bytes/s of safetensors serialization, loading, and FedAvg memory traffic,
    ``cold_start_s`` the first training task's extra seconds over a steady one,
    ``request_cpu_s`` the processor seconds one HTTP request of the agent costs beyond its
    bytes, ``segment_cpu_s`` those each TCP segment of a body a link paces costs it,
    ``persist_cpu_s`` and ``persist_io_s`` the processor seconds and the seconds of
    waiting for the disk of keeping one update before uploading it, and ``round_overhead_s``
    the seconds a server on this hardware works to start a round (deploying a model version,
    posting tasks), ``task_overhead_s`` what a training task costs beyond its steps.
    """

    kind: Literal["measured"] = "measured"
    source: Annotated[str, Field(min_length=1, max_length=1024)]
    description: Annotated[str, Field(max_length=1024)] = ""
    cpu_model: Annotated[str, Field(max_length=256)] = ""
    cpu_cores: Annotated[int, Field(ge=1, le=1_000_000)] = 1
    train_on: Literal["cpu", "accelerator"] = "cpu"
    memory_gb: Annotated[float, Field(gt=0, allow_inf_nan=False)]
    steps: Annotated[dict[ModelName, StepMeasurement], Field(min_length=1, max_length=64)]
    eval_steps: Annotated[dict[ModelName, StepMeasurement], Field(max_length=64)] | None = None
    serialize_bytes_per_s: Rate | None = None
    load_bytes_per_s: Rate | None = None
    aggregate_bytes_per_s: Rate | None = None
    cold_start_s: Seconds | None = None
    request_cpu_s: Seconds | None = None
    segment_cpu_s: Seconds | None = None
    persist_cpu_s: Seconds | None = None
    persist_io_s: Seconds | None = None
    round_overhead_s: Seconds | None = None
    task_overhead_s: Seconds | None = None


MAX_CALIBRATION_REASON = 1024
"""The longest reason a calibration failure may give (characters); the agent cuts a longer one."""


class CalibrationFailure(WireModel):
    """The body of ``PUT DEVICE_CALIBRATION_FAILURE``: the agent could not answer the
    calibration request stamped ``requested_at`` (as the device's record shows it), and why."""

    requested_at: FiniteFloat
    reason: Annotated[str, Field(min_length=1, max_length=MAX_CALIBRATION_REASON)]


class TaskReceipt(WireModel):
    """The server's answer to a result: the task's outcome as filed."""

    task: str
    device: Count
    state: Literal["done"] = "done"
    received_at: float
    nbytes: Count
    sha256: Sha256 | None = None
    num_examples: Count = 0
    error: str | None = None


# -- header formats ------------------------------------------------------------------------


def int_header(headers: Mapping[str, str], name: str, *, required: bool) -> int | None:
    """An integer header >= 0 (:data:`HEADER_FORMATS`); None when absent and not required."""
    raw = headers.get(name)
    if raw is None:
        if required:
            raise ProtocolError(f"header {name} is required", field=name)
        return None
    try:
        value = int(raw.strip(), 10)
    except ValueError:
        raise ProtocolError(
            f"header {name} must be an integer, got {raw!r}", field=name, malformed=True
        ) from None
    if not 0 <= value <= INT64_MAX:
        raise ProtocolError(f"header {name} must be in [0, {INT64_MAX}], got {value}", field=name)
    return value


def json_header(headers: Mapping[str, str], name: str, shape: TypeAdapter[T]) -> T | None:
    """A JSON header validated as ``shape``; None when absent."""
    raw = headers.get(name)
    if raw is None:
        return None
    try:
        value = json_loads(raw)
    except (ValueError, RecursionError) as e:
        raise ProtocolError(f"header {name} is not JSON: {e}", field=name, malformed=True) from None
    try:
        return shape.validate_python(value, strict=True)
    except ValidationError as e:
        raise invalid(e, prefix=name) from None


def flag_header(headers: Mapping[str, str], name: str) -> bool:
    """A boolean header: ``1``/``true`` or ``0``/``false``; absent is false."""
    raw = headers.get(name, "0").strip().lower()
    if raw in ("1", "true"):
        return True
    if raw in ("0", "false"):
        return False
    raise ProtocolError(f"header {name} must be 1 or 0, got {raw!r}", field=name, malformed=True)
