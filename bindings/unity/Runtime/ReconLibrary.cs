// Library-wide calls, the status codes and the exception they map to, and the UTF-8 string
// marshalling every other file uses (done by hand: .NET Framework / Unity Mono have no
// Marshal.PtrToStringUTF8, and LPStr means the ANSI code page on Windows).

using System;
using System.Runtime.InteropServices;
using System.Text;

namespace Recon
{
    /// <summary>Outcome of a library call (recon_status). The numbers are stable.</summary>
    public enum ReconStatus
    {
        Ok = 0,
        InvalidArgument = 1,
        Io = 2,
        Network = 3,
        Format = 4,
        Checkpoint = 5,
        Unsupported = 6,
        Cancelled = 7,
        OutOfMemory = 8,
        Device = 9,
        Internal = 10,
    }

    /// <summary>
    /// A failed library call: <see cref="Status"/> is the library's status, <see
    /// cref="Exception.Message"/> its message (recon_model_last_error, recon_result_last_error or
    /// recon_load's error buffer).
    /// </summary>
    public class ReconException : Exception
    {
        public ReconException(ReconStatus status, string message)
            : base(string.IsNullOrEmpty(message) ? ReconLibrary.StatusString(status) : message)
        {
            Status = status;
        }

        public ReconStatus Status { get; private set; }

        public override string ToString()
        {
            return "ReconException (" + ReconLibrary.StatusString(Status) + "): " + base.ToString();
        }
    }

    /// <summary>Library version, ABI check, CUDA devices, status texts.</summary>
    public static class ReconLibrary
    {
        /// <summary>The ABI version this binding was written for (RECON_ABI_VERSION).</summary>
        public const uint ExpectedAbiVersion = NativeMethods.AbiVersion;

        private static volatile bool abiChecked;

        /// <summary>The loaded library's ABI version (recon_abi_version).</summary>
        public static uint AbiVersion
        {
            get { return NativeMethods.recon_abi_version(); }
        }

        /// <summary>The loaded library's version, e.g. "0.1.0".</summary>
        public static string Version
        {
            get { return Utf8.FromNative(NativeMethods.recon_version_string()); }
        }

        /// <summary>Number of CUDA devices libtorch can use (0 without CUDA).</summary>
        public static int CudaDeviceCount
        {
            get { return NativeMethods.recon_cuda_device_count(); }
        }

        /// <summary>A short English description of a status ("unknown status" if unknown).</summary>
        public static string StatusString(ReconStatus status)
        {
            return StatusString((int)status);
        }

        /// <summary>As <see cref="StatusString(ReconStatus)"/> for any int.</summary>
        public static string StatusString(int status)
        {
            return Utf8.FromNative(NativeMethods.recon_status_string(status));
        }

        /// <summary>
        /// Refuses a library of another ABI version (once per process; called by
        /// <see cref="ReconModel.Load(LoadParams)"/>).
        /// </summary>
        public static void EnsureCompatible()
        {
            if (abiChecked)
            {
                return;
            }
            uint found = AbiVersion;
            if (found != ExpectedAbiVersion)
            {
                throw new InvalidOperationException(
                    "the recon library has ABI version " + found + "; this binding needs " +
                    ExpectedAbiVersion);
            }
            abiChecked = true;
        }

        /// <summary>Throws a <see cref="ReconException"/> unless <paramref name="status"/> is OK.</summary>
        internal static void Check(int status, Func<string> message)
        {
            if (status != (int)ReconStatus.Ok)
            {
                throw new ReconException((ReconStatus)status, message());
            }
        }
    }

    /// <summary>UTF-8 conversions between managed strings and C strings.</summary>
    internal static class Utf8
    {
        /// <summary>A NUL-terminated C string owned by the library ("" for NULL).</summary>
        internal static string FromNative(IntPtr p)
        {
            if (p == IntPtr.Zero)
            {
                return string.Empty;
            }
            int length = 0;
            while (Marshal.ReadByte(p, length) != 0)
            {
                length++;
            }
            var bytes = new byte[length];
            Marshal.Copy(p, bytes, 0, length);
            return Encoding.UTF8.GetString(bytes);
        }

        /// <summary>The NUL-terminated string at the start of a caller-owned buffer.</summary>
        internal static string FromBuffer(byte[] buffer)
        {
            int length = Array.IndexOf(buffer, (byte)0);
            return Encoding.UTF8.GetString(buffer, 0, length < 0 ? buffer.Length : length);
        }

        /// <summary>The UTF-8 bytes of <paramref name="s"/> plus a NUL; null for null.</summary>
        internal static byte[] ToNative(string s)
        {
            if (s == null)
            {
                return null;
            }
            var bytes = new byte[Encoding.UTF8.GetByteCount(s) + 1];
            Encoding.UTF8.GetBytes(s, 0, s.Length, bytes, 0);
            return bytes;
        }
    }
}
