"""A converted model compiled for the CPU, its batches run through the process's
``Scheduler``; and the release of the model file's pages once OpenVINO no longer reads them."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ragd.errors import ModelLoadError
from ragd.models.cpu import bf16_attention_pays, cpu_cores, cpu_has_amx, float_arithmetic
from ragd.models.openvino import block_telemetry
from ragd.models.openvino.cache import DYNAMIC, IRLocation
from ragd.models.openvino.onnx import OnnxSession
from ragd.models.openvino.scheduler import STREAMS, scheduler
from ragd.models.openvino.words import WordTable

WARM_UP_TOKENS = 16
MADV_DONTNEED = 4

Inputs = dict[str, np.ndarray]


def release_file_pages(path: Path) -> int:
    """Drop this process's resident pages of ``path``'s read-only mappings, and the file's
    clean pages from the page cache; returns the bytes of mappings released. Only for files
    whose mapped pages are no longer read (they would be read from the file again)."""
    import ctypes

    target = os.path.realpath(path)
    released = 0
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        with open("/proc/self/maps", encoding="utf-8") as fh:
            maps = fh.read().splitlines()
    except (OSError, AttributeError):  # not Linux: nothing to release
        return 0
    for line in maps:
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5] == target and "w" not in fields[1]:
            start, end = (int(x, 16) for x in fields[0].split("-"))
            if libc.madvise(start, end - start, MADV_DONTNEED) == 0:
                released += end - start
    with contextlib.suppress(OSError, AttributeError):
        fd = os.open(target, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    return released


def dynamic_group(location: IRLocation) -> int:
    """The group size of OpenVINO's dynamic quantisation the conversion's recipe was measured
    with (``meta.json``), or 0: off."""
    group = (location.meta() or {}).get("dynamic_quantization_group", 0)
    return group if isinstance(group, int) and group >= 0 else 0


def bf16_attention_from(location: IRLocation) -> int | None:
    """The first layer whose int8 rows' attention the recipe measured in bf16 (``meta.json``),
    or None: all in f32."""
    layer = (location.meta() or {}).get("bf16_attention_from_layer")
    return layer if isinstance(layer, int) and layer >= 0 else None


def attention_in_bf16(model: Any, from_layer: int) -> int:
    """Give the scaled-dot-product attentions of layers ``from_layer`` on (outside the scored
    row's branch) bf16 inputs and an f32 output, so OpenVINO's CPU plugin runs them in bf16
    while the rest of the model keeps its precision. Returns how many were changed."""
    import re

    from openvino import Type
    from openvino import opset13 as ops

    layer_of = re.compile(r"encoder\.layer\.(\d+)[./]")
    done = 0
    for op in model.get_ops():
        found = layer_of.search(op.get_friendly_name())
        if (op.get_type_name() != "ScaledDotProductAttention" or ".cls_" in op.get_friendly_name()
                or not found or int(found.group(1)) < from_layer):
            continue
        for i in range(min(4, op.get_input_size())):  # query, key, value, mask (not the scale)
            value = op.input_value(i)
            if value.get_element_type() == Type.f32:
                op.input(i).replace_source_output(ops.convert(value, "bf16").output(0))
        targets = list(op.output(0).get_target_inputs())
        back = ops.convert(op.output(0), "f32")
        for target in targets:
            target.replace_source_output(back.output(0))
        done += 1
    model.validate_nodes_and_infer_types()
    return done


def take_place(old: Any, new: Any) -> None:
    """Every consumer of graph node ``old``'s output reads ``new``'s instead; ``new`` takes its name."""
    new.set_friendly_name(old.get_friendly_name())
    for target in list(old.output(0).get_target_inputs()):
        target.replace_source_output(new.output(0))


def first_row_in_place(model: Any) -> int:
    """Replace each layer's ``cat([row0, rows[:, 1:]], dim=1)`` in the int8 reranker (its scored
    row's float branch put back in front of the int8 rows) by writing ``row0`` over ``rows``'
    first row (ScatterUpdate), which OpenVINO's CPU plugin does in place, where its slice and
    concat copy every row twice. Exact. Returns how many were replaced."""
    from openvino import opset13 as ops

    done = 0
    for op in model.get_ops():
        if op.get_type_name() != "Concat" or op.get_input_size() != 2 or op.get_axis() != 1:
            continue
        row0, rest = op.input_value(0), op.input_value(1).get_node()
        if rest.get_type_name() != "Slice" or row0.get_partial_shape()[1].get_max_length() != 1:
            continue
        start, stop, step, axes = (rest.input_value(i).get_node() for i in range(1, 5))
        if not all(c.get_type_name() == "Constant" for c in (start, stop, step, axes)):
            continue
        if ([int(v) for v in start.get_data()], [int(v) for v in step.get_data()], [int(v) for v in axes.get_data()],
                int(stop.get_data()[0]) >= 2**31 - 1) != ([1], [1], [1], True):
            continue
        take_place(op, ops.scatter_update(rest.input_value(0), ops.constant(np.array([0], dtype=np.int64)), row0,
                                          ops.constant(np.int64(1))))
        done += 1
    model.validate_nodes_and_infer_types()
    return done


def read_for_cpu(core: Any, location: IRLocation) -> tuple[Any, int]:
    """The converted model as it is compiled: the int8 reranker's scored row written back in
    place (``first_row_in_place``), and the recipe's bf16 attention where it runs faster than
    f32 (``bf16_attention_pays``). Returns the model and how many attentions run in bf16."""
    model = core.read_model(str(location.xml))
    if (location.meta() or {}).get("first_row_in_float_layers"):
        first_row_in_place(model)
    from_layer = bf16_attention_from(location)
    if from_layer is None or not bf16_attention_pays():
        return model, 0
    return model, attention_in_bf16(model, from_layer)


class Runner:
    """A converted model compiled once for the CPU (``STREAMS`` streams sharing every core; an
    ``int8-dynamic`` one is an ONNX Runtime session, ``onnx.OnnxSession``); calls from any
    thread, batches through the process's ``Scheduler``. One compiled model
    serves the writer and the searches alike (a second one would double its memory). The
    source ``ov.Model`` is released after compiling, so its memory-mapped file pages can go
    too."""

    def __init__(self, location: IRLocation, precision: str, streams: int = STREAMS) -> None:
        self.location = location
        self.precision = precision
        self.scheduler = scheduler()
        self.bf16_attentions = 0
        self.branch_layers = int((location.meta() or {}).get("first_row_in_float_layers", 0))
        if precision == DYNAMIC:
            self.arithmetic = "f32"  # what is not int8 (ONNX Runtime's float kernels)
            try:
                self._compiled: Any = OnnxSession(location.model_file, cpu_cores())
            except Exception as exc:
                raise ModelLoadError(f"cannot load the converted model {location.model_file}: {exc}") from exc
        else:
            self._compiled = self._compile_openvino(location, precision, streams)
        names = {n for port in self._compiled.inputs for n in port.get_names()}
        self._words = WordTable(location.folder) if "inputs_embeds" in names else None
        self.streams = int(self._compiled.get_property("NUM_STREAMS"))
        self.scheduler.slots = min(self.scheduler.slots, self.streams)
        self._free: list[Any] = []
        self._lock = threading.Lock()
        # A first run on every stream makes OpenVINO lay the weights out for its kernels in
        # its own memory; the mapped model file is not read after that, so its pages go back.
        ids = np.zeros((1, WARM_UP_TOKENS), dtype=np.int64)
        for _ in self.map([(ids, np.ones_like(ids))] * self.streams, foreground=False):
            pass
        self.released_bytes = release_file_pages(location.folder / "model.bin") if precision != DYNAMIC else 0

    def _compile_openvino(self, location: IRLocation, precision: str, streams: int) -> Any:
        block_telemetry()
        import openvino as ov

        core = ov.Core()
        self.arithmetic = float_arithmetic(precision, location.role, core, cpu_has_amx())
        try:
            model, self.bf16_attentions = read_for_cpu(core, location)
            return core.compile_model(model, "CPU", {
                "NUM_STREAMS": streams,
                "INFERENCE_NUM_THREADS": cpu_cores(),  # shared out among the streams
                "INFERENCE_PRECISION_HINT": self.arithmetic,
                # On-the-fly int8 activations for int8 weights only where the recipe measured
                # them (the int8 reranker's keys and values); "w8" fell below the reranker's
                # gate with them (docs/performance.md).
                "DYNAMIC_QUANTIZATION_GROUP_SIZE": dynamic_group(location),
            })
        except Exception as exc:
            raise ModelLoadError(f"cannot load the converted model {location.xml}: {exc}") from exc

    def _inputs(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> Inputs:
        mask = attention_mask.astype(np.int64, copy=False)
        if self._words is not None:
            return {"inputs_embeds": self._words(input_ids), "attention_mask": mask}
        return {"input_ids": input_ids.astype(np.int64, copy=False), "attention_mask": mask}

    def _request(self) -> Any:
        with self._lock:
            return self._free.pop() if self._free else self._compiled.create_infer_request()

    def _run_one(self, inputs: Inputs, foreground: bool) -> np.ndarray:
        request = self.scheduler.run(self._request(), inputs, foreground)
        out = np.array(request.get_output_tensor(0).data, copy=True)
        with self._lock:
            self._free.append(request)
        return out

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray, foreground: bool = True) -> np.ndarray:
        return self._run_one(self._inputs(input_ids, attention_mask), foreground)

    def map(
        self, batches: Sequence[tuple[np.ndarray, np.ndarray]], foreground: bool
    ) -> Iterator[tuple[int, np.ndarray]]:
        """Run every (input_ids, attention_mask) batch; yields (position, output) as batches
        finish. With one stream they run in turn in the caller's thread, which post-processes
        each before the next starts: the run takes every core, and Python work beside it slowed
        it by more than it saved (docs/performance.md, "How the CPU is shared"). With several,
        one per stream at a time plus one waiting."""
        if len(batches) == 1 or self.streams == 1:
            for n, batch in enumerate(batches):
                yield n, self(*batch, foreground)
            return
        import queue

        done: queue.Queue[tuple[int, np.ndarray | BaseException]] = queue.Queue()
        todo = iter(range(len(batches)))
        todo_lock = threading.Lock()
        stop = threading.Event()

        def work() -> None:
            while not stop.is_set():
                with todo_lock:
                    n = next(todo, None)
                if n is None:
                    return
                try:
                    done.put((n, self._run_one(self._inputs(*batches[n]), foreground)))
                except BaseException as exc:  # handed to the caller's thread
                    done.put((n, exc))
                    return

        workers = [threading.Thread(target=work, name="ragd-openvino", daemon=True)
                   for _ in range(min(self.streams + 1, len(batches)))]
        for w in workers:
            w.start()
        try:
            for _ in range(len(batches)):
                n, out = done.get()
                if isinstance(out, BaseException):
                    raise out
                yield n, out
        finally:
            stop.set()
            for w in workers:
                w.join()
