"""Run a serialized TensorRT engine from Python: host numpy in, host numpy out.

CUDA is reached through cuda-python's runtime API (``cuda.bindings.runtime``;
``cuda.cudart`` in cuda-python < 12.6) or, when that is the only binding installed,
PyCUDA; both sit behind the same small adapter (``open_cuda``). A runner owns one
execution context, one stream, and for every I/O tensor one page-locked host
buffer and one device buffer bound with ``set_tensor_address`` once.

Invariant: ``run(x)`` is end to end and synchronous -- copy ``x`` to the device,
``execute_async_v3``, copy every output back, synchronize the stream -- and returns
fresh host arrays that no later call overwrites; that is what the measurement
worker times. ``device_latency_ms`` times only the engine's execution on the GPU
with CUDA events recorded on the runner's stream (no host copies), the figure
``trtexec`` reports as GPU compute time.

Imports neither torch nor, at module import, TensorRT or any CUDA binding.
"""
from __future__ import annotations

import ctypes
import importlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgeprune.errors import CompileError, RuntimeUnavailable, UserInputError

CUDA_HINT = "install cuda-python (pip install cuda-python) or PyCUDA matching this machine's CUDA"
# TensorRT DataType member name -> numpy dtype of the host buffer.
_NUMPY_DTYPES = {"FLOAT": np.float32, "HALF": np.float16, "INT8": np.int8, "INT32": np.int32,
                 "INT64": np.int64, "UINT8": np.uint8, "BOOL": np.bool_}


def enum_name(value: Any) -> str:
    """"HALF" for ``trt.DataType.HALF`` (pybind11 enums have ``.name``; ``str`` gives ``DataType.HALF``)."""
    return str(getattr(value, "name", None) or str(value).rsplit(".", 1)[-1])


def numpy_dtype(trt_dtype_name: str) -> np.dtype:
    """The host dtype for a TensorRT data type name ("FLOAT", "HALF", ...); other types cannot be bound here."""
    try:
        return np.dtype(_NUMPY_DTYPES[trt_dtype_name.upper()])
    except KeyError:
        raise UserInputError(f"the engine has an I/O tensor of type {trt_dtype_name}, which edgeprune cannot feed",
                             "export the model with float32 inputs and outputs") from None


