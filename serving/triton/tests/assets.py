"""Checks of what the server returns: a GLB and a splat PLY are parsed, not just sniffed, so a
truncated or inconsistent file fails the test."""

from __future__ import annotations

import json
import struct
from typing import Any, Dict, List, Tuple

import numpy as np
import numpy.typing as npt

GLB_JSON = 0x4E4F534A
GLB_BIN = 0x004E4942
#: glTF componentType -> numpy dtype (the ones a mesh uses).
COMPONENT_TYPES = {5121: np.uint8, 5123: np.uint16, 5125: np.uint32, 5126: np.float32}
TYPE_WIDTHS = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4}


def glb_chunks(data: bytes) -> List[Tuple[int, bytes]]:
    """The (type, payload) chunks of a GLB after checking its 12-byte header."""
    assert len(data) >= 20, f"GLB of {len(data)} bytes"
    magic, version, length = struct.unpack_from("<4sII", data)
    assert magic == b"glTF", f"GLB magic {magic!r}"
    assert version == 2, f"GLB version {version}"
    assert length == len(data), f"GLB header says {length} bytes, got {len(data)}"
    chunks, offset = [], 12
    while offset < length:
        size, kind = struct.unpack_from("<II", data, offset)
        assert size % 4 == 0 and offset + 8 + size <= length, "GLB chunk out of bounds"
        chunks.append((kind, data[offset + 8:offset + 8 + size]))
        offset += 8 + size
    assert offset == length, "GLB chunks do not fill the file"
    return chunks


def accessor_array(gltf: Dict[str, Any], binary: bytes, index: int) -> npt.NDArray[Any]:
    """Accessor `index` read from the BIN chunk (tightly packed views, as recon writes)."""
    accessor = gltf["accessors"][index]
    view = gltf["bufferViews"][accessor["bufferView"]]
    dtype = np.dtype(COMPONENT_TYPES[accessor["componentType"]])
    width = TYPE_WIDTHS[accessor["type"]]
    start = view.get("byteOffset", 0) + accessor.get("byteOffset", 0)
    size = accessor["count"] * width * dtype.itemsize
    assert start + size <= view.get("byteOffset", 0) + view["byteLength"] <= len(binary), \
        f"accessor {index} outside its buffer view"
    return np.frombuffer(binary, dtype, accessor["count"] * width, start).reshape(-1, width)


def check_glb(data: bytes, num_vertices: int, num_faces: int) -> Dict[str, Any]:
    """A glTF 2.0 binary holding one triangle mesh of `num_vertices` and `num_faces`, with
    finite positions and indices in range; returns its JSON."""
    chunks = glb_chunks(data)
    assert [kind for kind, _ in chunks[:2]] == [GLB_JSON, GLB_BIN], "GLB wants JSON then BIN"
    gltf: Dict[str, Any] = json.loads(chunks[0][1].decode("utf-8").rstrip(" \0"))
    binary = chunks[1][1]
    assert gltf["asset"]["version"] == "2.0"
    assert gltf["buffers"][0]["byteLength"] <= len(binary)
    primitive = gltf["meshes"][0]["primitives"][0]
    assert primitive.get("mode", 4) == 4, "triangles expected"
    positions = accessor_array(gltf, binary, primitive["attributes"]["POSITION"])
    indices = accessor_array(gltf, binary, primitive["indices"])
    assert positions.shape == (num_vertices, 3), \
        f"{positions.shape} positions, {num_vertices} vertices"
    assert indices.size == 3 * num_faces, f"{indices.size} indices for {num_faces} faces"
    assert num_faces > 0 and np.isfinite(positions).all()
    assert int(indices.max()) < num_vertices, "index out of range"
    return gltf


def check_gaussian_ply(data: bytes, num_gaussians: int) -> List[str]:
    """A binary little-endian PLY of `num_gaussians` > 0 vertices with float properties whose
    body is exactly as long as the header says, and finite values; returns the properties."""
    end = data.find(b"end_header\n")
    assert data.startswith(b"ply\n") and end > 0, "no PLY header"
    header = data[:end].decode("ascii").splitlines()
    assert header[1] == "format binary_little_endian 1.0", header[1]
    vertices = [line for line in header if line.startswith("element ")]
    assert vertices == [f"element vertex {num_gaussians}"], vertices
    assert num_gaussians > 0
    properties = [line.split()[2] for line in header if line.startswith("property ")]
    assert all(line.split()[1] == "float" for line in header if line.startswith("property "))
    assert {"x", "y", "z", "opacity", "f_dc_0", "scale_0", "rot_0"} <= set(properties)
    body = data[end + len(b"end_header\n"):]
    assert len(body) == num_gaussians * len(properties) * 4, "PLY body length"
    assert np.isfinite(np.frombuffer(body, "<f4")).all()
    return properties
