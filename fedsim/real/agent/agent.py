"""The device agent: register, send heartbeats, long-poll for tasks and run them.

Two loops share one event loop, heartbeats and tasks; training runs in a one-thread executor,
so the heartbeats keep their rhythm through a long training and the server sees a busy device,
not a dead one. Tasks: ``fit`` (train, send the update; a task marked ``drop`` is trained and
then discarded, as a device that drops out), ``upload_data``, and the two steps of a group
aggregator in hierarchical rounds: ``relay`` (fetch a version and serve it to the group's
members, see :mod:`~fedsim.real.agent.relay`) and ``forward`` (send the group's update); and
``secagg``, the device's side of secure aggregation (:class:`fedsim.core.secagg.SecAggDevices`:
its keys, shares and masks stay in this process between a session's stages), after which a fit
task marked ``secagg`` sends its update masked, never in the clear.

The agent measures its device (``measure_profile``: training steps fitted as overhead +
per-sample cost, serialization and load throughput) after it registers, unless told not to,
and whenever a heartbeat's answer carries a calibration request from the server; it runs in the
training executor, between tasks, and the profile goes to ``PUT DEVICE_PROFILE``. When it
cannot answer a request (a model it cannot build, a measurement that fails, a profile the
server refuses), it says why at ``PUT DEVICE_CALIBRATION_FAILURE``, so the request does not
look pending for ever. The link's bandwidth and round-trip time come from the probe, with the
heartbeats.

Every request outlives a server restart (``client`` retries), and a 401 after one, when the
server has forgotten the device's token, makes the agent register again under the same id and
carry on where it was.

Nothing a server sends ends the agent but a removal (410) or a refused registration. A task
that cannot be read is refused: reported to ``TASK_ERROR`` when it has a usable id, else
logged, and the agent polls on. A download stops at the size its task announced, and no task
moves more than ``max_transfer_bytes`` either way.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import hashlib
import logging
import ssl
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from time import perf_counter, process_time, thread_time
from typing import Any, TypeVar
from urllib.parse import urlsplit

import aiohttp
import numpy as np
import torch

from fedsim.core.limits import INT64_MAX
from fedsim.core.secagg import SecAggDevices, SecAggParams
from fedsim.ml.train import TorchTrainer
from fedsim.real.agent.client import (
    ApiClient,
    ApiError,
    Backoff,
    Body,
    TooLarge,
    Unauthorized,
    same_origin,
)
from fedsim.real.agent.config import AgentConfig
from fedsim.real.agent.metrics import AgentMetrics, MetricsServer, advertised_url
from fedsim.real.agent.probe import measure
from fedsim.real.agent.relay import HeldModels
from fedsim.real.agent.resources import LoadMeter, gpu_reader, hardware
from fedsim.real.agent.state import Identity, StateDir
from fedsim.real.agent.work import (
    TaskError,
    TrainerFactory,
    Trainers,
    data_bytes,
    fit_ins,
    measure_profile,
    padding,
)
from fedsim.real.protocol import (
    MAX_CALIBRATION_REASON,
    AgentCpu,
    FitTask,
    ForwardTask,
    Paths,
    ProtocolError,
    RelayResult,
    RelayTask,
    SecAggTask,
    TaskBase,
    TaskFailure,
    TaskModel,
    Timings,
    UpdateMeta,
    UploadDataTask,
    parse_task,
    task_digest,
    task_id_of,
)
from fedsim.real.secagg_crypto import X25519Crypto
from fedsim.store.safetensors_io import decode, encode

log = logging.getLogger(__name__)

T = TypeVar("T")

POLL_MARGIN = 15.0  # how long past a long poll's ``wait`` its reply may take before it is lost
MAX_REASON_CHARS = 2000  # an error report stays far below the server's JSON body limit
# How long a member tries to fetch its group's model from the aggregator's agent. Unlike the
# server, a peer that is gone may stay gone (an outage): the task fails rather than waiting on.
PEER_DOWNLOAD_TIMEOUT_S = 60.0
OCTETS = "application/octet-stream"


class AgentError(Exception):
    """What the agent cannot get past by retrying: a rejected enrollment, a removed device."""


class Agent:
    """One device's agent. ``run()`` serves until ``stop()`` or an :class:`AgentError`.

    ``trainer_factory`` makes the trainers (default ``TorchTrainer``), called with its keyword
    arguments (``model_name``, ``num_classes``, ``data``, ``seed``, ``device``).
    """

    def __init__(
        self, *, config: AgentConfig, trainer_factory: TrainerFactory | None = None
    ) -> None:
        self.config = config
        self._state = StateDir(config.state_dir)
        self._trainers = Trainers(
            data=config.data_spec,
            input_size=config.input_size,
            factory=trainer_factory or TorchTrainer,
            torch_device=config.torch_device,
            plugins=config.plugins,
        )
        self._backoff = Backoff(base=config.retry_base, cap=config.retry_cap)
        self._gpu = gpu_reader(config.torch_device)
        self.metrics = AgentMetrics(gpu=self._gpu)
        self._metrics_url: str | None = None  # registered as endpoints.agent
        self._held = HeldModels()  # versions relayed to this device's group
        # The device's side of secure aggregation: its secrets never leave this process.
        self._secagg = SecAggDevices(crypto=X25519Crypto())
        self._http: MetricsServer | None = None
        self._http_base: str | None = None  # where peers reach self._http, once it listens
        self._client: ApiClient | None = None
        self._load: LoadMeter | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._hardware: dict[str, Any] | None = None
        self._device_id: int | None = None
        self._token: str | None = None
        self._auth_lock = asyncio.Lock()
        self._calibrating: asyncio.Task[None] | None = None
        self._answered: float | None = None  # the calibration request answered last
        # This process's processor seconds (process_time) when the task under way arrived,
        # and when the previous task's result was counted (None before the first): AgentCpu.
        self._task_cpu_from = 0.0
        self._result_cpu_at: float | None = None
        self._stopping = asyncio.Event()
        self._stopped = asyncio.Event()
        self._running = False

    @property
    def device_id(self) -> int | None:
        """The id the server knows this device by, once registered."""
        return self._device_id

    async def run(self) -> None:
        """Register, then send heartbeats and run tasks until :meth:`stop` is called."""
        if self._running:
            raise RuntimeError("the agent is running already")
        self._running = True
        self._stopping.clear()
        self._stopped.clear()
        if self.config.threads is not None:
            torch.set_num_threads(self.config.threads)
        self._load = LoadMeter(gpu=self._gpu)
        # One worker: tasks run one at a time, and torch's thread pool is the parallelism.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fedsim-train")
        self._http, self._http_base = MetricsServer(self.metrics, held=self._held), None
        try:
            if self.config.metrics_port:
                await self._serve_metrics()
            connector = aiohttp.TCPConnector(ssl=self._ssl())
            async with aiohttp.ClientSession(connector=connector) as session:
                self._session = session
                self._client = ApiClient(
                    session=session, server=self.config.server, backoff=self._backoff
                )
                await _until(self._serve(), self._stopping)
        finally:
            # A training still running cannot be interrupted; its result is simply dropped,
            # and the server hands the task out again to the next run.
            self._executor.shutdown(wait=False, cancel_futures=True)
            if self._http_base is not None:
                await self._http.stop()
            self._running = False
            self._stopped.set()

    async def stop(self) -> None:
        """Stop the loops and wait until :meth:`run` has returned."""
        self._stopping.set()
        if self._running:
            await self._stopped.wait()

    # -- the loops ------------------------------------------------------------------------

    async def _serve(self) -> None:
        await self._register()
        workers = [
            asyncio.create_task(self._heartbeat_loop(), name="fedsim-heartbeat"),
            asyncio.create_task(self._task_loop(), name="fedsim-tasks"),
        ]
        if self.config.probe_interval > 0:
            workers.append(asyncio.create_task(self._probe_loop(), name="fedsim-probe"))
        if self.config.calibrate:
            self._start_calibration(self.config.calibrate_model)
        try:
            done, _ = await asyncio.wait(workers, return_when=asyncio.FIRST_EXCEPTION)
            for worker in done:
                worker.result()
        finally:
            if self._calibrating is not None:
                workers.append(self._calibrating)
            for worker in workers:
                worker.cancel()
            await asyncio.gather(*workers, return_exceptions=True)

    async def _heartbeat_loop(self) -> None:
        url = self._api.url(Paths.HEARTBEAT, id=self._device_id)
        while True:
            try:
                # Off the loop: reading the GPU may run nvidia-smi.
                resources = await asyncio.to_thread(self._meter.read)
                reply = await self._as_device(
                    lambda token, body={"resources": resources}: self._api.request(
                        "PUT", url, token=token, json_body=body
                    )
                )
                self._answer_calibration_request(reply.json())
            except ApiError as e:
                if e.status == 410:
                    raise AgentError(f"device {self._device_id} was removed from the server") from e
                log.warning("heartbeat refused: %s", e)
            except ValueError as e:  # an answer that is not JSON: the heartbeat still counted
                log.warning("the server's answer to a heartbeat is unreadable: %s", _excerpt(e))
            await asyncio.sleep(self.config.heartbeat_interval)

    def _answer_calibration_request(self, record: Any) -> None:
        """Measure again when the device's record (a heartbeat's answer) asks for it."""
        request = _get(record, "calibration_request")
        requested_at = _get(request, "requested_at")
        if not _is_number(requested_at) or requested_at == self._answered:
            return
        if self._calibrating is not None and not self._calibrating.done():
            return  # measuring already; a request still pending afterwards is seen next time
        self._answered = requested_at
        model = _get(request, "model") or self.config.calibrate_model
        log.info("the server asks for a new measurement of %s", model)
        self._start_calibration(str(model), requested_at)

    def _start_calibration(self, model: str, requested_at: float | None = None) -> None:
        self._calibrating = asyncio.create_task(
            self._calibrate(model, requested_at), name="fedsim-calibrate"
        )

    async def _calibrate(self, model: str, requested_at: float | None = None) -> None:
        """Measure the device for ``model`` in the training executor and report the profile.

        A failure is logged, never fatal: the agent trains as well without a profile. When the
        measurement answers the server's request stamped ``requested_at``, the failure is
        reported to the server too.
        """
        loop = asyncio.get_running_loop()
        try:
            measure = functools.partial(
                measure_profile,
                model,
                self.config.state_dir,
                plugins=self.config.plugins,
                shape=self.config.calibrate_shape,
            )
            profile = await loop.run_in_executor(self._executor, measure)
            url = self._api.url(Paths.DEVICE_PROFILE, id=self._device_id)
            await self._as_device(
                lambda token: self._api.request("PUT", url, token=token, json_body=profile)
            )
        except (TaskError, ApiError) as e:
            log.warning("calibration of %s not reported: %s", model, e)
            await self._report_calibration_failure(requested_at, str(e))
            return
        except Exception as e:  # the measurement's own failure; the agent goes on without it
            log.exception("calibration of %s failed", model)
            await self._report_calibration_failure(requested_at, f"{type(e).__name__}: {e}")
            return
        step = profile["steps"][model]
        log.info(
            "measured %s: step %.3f ms + %.2f us x n (residual %.1f us), reported",
            model,
            step["overhead_s"] * 1e3,
            step["per_sample_s"] * 1e6,
            step["residual_s"] * 1e6,
        )

    async def _report_calibration_failure(self, requested_at: float | None, reason: str) -> None:
        """Tell the server why its calibration request of ``requested_at`` went unanswered
        (nothing for the agent's own start-up measurement, None, which no one asked for)."""
        if requested_at is None:
            return
        url = self._api.url(Paths.DEVICE_CALIBRATION_FAILURE, id=self._device_id)
        body = {"requested_at": requested_at, "reason": reason[:MAX_CALIBRATION_REASON]}
        try:
            await self._as_device(
                lambda token: self._api.request("PUT", url, token=token, json_body=body)
            )
        except ApiError as e:  # a newer request (409), a removal: nothing more to say
            log.warning("the calibration failure was not reported: %s", e)

    async def _probe_loop(self) -> None:
        """Measure the link to the server now and then; report it by heartbeat and metrics."""
        while True:
            try:
                result = await self._as_device(
                    lambda token: measure(
                        self._session,
                        self.config.server.rstrip("/"),
                        headers={"Authorization": f"Bearer {token}"},
                        nbytes=self.config.probe_bytes,
                    )
                )
                self._meter.probed(result)
                self.metrics.set_probe(
                    up_bps=result.up_bps, down_bps=result.down_bps, rtt_s=result.rtt_s
                )
                log.debug("probe: %s", result)
            except (aiohttp.ClientError, asyncio.TimeoutError, ApiError) as e:
                log.warning("bandwidth probe failed: %s", e)
            await asyncio.sleep(self.config.probe_interval)

    async def _task_loop(self) -> None:
        url = self._api.url(Paths.TASKS, id=self._device_id)
        wait = self.config.poll_wait
        while True:
            try:
                reply = await self._as_device(
                    lambda token: self._api.request(
                        "GET",
                        url,
                        token=token,
                        params={"wait": str(wait)},
                        read_timeout=wait + POLL_MARGIN,
                    )
                )
                self._task_cpu_from = process_time()  # the task's handling starts here
                task = None if reply.status == 204 or not reply.body else reply.json()
            except ApiError as e:
                if e.status == 410:
                    raise AgentError(f"device {self._device_id} was removed from the server") from e
                log.error("polling for tasks failed: %s", e)
                await asyncio.sleep(self._backoff.cap)
                continue
            except ValueError as e:  # not JSON, beyond the protocol's limits, or too long
                log.error("the server sent a task this agent cannot read: %s", _excerpt(e))
                await asyncio.sleep(self._backoff.cap)
                continue
            if task is not None and not await self._run_task(task):
                # A task refused without an id to report it under stays assigned to this
                # device, and the next poll would hand it out at once.
                await asyncio.sleep(self._backoff.cap)

    # -- tasks ----------------------------------------------------------------------------

    async def _run_task(self, raw: Any) -> bool:
        """Run the task ``raw`` (parsed JSON) and report its result, or why it failed.

        False when there is nothing to report under: ``raw`` has no well-formed task id (such
        an id must not go into a URL), so the task is refused with one line of log.
        """
        task_id = task_id_of(raw)
        if task_id is None:
            log.error("refusing a task without a well-formed id: %s", _excerpt(raw))
            return False
        kind = raw.get("kind")
        log.info("task %s: %s", task_id, _excerpt(kind))
        self._meter.busy = True
        self.metrics.busy.set(1)
        try:
            task = self._read(raw)
            outcome = "succeeded"
            if isinstance(task, FitTask):
                outcome = await self._fit(task)
            elif isinstance(task, UploadDataTask):
                await self._upload_data(task)
            elif isinstance(task, RelayTask):
                await self._relay(task)
            elif isinstance(task, ForwardTask):
                await self._forward(task)
            elif isinstance(task, SecAggTask):
                await self._secagg_stage(task)
            else:
                raise TaskError(f"this agent does not run {kind!r} tasks")
            self.metrics.task_done(kind, outcome)
        except AgentError:
            raise
        except Exception as e:  # any failure of the work is the task's, reported to the server
            self.metrics.task_done(kind, "failed")
            expected = isinstance(e, (TaskError, ApiError))
            reason = str(e) if isinstance(e, TaskError) else f"{type(e).__name__}: {e}"
            reason = reason[:MAX_REASON_CHARS]  # the server's words may be in it, at any length
            log.error("task %s failed: %s", task_id, reason, exc_info=not expected)
            await self._report_error(task_id, reason)
        finally:
            self._meter.busy = False
            self.metrics.busy.set(0)
        return True

    @staticmethod
    def _read(raw: Any) -> TaskBase:
        try:
            return parse_task(raw)
        except ProtocolError as e:
            raise TaskError(str(e)) from None

    async def _fit(self, task: FitTask) -> str:
        """Train and send the update; returns the outcome, "dropped" for a task marked drop."""
        task_id = task.id
        digest = task_digest(task)
        if self._state.is_finished(task_id, digest):
            stored = self._state.stored_result(digest)
            if stored is None:
                raise TaskError(
                    f"task {task_id} was trained by this device before and its result is no "
                    "longer kept; not training it twice"
                )
            log.info("task %s: trained before; sending the kept result again", task_id)
            await self._put(task_id, "update", stored.body, len(stored.body), stored.headers)
            return "succeeded"

        ins = fit_ins(task, None)
        model = task.model
        # What the update claims is what the task asked for and the trainer runs, no more.
        num_examples = ins.samples * ins.epochs
        if num_examples > INT64_MAX:
            raise TaskError(
                f"samples x epochs ({ins.samples} x {ins.epochs}) is beyond any count the "
                "protocol carries"
            )
        if not model.url:
            # Timing-only: the model is too large to train here for real, or has no weights;
            # what the server measures is the upload of an update of the model's size.
            if task.drop:
                return _dropped(task_id)
            nbytes = self._transfer(ins.update_nbytes, "the update_nbytes")
            headers = UpdateMeta(num_examples=num_examples, timing_only=True).headers()
            await self._put(task_id, "update", lambda: padding(nbytes), nbytes, headers)
            return "succeeded"

        trainer = self._trainers.get(ins.config, default_model=ins.model.name)
        blob, download_s = await self._download_model(model, "not training on it")

        device_id = self._device_id
        secagg = task.secagg
        if secagg is not None and device_id is None:
            raise TaskError("this agent has no device id to mask its update under")

        train_cpu_s = 0.0

        def train() -> tuple[bytes, dict[str, float], float]:
            nonlocal train_cpu_s
            # decode gives read-only views of the blob; the trainer loads copies.
            parameters = {name: np.array(a) for name, a in decode(blob).items()}
            begun, begun_cpu = perf_counter(), thread_time()
            arrays, metrics = trainer(device_id, dataclasses.replace(ins, parameters=parameters))
            train_cpu_s = thread_time() - begun_cpu
            if secagg is None:
                return encode(arrays), metrics, perf_counter() - begun
            # Secure aggregation: only the masked input leaves the device.
            assert device_id is not None
            masked = self._secagg.mask(
                device_id, secagg.session, arrays, num_examples, secagg.scale
            )
            if len(masked) != secagg.nbytes:
                raise TaskError(
                    f"the masked update is {len(masked)} bytes but the task says {secagg.nbytes}"
                )
            return masked, metrics, perf_counter() - begun

        loop = asyncio.get_running_loop()
        body, metrics, train_s = await loop.run_in_executor(self._executor, train)
        self._meter.trained(ins.samples * ins.epochs, train_s)
        self.metrics.train_seconds.observe(train_s)
        if task.drop:
            return _dropped(task_id)
        headers = UpdateMeta(
            num_examples=num_examples,
            metrics={str(k): float(v) for k, v in metrics.items()},
            # The agent cannot time its own upload before sending it; the server times it.
            timings=Timings(download_s=download_s, train_s=train_s),
            cpu=self._task_cpu(train_cpu_s),
        ).headers()
        # Kept before it is sent: a restart from here on re-sends it instead of training again.
        await loop.run_in_executor(
            self._executor,
            lambda: self._state.store_result(task_id, digest, headers=headers, body=body),
        )
        await self._put(task_id, "update", body, len(body), headers)
        return "succeeded"

    def _task_cpu(self, train_s: float) -> AgentCpu:
        """This process's processor seconds on the task under way until now (its result is
        about to be kept and sent), and between the previous result's being counted so and
        this task's arrival (keeping and sending that result, polling, heartbeats)."""
        now = process_time()
        between = None
        if self._result_cpu_at is not None:
            between = max(0.0, self._task_cpu_from - self._result_cpu_at)
        self._result_cpu_at = now  # the next task's between_s counts from here
        return AgentCpu(
            task_s=max(0.0, now - self._task_cpu_from), train_s=max(0.0, train_s), between_s=between
        )

    async def _secagg_stage(self, task: SecAggTask) -> None:
        """Answer one stage of secure aggregation with this device's side of the protocol;
        its compute time travels as ``train_s``."""
        device_id = self._device_id
        if device_id is None:
            raise TaskError("this agent has no device id to take part in secure aggregation")
        try:
            params = SecAggParams.of(task.settings)
        except ValueError as e:
            raise TaskError(f"settings.{e}") from None
        message = task.message.encode()

        def answer() -> tuple[bytes, float]:
            begun = perf_counter()
            out = self._secagg.step(device_id, task.session, task.stage, params, message)
            return out, perf_counter() - begun

        loop = asyncio.get_running_loop()
        try:
            body, compute_s = await loop.run_in_executor(self._executor, answer)
        except ValueError as e:
            raise TaskError(f"secure aggregation {task.stage}: {e}") from None
        headers = UpdateMeta(num_examples=0, timings=Timings(train_s=compute_s)).headers()
        await self._put(task.id, "update", body, len(body), headers)

    async def _download_model(self, model: TaskModel, refusal: str) -> tuple[bytes, float]:
        """A task's model blob, checked against its sha256, and the seconds it took.

        From the server with the device token, or, when the task carries a relay ``token``,
        from the group aggregator's agent at ``url`` with that token. No more than the task's
        ``model.nbytes`` is read, and a blob of another size is refused.
        """
        assert model.url is not None, "a timing-only model has nothing to download"
        url = self._api.resolve(model.url)
        if urlsplit(url).scheme not in ("http", "https"):
            raise TaskError(f"the model's url {url[:200]!r} is not http(s); {refusal}")
        if not model.token and not same_origin(url, self._api.root):
            # Only a relay token makes another host a source; the server's blobs are its own.
            raise TaskError(f"the model's url {url[:200]!r} is not on the server; {refusal}")
        limit = self._transfer(model.nbytes, "the model's nbytes")
        started = perf_counter()
        try:
            if model.token:
                fetch = self._api.download(
                    url, token=None, limit=limit, headers={"Authorization": f"Bearer {model.token}"}
                )
                try:
                    blob = await asyncio.wait_for(fetch, PEER_DOWNLOAD_TIMEOUT_S)
                except asyncio.TimeoutError:
                    raise TaskError(
                        f"could not fetch the model from the group's aggregator at {url} "
                        f"within {PEER_DOWNLOAD_TIMEOUT_S:g} s"
                    ) from None
            else:
                blob = await self._as_device(
                    lambda token: self._api.download(url, token=token, limit=limit)
                )
        except TooLarge as e:
            raise TaskError(f"{e} (the task's model.nbytes); {refusal}") from None
        if len(blob) != model.nbytes:
            raise TaskError(
                f"the model blob is {len(blob)} bytes but the task says {model.nbytes}; {refusal}"
            )
        download_s = perf_counter() - started
        self._meter.transfer("bandwidth_down", len(blob), download_s)
        self.metrics.bytes_received.labels("model").inc(len(blob))
        expected = model.sha256
        if expected:
            actual = await asyncio.to_thread(lambda: hashlib.sha256(blob).hexdigest())
            if actual != expected:
                raise TaskError(
                    f"the model blob's sha256 is {actual} but the task says {expected}; {refusal}"
                )
        return blob, download_s

    async def _relay(self, task: RelayTask) -> None:
        """Fetch the task's model version and hold it for the group; say where it is served."""
        model, url, download_s = task.model, None, 0.0
        if model.url:  # a timing-only model has no bytes to hold
            blob, download_s = await self._download_model(model, "not relaying it")
            path = self._held.hold(model.name, model.version, blob, task.token)
            url = await self._peer_base() + path
        result = RelayResult(url=url, timings=Timings(download_s=download_s))
        where = self._api.url(Paths.TASK_RELAY, task_id=task.id)
        try:
            await self._as_device(
                lambda token: self._api.request(
                    "PUT", where, token=token, json_body=result.model_dump(mode="json")
                )
            )
        except ApiError as e:
            if e.status in (404, 410):
                log.warning("task %s: the server no longer wants its result (%s)", task.id, e)
                return
            raise TaskError(f"the server refused the relay result: {e}") from e
        log.info("task %s: holding the model for the group at %s", task.id, url)

    async def _forward(self, task: ForwardTask) -> None:
        """Send the group's combined update: ``nbytes`` of padding that stands for it.

        The coordinator combines the group's updates itself (with its strategy), so what
        travels here is timed, not used.
        """
        headers = UpdateMeta(num_examples=task.num_examples, timing_only=True).headers()
        nbytes = self._transfer(task.nbytes, "the nbytes")
        await self._put(task.id, "update", lambda: padding(nbytes), nbytes, headers)

    async def _upload_data(self, task: UploadDataTask) -> None:
        spec, nbytes = self.config.data_spec, self._transfer(task.nbytes, "the nbytes")
        await self._put(task.id, "data", lambda: data_bytes(spec, nbytes), nbytes, {})

    def _transfer(self, nbytes: int, what: str) -> int:
        """``nbytes``, a transfer a task asks for, if within ``max_transfer_bytes``."""
        if nbytes > self.config.max_transfer_bytes:
            raise TaskError(
                f"{what} {nbytes} is over this agent's limit of {self.config.max_transfer_bytes} "
                "bytes a transfer (--max-transfer-bytes)"
            )
        return nbytes

    async def _put(
        self, task_id: str, what: str, body: Body, nbytes: int, headers: Mapping[str, str]
    ) -> None:
        """PUT ``nbytes`` of ``body`` to the task's ``what`` (update or data)."""
        template = Paths.TASK_UPDATE if what == "update" else Paths.TASK_DATA
        url = self._api.url(template, task_id=task_id)
        # An explicit length keeps a streamed body from going out chunked, so the server
        # can refuse a wrong size up front.
        sent_headers = {"Content-Type": OCTETS, "Content-Length": str(nbytes), **headers}
        started = perf_counter()
        try:
            await self._as_device(
                lambda token: self._api.request(
                    "PUT", url, token=token, body=body, headers=sent_headers
                )
            )
        except ApiError as e:
            if e.status in (404, 410):
                log.warning("task %s: the server no longer wants its result (%s)", task_id, e)
                return
            raise TaskError(f"the server refused the {what}: {e}") from e
        self._meter.transfer("bandwidth_up", nbytes, perf_counter() - started)
        self.metrics.bytes_sent.labels(what).inc(nbytes)
        log.info("task %s: %s sent (%d bytes)", task_id, what, nbytes)

    async def _report_error(self, task_id: str, reason: str) -> None:
        url = self._api.url(Paths.TASK_ERROR, task_id=task_id)
        body = TaskFailure(reason=reason[:MAX_REASON_CHARS] or "unknown").model_dump()
        try:
            await self._as_device(
                lambda token: self._api.request("POST", url, token=token, json_body=body)
            )
        except (ApiError, ValueError) as e:  # refused, or an answer too long to read
            log.warning("task %s: could not report its failure: %s", task_id, _excerpt(e))

    # -- identity -------------------------------------------------------------------------

    async def _register(self, *, rejected: str | None = None) -> None:
        """Register with the saved device token, else the enrollment token; save the new one.

        ``rejected`` is a token the server just refused (a 401), not worth presenting again.
        """
        saved = self._state.load_identity()
        device_id = self.config.device_id
        if device_id is None:
            device_id = saved.device_id if saved is not None else self._device_id
        tokens = []
        if saved is not None and saved.device_id == device_id and saved.token != rejected:
            tokens.append(saved.token)
        if self.config.enrollment_token:
            tokens.append(self.config.enrollment_token)
        if not tokens:
            raise AgentError(
                "the server does not accept this device's saved token and no enrollment token "
                "was given (--token or FEDSIM_ENROLLMENT_TOKEN)"
            )
        body = self._registration(device_id)
        for i, token in enumerate(tokens):
            try:
                reply = await self._api.request(
                    "POST", self._api.url(Paths.DEVICES), token=token, json_body=body
                )
                break
            except ApiError as e:
                if i + 1 < len(tokens) and e.status in (401, 403):
                    log.info("the saved device token was refused (%s); enrolling again", e)
                    continue
                raise AgentError(_refusal(e, device_id)) from e
        try:
            answer = reply.json()
            identity = Identity(device_id=int(answer["device"]["id"]), token=str(answer["token"]))
        except (ValueError, KeyError, TypeError) as e:
            raise AgentError(f"unexpected answer to registration: {reply.body[:200]!r}") from e
        self._state.save_identity(identity)
        self._device_id, self._token = identity.device_id, identity.token
        log.info("registered as device %d with %s", identity.device_id, self._api.root)

    def _registration(self, device_id: int | None) -> dict[str, Any]:
        if self._hardware is None:
            self._hardware = hardware()
        body: dict[str, Any] = {
            "description": self.config.description,
            "labels": dict(self.config.labels),
            "hardware": self._hardware,
        }
        optional = {
            "id": device_id,
            "group": self.config.group,
            "group_description": self.config.group_description or None,
            "id_in_group": self.config.id_in_group,
            "profile": self.config.profile,
            "endpoints": self._endpoints() or None,
        }
        body.update({key: value for key, value in optional.items() if value is not None})
        return body

    def _endpoints(self) -> dict[str, str]:
        """Where Prometheus scrapes this device: the agent's own metrics and node_exporter's."""
        endpoints = {}
        if self._metrics_url:
            endpoints["agent"] = self._metrics_url
        if self.config.node_exporter:
            ne = urlsplit(self.config.node_exporter)
            endpoints["node_exporter"] = ne._replace(path=ne.path or "/metrics").geturl()
        return endpoints

    async def _as_device(self, send: Callable[[str | None], Awaitable[T]]) -> T:
        """``send(token)`` with the device token; after a 401, register again and resend."""
        attempt = 0
        while True:
            token = self._token
            try:
                return await send(token)
            except Unauthorized:
                if attempt:
                    # Refused again right after registering: do not spin on a confused server.
                    await asyncio.sleep(self._backoff.delay(attempt))
                attempt += 1
                async with self._auth_lock:
                    # The other loop may have registered again while this one waited.
                    if self._token == token:
                        log.warning("the server no longer accepts this device's token")
                        await self._register(rejected=token)

    # -- plumbing -------------------------------------------------------------------------

    async def _serve_metrics(self) -> None:
        """Serve ``/metrics`` on ``--metrics-port``; its URL goes into the registration."""
        await self._listen(self.config.metrics_port, "metrics")
        self._metrics_url = self._http_base + "/metrics"
        log.info("serving metrics at %s", self._metrics_url)

    async def _peer_base(self) -> str:
        """Where the group's members reach this agent's HTTP server: the metrics server's
        address, or, without ``--metrics-port``, a free port on ``--metrics-host``."""
        if self._http_base is None:
            try:
                await self._listen(0, "the group's model")
            except AgentError as e:  # the relay fails; the agent itself can go on
                raise TaskError(str(e)) from None
        return self._http_base

    async def _listen(self, port: int, what: str) -> None:
        host = self.config.metrics_host
        try:
            bound = await self._http.start(host=host, port=port)
        except OSError as e:
            raise AgentError(f"cannot serve {what} on {host}:{port}: {e}") from e
        self._http_base = await asyncio.to_thread(
            advertised_url, host, bound, self.config.server, ""
        )

    @property
    def _api(self) -> ApiClient:
        assert self._client is not None, "only while running"
        return self._client

    @property
    def _meter(self) -> LoadMeter:
        assert self._load is not None, "only while running"
        return self._load

    def _ssl(self) -> ssl.SSLContext | bool:
        """How the agent's requests use TLS: ``True`` verifies against the system's CAs,
        ``False`` verifies nothing (``--insecure``), a context for ``--ca`` or ``--cert``."""
        config = self.config
        if config.cert_file is None and config.cafile is None:
            return not config.insecure
        context = ssl.create_default_context(cafile=config.cafile)
        if config.insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if config.cert_file is not None:
            try:
                context.load_cert_chain(config.cert_file, config.key_file)
            except (OSError, ssl.SSLError) as e:
                raise AgentError(f"--cert {config.cert_file} / --key {config.key_file}: {e}") from e
        return context


def _get(value: Any, key: str) -> Any:
    """``value[key]`` if ``value`` is a JSON object that has it, else None."""
    return value.get(key) if isinstance(value, dict) else None


def _is_number(value: Any) -> bool:
    """Whether ``value`` is a JSON number (a bool is not one)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _excerpt(value: object, limit: int = 200) -> str:
    """``value`` as text for one line of log, cut at ``limit`` characters: what a server sent
    may be as long as its answer."""
    text = str(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _dropped(task_id: str) -> str:
    # A device that drops out goes silent: no update, no error; the round's deadline passes.
    log.info("task %s: trained and dropped, as the task says (a dropout)", task_id)
    return "dropped"


def _refusal(e: ApiError, device_id: int | None) -> str:
    """Why the server will not register this device, and what the user can do about it."""
    which = f"device {device_id}" if device_id is not None else "this device"
    if e.status == 401:
        return f"the server rejected the enrollment token ({e.message})"
    if e.status == 403:
        return (
            f"{which} is registered already and this agent holds no token the server accepts "
            "for it (was --state-dir lost?); pass another --device-id"
        )
    if e.status == 409:
        return f"{which} was removed from the server; register under another --device-id"
    return f"registration refused: {e}"


async def _until(work: Awaitable[None], event: asyncio.Event) -> None:
    """Run ``work`` until it ends or ``event`` is set; re-raise what ``work`` raised."""
    main = asyncio.ensure_future(work)
    stopper = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait({main, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        main.cancel()
        stopper.cancel()
        await asyncio.gather(main, stopper, return_exceptions=True)
    if not main.cancelled() and main.exception() is not None:
        raise main.exception()
