// ReconResult: the outputs of one run (recon_result*). Accessors copy the library's arrays into
// managed float[] / uint[] (the library's pointers die with the result); exports go to a file or,
// through a recon_buffer freed here, to a byte[].

using System;
using System.Runtime.InteropServices;

namespace Recon
{
    /// <summary>
    /// The outputs of one run. Independent of its model (it may outlive it) and readable from any
    /// thread, but not disposed while another thread reads it.
    /// </summary>
    public sealed class ReconResult : IDisposable
    {
        private readonly ResultHandle handle;

        internal ReconResult(ResultHandle handle)
        {
            this.handle = handle;
        }

        /// <summary>The message of the latest failed call on this result ("" when none).</summary>
        public string LastError
        {
            get { return Utf8.FromNative(NativeMethods.recon_result_last_error(Handle)); }
        }

        /// <summary>Copies the Gaussians; throws when the run did not produce them.</summary>
        public ReconGaussians GetGaussians()
        {
            var g = new NativeMethods.Gaussians();
            g.struct_size = (uint)Marshal.SizeOf(typeof(NativeMethods.Gaussians));
            ReconLibrary.Check(NativeMethods.recon_result_gaussians(Handle, ref g), () => LastError);
            int n = Count(g.count);
            return new ReconGaussians(n, CopyFloats(g.xyz, n, 3), CopyFloats(g.features_dc, n, 3),
                                 CopyFloats(g.scaling, n, 3), CopyFloats(g.rotation, n, 4),
                                 CopyFloats(g.opacity, n, 1));
        }

        /// <summary>Copies the mesh; throws when the run did not produce one.</summary>
        public ReconMesh GetMesh()
        {
            var m = new NativeMethods.Mesh();
            m.struct_size = (uint)Marshal.SizeOf(typeof(NativeMethods.Mesh));
            ReconLibrary.Check(NativeMethods.recon_result_mesh(Handle, ref m), () => LastError);
            int vertices = Count(m.num_vertices);
            int faces = Count(m.num_faces);
            float[] colors = m.colors == IntPtr.Zero ? null : CopyFloats(m.colors, vertices, 3);
            return new ReconMesh(vertices, faces, CopyFloats(m.positions, vertices, 3), colors,
                            CopyUInts(m.indices, faces, 3));
        }

        /// <summary>Number of cameras (one per view when the pipeline estimates poses, else 0).</summary>
        public int CameraCount
        {
            get { return Count(NativeMethods.recon_result_num_cameras(Handle)); }
        }

        /// <summary>Camera <paramref name="index"/>; throws when out of range.</summary>
        public ReconCamera GetCamera(int index)
        {
            if (index < 0)
            {
                throw new ArgumentOutOfRangeException("index", index, "camera index is negative");
            }
            var c = new NativeMethods.Camera();
            c.struct_size = (uint)Marshal.SizeOf(typeof(NativeMethods.Camera));
            c.extrinsic = new float[12];
            c.intrinsic = new float[9];
            int status = NativeMethods.recon_result_camera(Handle, (UIntPtr)(ulong)index, ref c);
            ReconLibrary.Check(status, () => LastError);
            return new ReconCamera((int)c.width, (int)c.height, c.extrinsic, c.intrinsic);
        }

        /// <summary>Camera <paramref name="index"/> as row-major matrices: the 4×4 camera-from-world
        /// [R | t] over 0 0 0 1, and the 3×3 intrinsics in pixels (OpenCV convention, in the frame of
        /// the result's arrays); throws when out of range.</summary>
        public void GetCameraMatrices(int index, out float[] extrinsic4x4, out float[] intrinsic3x3)
        {
            if (index < 0)
            {
                throw new ArgumentOutOfRangeException("index", index, "camera index is negative");
            }
            var extrinsic = new float[16];
            var intrinsic = new float[9];
            int status = NativeMethods.recon_result_camera_matrices(Handle, (UIntPtr)(ulong)index,
                                                                    extrinsic, intrinsic);
            ReconLibrary.Check(status, () => LastError);
            extrinsic4x4 = extrinsic;
            intrinsic3x3 = intrinsic;
        }

        /// <summary>Writes the result to <paramref name="path"/> (the file appears whole or not at all).</summary>
        public void Export(ExportFormat format, string path)
        {
            if (path == null)
            {
                throw new ArgumentNullException("path");
            }
            int status = NativeMethods.recon_result_export(Handle, (int)format, Utf8.ToNative(path));
            ReconLibrary.Check(status, () => LastError);
        }

        /// <summary>The file <see cref="Export"/> would write, as bytes.</summary>
        public byte[] ExportToBytes(ExportFormat format)
        {
            BufferHandle buffer;
            int status = NativeMethods.recon_result_export_buffer(Handle, (int)format, out buffer);
            using (buffer)
            {
                ReconLibrary.Check(status, () => LastError);
                int size = Count(NativeMethods.recon_buffer_size(buffer));
                var bytes = new byte[size];
                if (size > 0)
                {
                    Marshal.Copy(NativeMethods.recon_buffer_data(buffer), bytes, 0, size);
                }
                return bytes;
            }
        }

        /// <summary>Frees the result (its arrays were copied; copies stay valid).</summary>
        public void Dispose()
        {
            handle.Dispose();
        }

        private ResultHandle Handle
        {
            get
            {
                if (handle.IsClosed)
                {
                    throw new ObjectDisposedException("ReconResult");
                }
                return handle;
            }
        }

        /// <summary>A size_t count as an int (managed arrays are int-indexed).</summary>
        private static int Count(UIntPtr n)
        {
            return checked((int)(ulong)n);
        }

        private static float[] CopyFloats(IntPtr source, int count, int width)
        {
            var values = new float[checked(count * width)];
            if (values.Length > 0)
            {
                Marshal.Copy(source, values, 0, values.Length);
            }
            return values;
        }

        private static uint[] CopyUInts(IntPtr source, int count, int width)
        {
            // Marshal.Copy has no uint[] overload: copy as int[] and reinterpret the bits.
            var signed = new int[checked(count * width)];
            if (signed.Length > 0)
            {
                Marshal.Copy(source, signed, 0, signed.Length);
            }
            var values = new uint[signed.Length];
            Buffer.BlockCopy(signed, 0, values, 0, signed.Length * sizeof(int));
            return values;
        }
    }
}
