// Conversions from recon's arrays to what UnityEngine.Mesh / Texture2D use, with no UnityEngine
// reference so that bindings/csharp's test compiles and checks them under Mono.
//
// Frames. recon's meshes are in TRELLIS's frame: right-handed, Z up, metres, the object inside
// [-0.5, 0.5]^3, and a triangle (a, b, c) faces where (b - a) x (c - a) points. Unity is
// left-handed and Y up (X right, Y up, Z forward), metres. Reading TRELLIS's axes as X right,
// Y forward (away from the viewer), Z up, the same physical point in Unity is
//
//     unity = (x, z, y)
//
// (this equals recon's GLB export, which is glTF's Y-up frame (x, z, -y), imported with glTF's Z
// mirrored into Unity's left-handed frame; the object's front, glTF +Z, faces Unity -Z, i.e. the
// default camera). The swap of two axes is a mirror, so each triangle's winding is reversed to
// keep its front side outward: Unity's front face is where Vector3.Cross(v1 - v0, v2 - v0)
// points (what Mesh.RecalculateNormals computes).

using System;

namespace Recon
{
    /// <summary>recon (TRELLIS frame) → Unity conversions for meshes and textures.</summary>
    public static class ReconUnityFrame
    {
        /// <summary>TRELLIS (x, y, z) positions → Unity (x, z, y), same flat layout.</summary>
        public static float[] Positions(float[] trellis)
        {
            if (trellis == null)
            {
                throw new ArgumentNullException("trellis");
            }
            var unity = new float[trellis.Length];
            for (int i = 0; i + 2 < trellis.Length; i += 3)
            {
                unity[i] = trellis[i];
                unity[i + 1] = trellis[i + 2];
                unity[i + 2] = trellis[i + 1];
            }
            return unity;
        }

        /// <summary>Triangle indices with each triangle's winding reversed (a, b, c) → (a, c, b).</summary>
        public static int[] Triangles(uint[] indices)
        {
            if (indices == null)
            {
                throw new ArgumentNullException("indices");
            }
            var triangles = new int[indices.Length];
            for (int i = 0; i + 2 < indices.Length; i += 3)
            {
                triangles[i] = checked((int)indices[i]);
                triangles[i + 1] = checked((int)indices[i + 2]);
                triangles[i + 2] = checked((int)indices[i + 1]);
            }
            return triangles;
        }

        /// <summary>RGB floats in 0..1 → RGBA32 bytes (alpha 255), the layout of Color32[]; null for null.</summary>
        public static byte[] Colors32(float[] rgb)
        {
            if (rgb == null)
            {
                return null;
            }
            int n = rgb.Length / 3;
            var rgba = new byte[4 * n];
            for (int i = 0; i < n; i++)
            {
                for (int k = 0; k < 3; k++)
                {
                    float v = rgb[3 * i + k];
                    v = v < 0f ? 0f : (v > 1f ? 1f : v);
                    rgba[4 * i + k] = (byte)(v * 255f + 0.5f);
                }
                rgba[4 * i + 3] = 255;
            }
            return rgba;
        }

        /// <summary>
        /// Reverses the row order of 4-byte pixels: Texture2D.GetPixels32 returns rows bottom to
        /// top, recon_image wants them top to bottom.
        /// </summary>
        public static byte[] FlipRows(byte[] rgba, int width, int height)
        {
            if (rgba == null)
            {
                throw new ArgumentNullException("rgba");
            }
            int row = 4 * width;
            if (width < 0 || height < 0 || rgba.Length < row * height)
            {
                throw new ArgumentException("pixel buffer smaller than width x height x 4", "rgba");
            }
            var flipped = new byte[row * height];
            for (int y = 0; y < height; y++)
            {
                Buffer.BlockCopy(rgba, y * row, flipped, (height - 1 - y) * row, row);
            }
            return flipped;
        }
    }
}
