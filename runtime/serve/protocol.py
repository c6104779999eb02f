"""The KServe v2 / Open Inference Protocol over HTTP/JSON: requests to numpy, numpy to responses.

Spec: https://kserve.github.io/website/latest/modelserving/data_plane/v2_protocol/ (REST), with the binary tensor
data extension (https://github.com/triton-inference-server/server/blob/main/docs/protocol/extension_binary_data.md):
a request or response body is a JSON header of `Inference-Header-Content-Length` bytes followed by the raw tensors,
in order, of the inputs / outputs whose parameters give a `binary_data_size`.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field

import numpy as np

from ..artifact import TensorSpec

HEADER_LENGTH = "Inference-Header-Content-Length"
# Protocol datatype <-> numpy dtype name. BYTES (strings) is not a tensor type any Kiln model takes.
DATATYPES = {"BOOL": "bool", "UINT8": "uint8", "UINT16": "uint16", "UINT32": "uint32", "UINT64": "uint64",
             "INT8": "int8", "INT16": "int16", "INT32": "int32", "INT64": "int64", "FP16": "float16",
             "FP32": "float32", "FP64": "float64"}
DTYPES = {v: k for k, v in DATATYPES.items()}


class ProtocolError(Exception):
    """A request the server refuses: STATUS (HTTP code) and a message for the client, without internals."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def shown(text: str, limit: int = 100) -> str:
    """TEXT, which a client chose, cut to LIMIT characters for an error message."""
    return text if len(text) <= limit else text[:limit] + "..."


def tensor_metadata(spec: TensorSpec) -> dict:
    """A model input/output as the metadata endpoint shows it: symbolic dims are -1."""
    return {"name": spec.name, "datatype": DTYPES.get(spec.dtype, spec.dtype.upper()),
            "shape": [d if isinstance(d, int) else -1 for d in spec.shape]}


@dataclass
class InferRequest:
    """A parsed infer request: inputs by name as numpy arrays, and how each output should come back."""

    id: str | None
    inputs: dict[str, np.ndarray]
    outputs: list[str] | None  # None: every output
    binary_outputs: set[str] = field(default_factory=set)
    parameters: dict = field(default_factory=dict)


MAX_JSON_DEPTH = 32  # nesting a request needs: object > inputs list > input object > data lists of any rank
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_OPENS = np.zeros(256, np.int8)
_OPENS[list(b"[{")], _OPENS[list(b"]}")] = 1, -1


def check_depth(text: bytes, limit: int = MAX_JSON_DEPTH) -> None:
    """ProtocolError 400 when the JSON TEXT nests deeper than LIMIT; checked before parsing, in C-speed passes
    and bounded memory (the parser itself would recurse once per level)."""
    brackets = _JSON_STRING.sub(b"", text).translate(None, _NOT_BRACKETS)
    depth, step = 0, 1 << 20
    for start in range(0, len(brackets), step):
        running = np.cumsum(_OPENS[np.frombuffer(brackets, np.uint8, min(step, len(brackets) - start), start)],
                            dtype=np.int32) + depth
        if running.max(initial=0) > limit:
            raise ProtocolError(400, f"the JSON nests deeper than {limit} levels")
        depth = int(running[-1])


def _loads(text: bytes) -> dict:
    check_depth(text)
    try:
        body = json.loads(text)
    except (ValueError, UnicodeDecodeError) as err:
        raise ProtocolError(400, f"the request body is not valid JSON ({err})") from None
    if not isinstance(body, dict):
        raise ProtocolError(400, "the request body must be a JSON object")
    return body


def _array(item: dict, binary: bytes | None, body_size: int) -> np.ndarray:
    """Input ITEM of a request as an array (from BINARY when the binary extension carries it). Everything is
    checked before anything is allocated: the element count is computed exactly (Python integers) and must fit
    what a body of BODY_SIZE bytes can carry."""
    name = item.get("name")
    datatype, shape = item.get("datatype"), item.get("shape")
    if not isinstance(name, str) or not isinstance(datatype, str) or not isinstance(shape, list):
        raise ProtocolError(400, "each input needs 'name' (a string), 'datatype' (a string) and 'shape' (a list)")
    if datatype not in DATATYPES:
        raise ProtocolError(400, f"input '{shown(name)}': datatype {shown(datatype)} is not supported "
                                 f"(use one of {', '.join(DATATYPES)})")
    if not all(type(d) is int and 0 <= d < 1 << 63 for d in shape):  # type(): True is an int to isinstance
        raise ProtocolError(400, f"input '{shown(name)}': shape must be a list of non-negative integers, got "
                                 f"{shown(json.dumps(shape))}")
    dtype = np.dtype(DATATYPES[datatype])
    count = math.prod(shape)
    if binary is not None and count * dtype.itemsize > body_size:  # (JSON data is counted as it converts)
        raise ProtocolError(400, f"input '{shown(name)}': shape {shown(json.dumps(shape))} holds {count} "
                                 f"elements, more than a body of {body_size} bytes can carry")
    if binary is not None:
        if len(binary) != count * dtype.itemsize:
            raise ProtocolError(400, f"input '{shown(name)}': {len(binary)} bytes of binary data for shape "
                                     f"{shape} {datatype} ({count * dtype.itemsize} expected)")
        return np.frombuffer(binary, dtype=dtype).reshape(shape)
    if "data" not in item:
        raise ProtocolError(400, f"input '{shown(name)}' has no 'data' (and no binary_data_size)")
    try:
        array = np.asarray(item["data"], dtype=dtype)
    except (ValueError, TypeError, OverflowError):
        raise ProtocolError(400, f"input '{shown(name)}': data does not convert to {datatype}") from None
    if array.size != count:
        raise ProtocolError(400, f"input '{shown(name)}': {array.size} values for shape {shape} ({count} "
                                 "expected)")
    return array.reshape(shape)