class CudaRuntimeApi:
    """cuda-python's runtime API; every call returns ``(cudaError_t, *results)``."""

    name = "cuda-python"

    def __init__(self, rt):
        self.rt = rt

    def _ok(self, result):
        err, rest = result[0], result[1:]
        if err != self.rt.cudaError_t.cudaSuccess:
            text = self.rt.cudaGetErrorString(err)
            text = text[1] if isinstance(text, tuple) else text
            raise RuntimeError(f"CUDA error {enum_name(err)}: {_text(text)}")
        return rest[0] if len(rest) == 1 else rest

    def device_count(self) -> int:
        return int(self._ok(self.rt.cudaGetDeviceCount()))

    def set_device(self, device: int) -> None:
        self._ok(self.rt.cudaSetDevice(int(device)))

    def properties(self, device: int) -> dict[str, Any]:
        prop = self._ok(self.rt.cudaGetDeviceProperties(int(device)))
        return {"name": _text(prop.name), "compute_capability": f"{prop.major}.{prop.minor}",
                "total_memory_mb": int(prop.totalGlobalMem) // (1 << 20), "integrated": bool(prop.integrated)}

    def malloc(self, nbytes: int) -> int:
        return int(self._ok(self.rt.cudaMalloc(max(int(nbytes), 1))))

    def free(self, ptr: int) -> None:
        self._ok(self.rt.cudaFree(ptr))

    def host_array(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        nbytes = max(int(np.prod(shape, dtype=np.int64)) * dtype.itemsize, 1)
        ptr = int(self._ok(self.rt.cudaMallocHost(nbytes)))
        raw = np.ctypeslib.as_array((ctypes.c_ubyte * nbytes).from_address(ptr))
        return raw[:int(np.prod(shape, dtype=np.int64)) * dtype.itemsize].view(dtype).reshape(shape)

    def free_host(self, array: np.ndarray) -> None:
        self._ok(self.rt.cudaFreeHost(array.ctypes.data))

    def stream_create(self):
        return self._ok(self.rt.cudaStreamCreate())

    def stream_handle(self, stream) -> int:
        return int(stream)

    def stream_destroy(self, stream) -> None:
        self._ok(self.rt.cudaStreamDestroy(stream))

    def htod(self, dst: int, src: np.ndarray, stream) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._ok(self.rt.cudaMemcpyAsync(dst, src.ctypes.data, src.nbytes, kind, stream))

    def dtoh(self, dst: np.ndarray, src: int, stream) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._ok(self.rt.cudaMemcpyAsync(dst.ctypes.data, src, dst.nbytes, kind, stream))

    def synchronize(self, stream) -> None:
        self._ok(self.rt.cudaStreamSynchronize(stream))

    def event_create(self):
        return self._ok(self.rt.cudaEventCreate())

    def event_record(self, event, stream) -> None:
        self._ok(self.rt.cudaEventRecord(event, stream))

    def elapsed_ms(self, start, end) -> float:
        self._ok(self.rt.cudaEventSynchronize(end))
        return float(self._ok(self.rt.cudaEventElapsedTime(start, end)))

    def event_destroy(self, event) -> None:
        self._ok(self.rt.cudaEventDestroy(event))

    def close(self) -> None:
        """Nothing to release: the runtime API uses the device's primary context."""


class PyCudaApi:
    """The same calls over PyCUDA's driver API, on the device's primary context (shared with TensorRT)."""

    name = "pycuda"

    def __init__(self, drv, device: int):
        drv.init()
        self.drv = drv
        self._context = drv.Device(int(device)).retain_primary_context()
        self._context.push()
        self._allocations: dict[int, Any] = {}

    def device_count(self) -> int:
        return int(self.drv.Device.count())

    def set_device(self, device: int) -> None:
        """The device was chosen when the context was pushed."""

    def properties(self, device: int) -> dict[str, Any]:
        dev = self.drv.Device(int(device))
        major, minor = dev.compute_capability()
        return {"name": dev.name(), "compute_capability": f"{major}.{minor}",
                "total_memory_mb": int(dev.total_memory()) // (1 << 20),
                "integrated": bool(dev.get_attribute(self.drv.device_attribute.INTEGRATED))}

    def malloc(self, nbytes: int) -> int:
        allocation = self.drv.mem_alloc(max(int(nbytes), 1))
        self._allocations[int(allocation)] = allocation
        return int(allocation)

    def free(self, ptr: int) -> None:
        self._allocations.pop(ptr).free()

    def host_array(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        return self.drv.pagelocked_empty(shape, dtype)

    def free_host(self, array: np.ndarray) -> None:
        """Page-locked arrays are released when garbage collected."""

    def stream_create(self):
        return self.drv.Stream()

    def stream_handle(self, stream) -> int:
        return int(stream.handle)

    def stream_destroy(self, stream) -> None:
        """PyCUDA destroys a stream when it is garbage collected."""

    def htod(self, dst: int, src: np.ndarray, stream) -> None:
        self.drv.memcpy_htod_async(dst, src, stream)

    def dtoh(self, dst: np.ndarray, src: int, stream) -> None:
        self.drv.memcpy_dtoh_async(dst, src, stream)

    def synchronize(self, stream) -> None:
        stream.synchronize()

    def event_create(self):
        return self.drv.Event()

    def event_record(self, event, stream) -> None:
        event.record(stream)

    def elapsed_ms(self, start, end) -> float:
        end.synchronize()
        return float(start.time_till(end))

    def event_destroy(self, event) -> None:
        """PyCUDA destroys an event when it is garbage collected."""

    def close(self) -> None:
        if self._context is not None:
            self._context.pop()
            self._context = None


def _text(value: Any) -> str:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).split(b"\0", 1)[0].decode(errors="replace")
    return str(value)


def _import_first(names: tuple[str, ...]):
    for name in names:
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    return None


def open_cuda(device: int = 0):
    """The CUDA adapter for ``device``: cuda-python if installed, else PyCUDA; RuntimeUnavailable if neither."""
    rt = _import_first(("cuda.bindings.runtime", "cuda.cudart"))
    try:
        if rt is not None:
            api = CudaRuntimeApi(rt)
            api.set_device(device)
            return api
        drv = _import_first(("pycuda.driver",))
        if drv is not None:
            return PyCudaApi(drv, device)
    except Exception as exc:  # CUDA errors (no driver, no such device) come as RuntimeError or pycuda.driver.Error
        raise RuntimeUnavailable(f"CUDA device {device} cannot be used: {exc}",
                                 "check the NVIDIA driver (nvidia-smi; tegrastats on Jetson)") from exc
    raise RuntimeUnavailable("no CUDA Python binding is installed", CUDA_HINT)


def device_info(device: int = 0) -> dict[str, Any]:
    """Name, compute capability, memory and the binding used, for ``device``."""
    api = open_cuda(device)
    try:
        count = api.device_count()
        if int(device) >= count:
            raise RuntimeUnavailable(f"CUDA device {device} does not exist ({count} visible)",
                                     "set options.device in the target profile")
        return {**api.properties(device), "device": int(device), "cuda_binding": api.name}
    except RuntimeUnavailable:
        raise
    except Exception as exc:  # CUDA errors arrive as RuntimeError (cuda-python) or pycuda.driver.Error
        raise RuntimeUnavailable(f"CUDA device {device} cannot be queried: {exc}",
                                 "check the NVIDIA driver (nvidia-smi; tegrastats on Jetson)") from exc
    finally:
        api.close()


def device_memory_bytes(engine) -> int:
    """GPU memory an execution context of ``engine`` needs (``device_memory_size_v2`` from TensorRT 10)."""
    for name in ("device_memory_size_v2", "device_memory_size"):
        if hasattr(engine, name):
            return int(getattr(engine, name) or 0)
    return 0


@dataclass
class _IOTensor:
    name: str
    is_input: bool
    shape: tuple[int, ...]
    host: np.ndarray
    device_ptr: int


class TensorRTRunner:
    """One deserialized engine, execution context, stream and I/O buffers; ``run`` is end to end."""

    def __init__(self, engine_bytes: bytes, device: int = 0):
        import tensorrt as trt

        self._api = open_cuda(device)
        self._tensors: list[_IOTensor] = []
        self._stream = None
        try:
            self._logger = trt.Logger(trt.Logger.WARNING)
            self._runtime = trt.Runtime(self._logger)
            self._engine = self._runtime.deserialize_cuda_engine(engine_bytes)
            if self._engine is None:
                raise CompileError("TensorRT cannot deserialize the engine (built by another TensorRT version "
                                   "or for another GPU)", "rebuild the artifact on this device")
            self._context = self._engine.create_execution_context()
            if self._context is None:
                raise RuntimeUnavailable("TensorRT could not create an execution context (out of GPU memory?)")
            self._stream = self._api.stream_create()
            self._tensors = [self._bind(trt, self._engine.get_tensor_name(i))
                             for i in range(self._engine.num_io_tensors)]
        except BaseException:
            self.close()
            raise
        inputs = [t for t in self._tensors if t.is_input]
        if len(inputs) != 1:
            self.close()
            raise UserInputError(f"the engine has {len(inputs)} inputs; edgeprune runs single-input models")
        self._input = inputs[0]
        self._outputs = [t for t in self._tensors if not t.is_input]
        self.input_shape = self._input.shape
        self.device_memory_bytes = device_memory_bytes(self._engine)

    def _bind(self, trt, name: str) -> _IOTensor:
        shape = tuple(int(d) for d in self._engine.get_tensor_shape(name))
        if any(d < 0 for d in shape):
            raise UserInputError(f"engine tensor {name!r} has a dynamic shape {shape}", "build with a static shape")
        dtype = numpy_dtype(enum_name(self._engine.get_tensor_dtype(name)))
        host = self._api.host_array(shape, dtype)
        host.fill(0)
        tensor = _IOTensor(name, self._engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT, shape, host,
                           self._api.malloc(host.nbytes))
        self._context.set_tensor_address(name, tensor.device_ptr)
        return tensor

    def _execute(self) -> None:
        if not self._context.execute_async_v3(self._api.stream_handle(self._stream)):
            raise RuntimeError("TensorRT execute_async_v3 failed (see the TensorRT log above)")

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        """Copy ``x`` in, execute, copy every output out; returns new host arrays."""
        x = np.asarray(x)
        if x.shape != self.input_shape:
            raise UserInputError(f"input shape {list(x.shape)} does not match the engine's static input "
                                 f"{list(self.input_shape)}", f"pass arrays shaped {list(self.input_shape)}")
        np.copyto(self._input.host, x, casting="unsafe")
        self._api.htod(self._input.device_ptr, self._input.host, self._stream)
        self._execute()
        for out in self._outputs:
            self._api.dtoh(out.host, out.device_ptr, self._stream)
        self._api.synchronize(self._stream)
        return [out.host.copy() for out in self._outputs]

    def device_latency_ms(self, iterations: int = 100, warmup: int = 10, x: np.ndarray | None = None) -> list[float]:
        """GPU-only execution time of each of ``iterations`` runs (CUDA events), after ``warmup`` runs."""
        self.run(np.zeros(self.input_shape, np.float32) if x is None else x)  # puts a real input on the device
        start, end = self._api.event_create(), self._api.event_create()
        try:
            for _ in range(int(warmup)):
                self._execute()
            self._api.synchronize(self._stream)
            times = []
            for _ in range(int(iterations)):
                self._api.event_record(start, self._stream)
                self._execute()
                self._api.event_record(end, self._stream)
                times.append(self._api.elapsed_ms(start, end))
            return times
        finally:
            self._api.event_destroy(start)
            self._api.event_destroy(end)

    def close(self) -> None:
        """Release device and host buffers, the stream and the context (idempotent)."""
        for tensor in self._tensors:
            self._api.free(tensor.device_ptr)
            self._api.free_host(tensor.host)
        self._tensors = []
        if self._stream is not None:
            self._api.stream_destroy(self._stream)
            self._stream = None
        self._context = self._engine = None
        self._api.close()

    def __enter__(self) -> "TensorRTRunner":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
