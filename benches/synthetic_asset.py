"""A full-size synthetic asset for the export benchmark (issue 11): the same mesh and Gaussians
go to recon's textured export and to the reference's `to_glb`, so both do the same work.

The shape is a bumpy closed blob in TRELLIS's frame (Z up, inside [-0.5, 0.5]^3): an icosphere
subdivided `--mesh-level` times (7: 327,680 triangles, the size of a typical FlexiCubes output
at resolution 256) with a smooth radial displacement. The Gaussians sit on a finer icosphere of
the same surface (`--gaussian-level` 8: 655,362, about a full-size decoder's 32 per voxel for
~20k voxels), flattened along the surface normal, coloured by a smooth pattern of the position
so a baked texture can be checked by eye. Values are written as the activated attributes recon's
`Gaussians` holds (centres, SH DC, scales, unit wxyz quaternions, opacity in 0..1).

    python benches/synthetic_asset.py OUT.safetensors [--mesh-level 7] [--gaussian-level 8]
"""

import argparse
import json
import struct

import numpy as np

SH_C0 = 0.28209479177387814


def icosphere(level):
    t = (1.0 + 5 ** 0.5) / 2.0
    verts = [(-1, t, 0), (1, t, 0), (-1, -t, 0), (1, -t, 0), (0, -1, t), (0, 1, t),
             (0, -1, -t), (0, 1, -t), (t, 0, -1), (t, 0, 1), (-t, 0, -1), (-t, 0, 1)]
    faces = [(0, 11, 5), (0, 5, 1), (0, 1, 7), (0, 7, 10), (0, 10, 11), (1, 5, 9), (5, 11, 4),
             (11, 10, 2), (10, 7, 6), (7, 1, 8), (3, 9, 4), (3, 4, 2), (3, 2, 6), (3, 6, 8),
             (3, 8, 9), (4, 9, 5), (2, 4, 11), (6, 2, 10), (8, 6, 7), (9, 8, 1)]
    v = np.array(verts, dtype=np.float64)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    f = np.array(faces, dtype=np.int64)
    for _ in range(level):
        edges = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
        edges.sort(axis=1)
        unique, inverse = np.unique(edges, axis=0, return_inverse=True)
        mid = v[unique[:, 0]] + v[unique[:, 1]]
        mid /= np.linalg.norm(mid, axis=1, keepdims=True)
        m = inverse.reshape(3, -1).T + len(v)
        v = np.concatenate([v, mid])
        a, b, c = f[:, 0], f[:, 1], f[:, 2]
        ab, bc, ca = m[:, 0], m[:, 1], m[:, 2]
        f = np.concatenate([np.stack([a, ab, ca], 1), np.stack([b, bc, ab], 1),
                            np.stack([c, ca, bc], 1), np.stack([ab, bc, ca], 1)])
    return v, f


def radius(d):
    x, y, z = d[:, 0], d[:, 1], d[:, 2]
    return 0.36 * (1.0 + 0.12 * np.sin(5 * x) * np.sin(4 * y + 1) * np.sin(3 * z + 2)
                   + 0.05 * np.sin(11 * x + 7 * z))


def surface(level):
    d, f = icosphere(level)
    return d * radius(d)[:, None], d, f


def quaternion_z_to(normal):
    """Unit wxyz quaternions turning +Z onto each normal."""
    z = np.array([0.0, 0.0, 1.0])
    axis = np.cross(np.broadcast_to(z, normal.shape), normal)
    w = 1.0 + normal @ z
    q = np.concatenate([w[:, None], axis], axis=1)
    flip = w < 1e-6
    q[flip] = [0.0, 1.0, 0.0, 0.0]
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def save_safetensors(tensors, path):
    """The safetensors format (8-byte header length, JSON header, raw little-endian data), written
    here so the script needs numpy only (the GPU machine's venv may lack the package)."""
    dtypes = {np.dtype(np.float32): "F32", np.dtype(np.int32): "I32"}
    header, offset, blobs = {}, 0, []
    for name, array in tensors.items():
        data = np.ascontiguousarray(array).tobytes()
        header[name] = {"dtype": dtypes[array.dtype], "shape": list(array.shape),
                        "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for blob in blobs:
            f.write(blob)


def load_safetensors(path):
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
        data = f.read()
    kinds = {"F32": np.float32, "I32": np.int32}
    return {name: np.frombuffer(data[m["data_offsets"][0]:m["data_offsets"][1]],
                                dtype=kinds[m["dtype"]]).reshape(m["shape"])
            for name, m in header.items() if name != "__metadata__"}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out")
    p.add_argument("--mesh-level", type=int, default=7)
    p.add_argument("--gaussian-level", type=int, default=8)
    a = p.parse_args()

    mesh_v, _, mesh_f = surface(a.mesh_level)
    gs_xyz, gs_dir, _ = surface(a.gaussian_level)
    # Normals of the displaced surface by finite differences of the radius along the sphere.
    eps = 1e-4
    tangent_u = np.cross(gs_dir, np.array([0.3, 0.5, 0.81]))
    tangent_u /= np.linalg.norm(tangent_u, axis=1, keepdims=True)
    tangent_v = np.cross(gs_dir, tangent_u)

    def point(d):
        d = d / np.linalg.norm(d, axis=1, keepdims=True)
        return d * radius(d)[:, None]

    du = point(gs_dir + eps * tangent_u) - gs_xyz
    dv = point(gs_dir + eps * tangent_v) - gs_xyz
    normal = np.cross(du, dv)
    normal /= np.linalg.norm(normal, axis=1, keepdims=True)
    normal *= np.sign(np.sum(normal * gs_dir, axis=1, keepdims=True))

    rgb = 0.5 + 0.4 * np.stack([np.sin(9 * gs_xyz[:, 0] + 1), np.sin(7 * gs_xyz[:, 1] + 2),
                                np.sin(8 * gs_xyz[:, 2] + 3)], axis=1)
    n = len(gs_xyz)
    spacing = 0.36 * 4.0 / (2 ** a.gaussian_level * 5 ** 0.5)  # ~ neighbour distance
    # The thin axis stays above TRELLIS's minimum kernel size (9e-4): its Gaussian cannot hold a
    # smaller scale (from_scaling takes sqrt(s² − 9e-4²)), and no decoder output has one.
    scaling = np.tile([spacing, spacing, max(spacing * 0.4, 1.2e-3)], (n, 1))
    tensors = {
        "mesh_vertices": mesh_v.astype(np.float32),
        "mesh_faces": mesh_f.astype(np.int32),
        "gs_xyz": gs_xyz.astype(np.float32),
        "gs_features_dc": ((rgb - 0.5) / SH_C0).astype(np.float32),
        "gs_scaling": scaling.astype(np.float32),
        "gs_rotation": quaternion_z_to(normal).astype(np.float32),
        "gs_opacity": np.full((n,), 0.95, dtype=np.float32),
    }
    save_safetensors(tensors, a.out)
    print(f"{a.out}: mesh {len(mesh_v)} vertices / {len(mesh_f)} triangles, {n} Gaussians")


if __name__ == "__main__":
    main()