def _parameters(owner: dict, what: str) -> dict:
    """OWNER's 'parameters' (an object, or absent); ProtocolError 400 naming WHAT otherwise."""
    parameters = owner.get("parameters")
    if parameters is None:
        return {}
    if not isinstance(parameters, dict):
        raise ProtocolError(400, f"{what}: 'parameters' must be a JSON object")
    return parameters


def parse_infer(body: bytes, header_length: str | None) -> InferRequest:
    """Parse an infer request body (JSON, or JSON header + binary tensors when HEADER_LENGTH is given)."""
    if header_length is not None:
        try:
            split = int(header_length)
        except ValueError:
            raise ProtocolError(400, f"{HEADER_LENGTH} is not an integer") from None
        if not 0 < split <= len(body):
            raise ProtocolError(400, f"{HEADER_LENGTH} {split} does not fit a body of {len(body)} bytes")
        header, tail = _loads(body[:split]), memoryview(body)[split:]
    else:
        header, tail = _loads(body), memoryview(b"")
    items = header.get("inputs")
    if not isinstance(items, list) or not items:
        raise ProtocolError(400, "the request has no 'inputs' list")
    inputs, offset = {}, 0
    for item in items:
        if not isinstance(item, dict):
            raise ProtocolError(400, "each input must be a JSON object")
        size = _parameters(item, f"input '{shown(str(item.get('name')))}'").get("binary_data_size")
        binary = None
        if size is not None:
            if type(size) is not int or size < 0 or offset + size > len(tail):
                raise ProtocolError(400, f"input '{shown(str(item.get('name')))}': binary data is truncated "
                                         f"(binary_data_size {size}, {len(tail) - offset} bytes left)")
            binary = bytes(tail[offset:offset + size])
            offset += size
        array = _array(item, binary, len(body))
        if item["name"] in inputs:
            raise ProtocolError(400, f"input '{shown(item['name'])}' is given twice")
        inputs[item["name"]] = array
    if offset != len(tail):
        raise ProtocolError(400, f"{len(tail) - offset} bytes of binary data follow the inputs unused")
    parameters = _parameters(header, "the request")
    wanted = header.get("outputs")
    outputs, binary_outputs = None, set()
    if wanted is not None:
        if not isinstance(wanted, list) or not all(isinstance(o, dict) and isinstance(o.get("name"), str)
                                                   for o in wanted):
            raise ProtocolError(400, "'outputs' must be a list of objects with a 'name'")
        outputs = [o["name"] for o in wanted]
        binary_outputs = {o["name"] for o in wanted if _parameters(o, f"output '{shown(o['name'])}'")
                          .get("binary_data")}
    request_id = header.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise ProtocolError(400, "'id' must be a string")
    return InferRequest(request_id, inputs, outputs, binary_outputs,
                        parameters)


def infer_response(model: str, version: str, request: InferRequest, results: dict[str, np.ndarray]
                   ) -> tuple[bytes, dict[str, str]]:
    """(body, headers) of the response to REQUEST: the requested outputs, binary where the client asked for it
    (per output, or all with the request parameter binary_data_output)."""
    names = request.outputs if request.outputs is not None else list(results)
    binary_all = bool(request.parameters.get("binary_data_output"))
    outputs, blobs = [], []
    for name in names:
        array = np.ascontiguousarray(results[name])
        entry = {"name": name, "datatype": DTYPES[str(array.dtype)], "shape": list(array.shape)}
        if binary_all or name in request.binary_outputs:
            blob = array.tobytes()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = array.reshape(-1).tolist()
        outputs.append(entry)
    body = {"model_name": model, "model_version": version, "outputs": outputs}
    if request.id is not None:
        body["id"] = request.id
    header = json.dumps(body).encode()
    if not blobs:
        return header, {"Content-Type": "application/json"}
    return header + b"".join(blobs), {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(len(header))}
